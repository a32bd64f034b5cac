"""Datasets on disk: mixture specs, dataset folders, random-access record sources, annotations.

Naming convention (``config.data.train_mixture``, ``config.eval.split``, eval configs)::

    spec    := entry ("," entry)*
    entry   := dataset ["@" config] "/" split [":" weight]
    split   := a TFDS split expression: "train", "validation", "train[:90%]", "train+test"

e.g. ``"synthetic_medical/train"``, ``"synthetic_medical@tiny/validation"``,
``"roco/train:0.7,pmc_oa/train:0.3"``. The weight defaults to 1.0; ``size`` (on every entry of
a mixture, or none) weights each entry by its number of records, i.e. the mixture samples as
the concatenation of its datasets would (the benchmark's setup). ``dataset[@config]`` is the
entry's ``name``, and is what `open_source`, `load_annotations` and `dataset_metadata` take.

Datasets live in a TFDS ``data_dir`` as ``<data_dir>/<dataset>/<config>/<version>`` (or
``<data_dir>/<dataset>/<version>`` for datasets without configs), each holding
``dataset_info.json`` and ArrayRecord or TFRecord shards (``data_prep.build --file_format``).
Without ``@config``: the only config, else the one named ``default``. The highest complete
version is used.

Records are read without TensorFlow, as raw bytes: ArrayRecord shards through TFDS's
random-access source, TFRecord shards through `medclip_jax.data.tfrecord` (an offset index per
shard, CRCs checked; TFDS reads TFRecord only with TensorFlow). Either way the same split
expressions work. Each serialized ``tf.train.Example`` is then parsed by us (TFDS's bundled proto
module). Flat fields (Image, Text, scalars) are read straight from the proto, about 30x faster
than TFDS's generic numpy parser, which we fall back to for nested fields (Sequence, tensors).
Images stay encoded bytes: `image_ops.decode_image` decodes them, so a corrupt image is reported
with its dataset folder, split, record index and id. A record that cannot be read (a corrupt
ArrayRecord chunk), parsed or decoded raises `errors.BadRecordError`, which training may skip
(``config.data.on_bad_record``); other problems (a missing split, a truncated TFRecord shard)
are plain `UserError`s.
"""

import dataclasses
import functools
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np

from medclip_jax.errors import BadRecordError, UserError

DEFAULT_MIXTURE_FIELD = "config.data.train_mixture"
ANNOTATION_FIELDS = ("id", "caption", "captions", "label", "modality", "class_name")
_NAME = r"[A-Za-z0-9_.\-]+"
_SPLIT_PART = r"[A-Za-z0-9_\-]+(?:\[[^\]]*\])?"
_ENTRY = re.compile(rf"^(?P<dataset>{_NAME})(?:@(?P<config>{_NAME}))?"
                    rf"/(?P<split>{_SPLIT_PART}(?:\+{_SPLIT_PART})*)(?::(?P<weight>[^:\[\]]+))?$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
    """One dataset split of a mixture: `name` is ``dataset[@config]``."""

    name: str
    split: str
    weight: float = 1.0
    by_size: bool = False  # weight = the number of records (":size")

    @property
    def dataset(self) -> str:
        return self.name.split("@", 1)[0]

    @property
    def config(self) -> str | None:
        return self.name.split("@", 1)[1] if "@" in self.name else None


def parse_entry(text: str, field: str) -> MixtureEntry:
    match = _ENTRY.match(text)
    if match is None:
        raise UserError(f"{field}: cannot parse {text!r}; expected "
                        f"'dataset[@config]/split[:weight]', e.g. 'synthetic_medical/train:0.5'")
    name = match["dataset"] + (f"@{match['config']}" if match["config"] else "")
    weight = 1.0
    if match["weight"] is not None and match["weight"].strip() == "size":
        return MixtureEntry(name, match["split"], 1.0, by_size=True)
    if match["weight"] is not None:
        try:
            weight = float(match["weight"])
        except ValueError:
            raise UserError(f"{field}: weight {match['weight']!r} of {text!r} is not a number"
                            ) from None
        if not weight > 0 or not np.isfinite(weight):
            raise UserError(f"{field}: weight of {text!r} must be positive, got {weight}")
    return MixtureEntry(name, match["split"], weight)


def parse_mixture(spec: str, field: str = DEFAULT_MIXTURE_FIELD) -> list[MixtureEntry]:
    """``"a/train:0.7,b@cfg/train:0.3"`` -> entries; a mistake names `field`."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"{field}: empty dataset spec; expected 'dataset[@config]/split[:weight]'")
    entries = [parse_entry(part.strip(), field) for part in spec.split(",")]
    if len({e.by_size for e in entries}) > 1:
        raise UserError(f"{field}: {spec!r} mixes ':size' with numeric weights; weight every "
                        f"entry by size or none")
    return entries


def mixture_weights(entries: Sequence[MixtureEntry], lengths: Sequence[int]) -> list[float]:
    """Each entry's sampling weight: its own, or its number of records for ``:size``."""
    return [float(n) if e.by_size else e.weight for e, n in zip(entries, lengths)]


def subdirs(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path)
                  if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def complete_versions(path: str) -> list[str]:
    """Version folders that hold a dataset_info.json (half-written builds are skipped)."""
    return sorted((d for d in subdirs(path) if _VERSION.match(d)
                   and os.path.exists(os.path.join(path, d, "dataset_info.json"))),
                  key=version_key)


def dataset_dir(data_dir: str, name: str) -> str:
    """``<data_dir>/<dataset>/<config>/<version>`` for a ``dataset[@config]`` name."""
    dataset, _, config = name.partition("@")
    root = os.path.join(os.path.expanduser(data_dir), dataset)
    if not os.path.isdir(root):
        have = ([d for d in subdirs(data_dir) if d != "downloads"]
                if os.path.isdir(data_dir) else [])
        raise UserError(f"dataset folder {root} does not exist (config.data.data_dir="
                        f"{data_dir}; datasets there: {', '.join(have) or 'none'})")
    if not config:
        if complete_versions(root):
            return os.path.join(root, complete_versions(root)[-1])
        configs = [c for c in subdirs(root) if complete_versions(os.path.join(root, c))]
        if len(configs) == 1 or "default" in configs:
            config = configs[0] if len(configs) == 1 else "default"
        else:
            raise UserError(f"dataset folder {root} has configs {', '.join(configs) or 'none'}; "
                            f"name one as '{dataset}@<config>/<split>'")
    config_dir = os.path.join(root, config)
    versions = complete_versions(config_dir) if os.path.isdir(config_dir) else []
    if not versions:
        have = [c for c in subdirs(root) if complete_versions(os.path.join(root, c))]
        raise UserError(f"dataset folder {config_dir} does not exist or holds no complete "
                        f"version (configs there: {', '.join(have) or 'none'})")
    return os.path.join(config_dir, versions[-1])


@functools.lru_cache(maxsize=64)
def read_builder(path: str) -> Any:
    """A read-only TFDS builder for a prepared dataset folder (cached: it parses JSON)."""
    import tensorflow_datasets as tfds
    try:
        return tfds.builder_from_directory(path)
    except Exception as e:
        raise UserError(f"cannot read the TFDS dataset at {path}: {e}") from e


def field_kind(feature: Any) -> str:
    """How a top-level feature is read: straight from the proto, or by TFDS's parser."""
    import tensorflow_datasets as tfds
    info = feature.get_serialized_info()
    if not hasattr(info, "shape") or tuple(info.shape) != ():
        return "tfds"
    if isinstance(feature, tfds.features.Image):
        return "image"
    if isinstance(feature, tfds.features.Text):
        return "text"
    dtype = np.dtype(info.np_dtype) if hasattr(info, "np_dtype") else None
    if dtype is not None and (dtype.kind in "iub"):
        return "int"
    if dtype is not None and dtype.kind == "f":
        return "float"
    return "tfds"


def bytes_to_str(tree: Any) -> Any:
    """TFDS numpy output -> plain Python values with text as str."""
    if isinstance(tree, dict):
        return {k: bytes_to_str(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [bytes_to_str(v) for v in tree]
    if isinstance(tree, np.ndarray) and tree.dtype == object:
        return [bytes_to_str(v) for v in tree.tolist()]
    if isinstance(tree, bytes):
        return tree.decode("utf-8", errors="replace")
    return tree


class RecordSource:
    """Random access to one split's records (dicts of the requested fields).

    Images come back as encoded bytes, text as str, scalars as Python numbers, nested fields
    as TFDS gives them with text decoded. `len()` and `[i]` make it a grain data source.
    `name` is the ``dataset[@config]`` it was opened by (for reports; the folder if not given).
    """

    def __init__(self, path: str, split: str, fields: Sequence[str] | None = None,
                 name: str | None = None):
        import tensorflow_datasets as tfds
        from medclip_jax.data import tfrecord
        self.path = path
        self.split = split
        self.name = name or path
        builder = read_builder(path)
        self.info = builder.info
        self.features = builder.info.features
        available = list(self.features.keys())
        if fields is None:
            fields = available
        missing = [f for f in fields if f not in available]
        if missing:
            raise UserError(f"dataset {path} has no field(s) {', '.join(missing)} "
                            f"(fields: {', '.join(available)})")
        self.fields = tuple(fields)
        self.kinds = {f: field_kind(self.features[f]) for f in self.fields}
        try:
            if tfrecord.stored_as_tfrecord(self.info):  # TFDS reads these through TF only
                self.records = tfrecord.TFRecordSource.for_split(self.info, split)
            else:
                self.records = builder.as_data_source(
                    split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        except (ValueError, KeyError, AssertionError) as e:
            raise UserError(f"dataset {path}: bad split {split!r} (splits: "
                            f"{', '.join(self.info.splits.keys())}): {e}") from e
        except NotImplementedError as e:
            stored = getattr(self.info.file_format, "value", self.info.file_format)
            raise UserError(f"dataset {path} is stored as {stored}, which cannot be read "
                            f"here (ArrayRecord and TFRecord can)") from e
        self._skip_images = {name: tfds.decode.SkipDecoding()
                             for name, feature in self.features.items()
                             if isinstance(feature, tfds.features.Image)}

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict[str, Any]:
        """Pickles as (path, split, fields, name): worker processes reopen the files themselves."""
        return {"path": self.path, "split": self.split, "fields": self.fields, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["split"], state["fields"], state["name"])

    def where(self, index: int, record_id: Any = None) -> str:
        """A location for error messages: dataset folder, split, record index and id."""
        suffix = f" (id {record_id})" if record_id is not None else ""
        return f"{self.path} split {self.split} record {index}{suffix}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.parse(self.read(int(index)), int(index))

    def read(self, index: int) -> bytes:
        """One serialized record; a corrupt ArrayRecord chunk (RuntimeError) is a bad record."""
        try:
            return self.records[index]
        except RuntimeError as e:
            reason = f"unreadable: {e}"
            raise BadRecordError(f"cannot read {self.where(index)}: {reason}",
                                 self.where(index), reason) from e

    def get_many(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Batched read (one ArrayRecord call; TFRecord reads in turn), for scanning splits."""
        raw = self.records.__getitems__([int(i) for i in indices])
        return [self.parse(r, int(i)) for r, i in zip(raw, indices)]

    def parse(self, serialized: bytes, index: int) -> dict[str, Any]:
        from tensorflow_datasets.proto import tf_example_pb2
        try:
            feature_map = tf_example_pb2.Example.FromString(serialized).features.feature
            out = {}
            slow = [f for f in self.fields if self.kinds[f] == "tfds"]
            for name in self.fields:
                kind = self.kinds[name]
                if kind in ("image", "text"):
                    value = feature_map[name].bytes_list.value[0]
                    out[name] = value if kind == "image" else value.decode("utf-8", "replace")
                elif kind == "int":
                    out[name] = int(feature_map[name].int64_list.value[0])
                elif kind == "float":
                    out[name] = float(feature_map[name].float_list.value[0])
            if slow:
                full = self.features.deserialize_example_np(serialized,
                                                            decoders=self._skip_images)
                out.update({name: bytes_to_str(full[name]) for name in slow})
            return out
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            raise BadRecordError(f"cannot parse {self.where(index)}: {reason}",
                                 self.where(index), reason) from e


def open_source(data_dir: str, name: str, split: str,
                fields: Sequence[str] | None = None) -> RecordSource:
    """The records of ``<data_dir>/<dataset>[/<config>]/<version>``, split `split`."""
    return RecordSource(dataset_dir(data_dir, name), split, fields, name)


def to_array(values: list[Any]) -> np.ndarray:
    """Strings/numbers -> a numpy array; lists and dicts -> an object array (one per record)."""
    if values and isinstance(values[0], (list, dict)):
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return np.asarray(values)


def load_annotations(data_dir: str, name: str, split: str,
                     fields: Iterable[str] | None = None,
                     chunk: int = 1024) -> dict[str, np.ndarray]:
    """Every record's non-image fields, in record order (no image is decoded).

    With `fields=None`: those of ``ANNOTATION_FIELDS`` that the dataset has; explicitly named
    fields must exist.
    """
    path = dataset_dir(data_dir, name)
    available = set(read_builder(path).info.features.keys())
    wanted = [f for f in ANNOTATION_FIELDS if f in available] if fields is None else list(fields)
    source = RecordSource(path, split, wanted)
    columns: dict[str, list[Any]] = {f: [] for f in wanted}
    for start in range(0, len(source), chunk):
        for record in source.get_many(range(start, min(start + chunk, len(source)))):
            for f in wanted:
                columns[f].append(record[f])
    return {f: to_array(v) for f, v in columns.items()}


def plain(tree: Any) -> Any:
    """MetadataDict and friends -> JSON-like dicts and lists."""
    if isinstance(tree, dict):
        return {k: plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [plain(v) for v in tree]
    return tree


def dataset_metadata(data_dir: str, name: str) -> dict[str, Any]:
    """The dataset's TFDS metadata (e.g. zero-shot ``tasks``); {} when it has none."""
    metadata = read_builder(dataset_dir(data_dir, name)).info.metadata
    return plain(dict(metadata)) if metadata else {}


def num_records(data_dir: str, name: str, split: str) -> int:
    return len(open_source(data_dir, name, split, fields=()))
