"""grain input pipelines: host-local train batches (endless) and padded eval batches (finite).

Train: mixture of sources (weighted) -> per-source shuffle keyed by (seed, source, epoch), a new
permutation every epoch -> this process's slice of each global batch -> decode + augment ->
tokenize -> batch. The record stream is a pure function of the position, so

* global batch k is stream positions ``[k*B, (k+1)*B)`` and process p builds the slice
  ``[k*B + p*b, k*B + (p+1)*b)`` (``b = B / process_count``): concatenating the processes'
  local batches k gives exactly the single-process batch k, records and augmentation alike
  (each record's augmentation rng comes from (seed, stream position));
* only this process's records are read and decoded;
* the grain dataset is a MapDataset of whole local batches (element k = local batch k), so the
  iterator state is a batch count, saved with `get_state()` or through Orbax
  (``grain.checkpoint.CheckpointSave/CheckpointRestore``) and restored exactly, and reader
  threads / worker processes build whole batches without changing their content or order.

With several sources, each is an endless stream of per-epoch permutations, and the streams are
interleaved deterministically in proportion to the weights. An "epoch" (for `num_examples`) is
the sum of the sources' sizes.

Batches: ``image`` float32 [b, H, W, 3] normalised, ``text_ids``/``text_mask`` int32 [b, L],
``index`` int64 [b] (record index within its source), ``source`` int32 [b] (mixture entry).
Eval batches add ``valid`` bool [b]; padding rows have ``index = -1``. Train batches add
``caption_hash`` int32 [b, 2], a 64-bit digest of the normalised caption that ``text_ids``
encodes (`text_ops.caption_hashes`): the duplicate-caption contrastive targets' key.

Train batches may add extra inputs for SLIP (Mu et al. 2022, arXiv 2112.12750) and DeCLIP
(Li et al. 2022, arXiv 2110.05208), each only when its field turns it on:

* ``image_views`` float32 [b, V, H, W, 3] (``image_views = V > 0``): SimCLR-style views
  (`image_ops.simclr_view`), normalised like ``image``;
* ``text_view_ids`` / ``text_view_mask`` int32 [b, Vt, L] (``text_views = Vt > 0``): the
  caption's ``text_ids`` with content tokens dropped (`text_ops.drop_tokens`);
* ``mlm_ids`` int32 [b, L] (corrupted ``text_ids``; attention mask: ``text_mask``),
  ``mlm_positions`` / ``mlm_labels`` / ``mlm_weights`` int32 [b, P] (``mlm.enabled``,
  P = ``mlm.max_predictions``; `text_ops.mask_tokens`).

Each has its own rng stream keyed by (seed, tag, position[, view]), so ``image``, ``text_ids``
and every other key are identical whether the extras are on or off, and the extras do not
depend on the process count either. A record is decoded once for the main image and all its
views, unless the views' smaller crops need a larger JPEG draft: then the views get their own
decode, so the main image's pixels never change.

``config.data`` fields read here, parsed once into `settings.DataSettings` (the one home of
their defaults, in brackets here; ``tests/test_settings.py`` checks that they agree; a field
missing from the config takes its default, an unknown one fails):

* ``data_dir`` [``data/tfds``]: TFDS data_dir root.
* ``train_mixture`` [``synthetic_medical/train``]: ``"dataset[@config]/split[:weight],..."``
  (see `sources`).
* ``augment.random_crop_scale`` [(0.8, 1.0)]: area fraction range of the random resized crop,
  CLIP-style light cropping; ``(1.0, 1.0)`` means no crop augmentation (shorter side resize +
  centre crop, as in eval).
* ``augment.random_crop_ratio`` [(3/4, 4/3)]: aspect ratio range of that crop.
* ``augment.flip`` [False]: random left-right flips (off: they swap "left"/"right" in
  radiology captions).
* ``mean``, ``std`` [OpenAI CLIP's]: per-channel normalisation.
* ``read_threads`` [2]: threads building batches ahead (0 = in the caller's thread).
* ``prefetch_batches`` [2]: batches buffered ahead per process or worker.
* ``worker_processes`` [0]: grain worker processes (``mp_prefetch``) for many-core hosts, train
  only; needs absl flags parsed (true under ``absl.app.run``). Batches stay identical,
  but a checkpointed iterator state only restores under the same value.
* ``image_field`` [``image``], ``caption_field`` [``caption``]: the training records' fields; a
  caption field holding a list of captions yields one of them at random. Train only: eval
  iterators read the evaluated dataset's own fields (see `make_eval_iterator`).
* ``tokenizer`` [``minilm``]: read by the caller (`tokenizers.load_tokenizer`), not here.
* ``image_views`` [0]: extra augmented image views per train example.
* ``view_augment.*``: the views' recipe, SLIP's (= MoCo v3's) SimCLR augmentation:
  ``random_crop_scale`` [(0.08, 1.0)], ``random_crop_ratio`` [(3/4, 4/3)],
  ``color_jitter`` [(0.4, 0.4, 0.4, 0.1)] (brightness, contrast, saturation, hue) applied with
  ``color_jitter_prob`` [0.8], the four ops in a random order (torchvision's ColorJitter),
  ``grayscale_prob`` [0.2], ``blur_prob`` [0.5] with sigma uniform in ``blur_sigma``
  [(0.1, 2.0)] output pixels, ``flip`` [True] (left-right, p = 1/2).
* ``text_views`` [0]: token-dropout text views per train example.
* ``text_view_drop_prob`` [0.1]: probability of dropping each content token in a text view.
* ``mlm.enabled`` [False], ``mlm.mask_prob`` [0.15], ``mlm.max_predictions`` [20] per example,
  ``mlm.selection`` [``bernoulli``]: ``"bernoulli"`` (per-token) or ``"fixed"`` (BERT's
  script); needs a tokenizer with a mask token.
* ``on_bad_record`` [``fail``]: what a training record that cannot be read, parsed or decoded
  (`errors.BadRecordError`) does: ``"fail"`` stops with one line naming the dataset, split and
  record; ``"skip"`` replaces it (see below). Train only: an eval set with a bad record always
  fails, since skipping would change a metric's denominator silently.

Bad records with ``on_bad_record="skip"``: the record at stream position p is replaced by
record ``rng([seed, REPLACE_TAG, p, attempt]).integers(len(source))`` of the same source
(attempt 0, 1, ...), and the replacement gets position p's augmentation. The replacement is a
function of (seed, p) only, like everything else in a batch, so a resumed run and any process
count see the same batch. After `MAX_REPLACEMENT_TRIES` bad draws in a row the run stops
with one line (the dataset is mostly corrupt). Such train batches add ``bad_records``: a tuple
of one dict per record replaced in this local batch (`bad_record_event`: dataset, path, split,
record, id, reason, position), in row order, so the processes' tuples concatenate to the
global batch's; ``index`` holds the replacement's record index.
"""

import functools
import math
import sys
from typing import Any, Sequence

import grain
import ml_collections
import numpy as np
from PIL import Image

from medclip_jax.data import image_ops, sources, text_ops
from medclip_jax.data.tokenizers import Tokenizer
from medclip_jax.errors import BadRecordError, UserError
from medclip_jax.settings import DataSettings

SHUFFLE_TAG = 0x5EED
AUGMENT_TAG = 0xA06
VIEW_TAG = 0x71E3
TEXT_VIEW_TAG = 0x7E47
MLM_TAG = 0x3A5C
REPLACE_TAG = 0xBAD0
#: Replacement draws for one bad record before the run stops (a split that is all bad).
MAX_REPLACEMENT_TRIES = 16


DataConfig = ml_collections.ConfigDict | DataSettings | None


def data_settings(data_config: DataConfig) -> DataSettings:
    """`config.data` parsed once (`settings.DataSettings`: its defaults and checks); None = every
    default (evaluation without a training config)."""
    return DataSettings.from_config(data_config)


def derived_seed(*parts: int) -> int:
    """A 32-bit seed from integers (seeds of different streams stay far apart)."""
    return int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(1)[0])


def local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    """b = B / P; fails, naming the field, when the processes cannot share batches evenly."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise UserError(f"config.batch_size={global_batch_size} must be a positive multiple of "
                        f"the number of processes ({process_count})")
    return global_batch_size // process_count


def tag_source(source_index: int, record_index: int) -> tuple[int, int]:
    return source_index, int(record_index)


def record_stream(lengths: Sequence[int], weights: Sequence[float], seed: int
                  ) -> grain.MapDataset:
    """Endless (source, record) pairs: per-epoch permutations of each source, mixed by weight."""
    streams = []
    for i, length in enumerate(lengths):
        stream = (grain.MapDataset.range(length)
                  .shuffle(seed=derived_seed(seed, SHUFFLE_TAG, i))
                  .repeat()
                  .map(functools.partial(tag_source, i)))
        streams.append(stream)
    if len(streams) == 1:
        return streams[0]
    return grain.MapDataset.mix(streams, list(weights))


def crop_min_side(size: int, scale: Sequence[float], ratio: Sequence[float]) -> int:
    """Smallest image side whose smallest, most elongated crop still covers `size` pixels."""
    stretch = max(ratio[1], 1 / ratio[0])
    return math.ceil(size * math.sqrt(stretch / scale[0]))


class ImageSettings:
    """How a record's image becomes a uint8 model input (resolved once from the config)."""

    def __init__(self, data: DataSettings, image_size: int, train: bool):
        self.size = int(image_size)
        scale, ratio = data.augment.random_crop_scale, data.augment.random_crop_ratio
        self.train = train
        self.crop = train and scale != (1.0, 1.0)
        self.flip = train and data.augment.flip
        self.scale, self.ratio = scale, ratio
        self.mean, self.std = data.mean, data.std
        # JPEGs may be DCT-downscaled as long as the smallest crop still covers `size` pixels.
        self.min_side = crop_min_side(self.size, scale, ratio) if self.crop else self.size

    def __call__(self, data: bytes, where: str, rng: np.random.Generator | None) -> np.ndarray:
        return self.transform(image_ops.decode_pil(data, where, self.min_side), rng)

    def transform(self, image: Image.Image, rng: np.random.Generator | None
                  ) -> np.ndarray:
        """A decoded image -> the uint8 model input (crop / flip draws from `rng`)."""
        if self.crop:
            pixels = image_ops.random_resized_crop(image, self.size, rng, self.scale, self.ratio)
        else:
            pixels = image_ops.center_crop_resize(image, self.size)
        if self.flip:
            pixels = image_ops.random_flip(pixels, rng)
        return pixels


class ImageViews:
    """`config.data.image_views` extra SimCLR-style views of each train image."""

    def __init__(self, data: DataSettings, image_size: int):
        self.count = data.image_views
        self.recipe = data.view_augment
        self.size = int(image_size)
        crop = tuple(self.recipe.random_crop_scale) != (1.0, 1.0)
        self.min_side = (crop_min_side(self.size, self.recipe.random_crop_scale,
                                       self.recipe.random_crop_ratio) if crop else self.size)

    def __call__(self, image: Image.Image, seed: int, position: int) -> np.ndarray:
        """uint8 [V, H, W, 3]; view v draws from its own (seed, VIEW_TAG, position, v) stream."""
        return np.stack([image_ops.simclr_view(
            image, self.size, np.random.default_rng([seed, VIEW_TAG, position, v]), self.recipe)
            for v in range(self.count)])


class TextExtras:
    """Token-dropout text views and MLM inputs, built from each row's packed `text_ids`."""

    def __init__(self, data: DataSettings, tokenizer: Tokenizer):
        self.views = data.text_views
        self.drop_prob = data.text_view_drop_prob
        self.mlm = data.mlm.enabled
        self.mask_prob = data.mlm.mask_prob
        self.max_predictions = data.mlm.max_predictions
        self.selection = data.mlm.selection
        self.active = bool(self.views or self.mlm)
        if not self.active:
            return
        self.num_prefix, self.num_suffix = len(tokenizer.prefix), len(tokenizer.suffix)
        self.pad_id = tokenizer.pad_id
        if self.mlm:
            if tokenizer.mask_id is None:
                raise UserError(
                    f"config.data.mlm.enabled needs a tokenizer with a mask token, and "
                    f"config.data.tokenizer={data.tokenizer!r} has none")
            self.mask_id = int(tokenizer.mask_id)
            self.random_ids = text_ops.random_token_ids(tokenizer.vocab_size,
                                                        tokenizer.special_ids)

    def text_views(self, ids: np.ndarray, mask: np.ndarray, seed: int,
                   positions: Sequence[int]) -> dict[str, np.ndarray]:
        """``text_view_ids`` / ``text_view_mask`` [b, Vt, L]; view v of row i from its own rng."""
        out_ids = np.empty((len(ids), self.views, ids.shape[1]), np.int32)
        out_mask = np.empty_like(out_ids)
        for row, position in enumerate(positions):
            for v in range(self.views):
                rng = np.random.default_rng([seed, TEXT_VIEW_TAG, position, v])
                out_ids[row, v], out_mask[row, v] = text_ops.drop_tokens(
                    ids[row], mask[row], self.num_prefix, self.num_suffix, self.drop_prob, rng,
                    pad_id=self.pad_id)
        return {"text_view_ids": out_ids, "text_view_mask": out_mask}

    def mlm_inputs(self, ids: np.ndarray, mask: np.ndarray, seed: int,
                   positions: Sequence[int]) -> dict[str, np.ndarray]:
        """``mlm_ids`` [b, L] and ``mlm_positions`` / ``mlm_labels`` / ``mlm_weights`` [b, P]."""
        rows = [text_ops.mask_tokens(
            ids[row], mask[row], self.num_prefix, self.num_suffix, mask_prob=self.mask_prob,
            max_predictions=self.max_predictions, mask_id=self.mask_id,
            random_ids=self.random_ids, rng=np.random.default_rng([seed, MLM_TAG, position]),
            selection=self.selection) for row, position in enumerate(positions)]
        keys = ("mlm_ids", "mlm_positions", "mlm_labels", "mlm_weights")
        return {key: np.stack([r[i] for r in rows]).astype(np.int32)
                for i, key in enumerate(keys)}

    def __call__(self, ids: np.ndarray, mask: np.ndarray, seed: int,
                 positions: Sequence[int]) -> dict[str, np.ndarray]:
        batch = {}
        if self.views:
            batch.update(self.text_views(ids, mask, seed, positions))
        if self.mlm:
            batch.update(self.mlm_inputs(ids, mask, seed, positions))
        return batch


def replacement_index(seed: int, position: int, attempt: int, num_records: int) -> int:
    """The record that replaces a bad one at a stream position: (seed, position, attempt) only."""
    return int(np.random.default_rng([seed, REPLACE_TAG, position, attempt]).integers(num_records))


def bad_record_event(source: sources.RecordSource, record_index: int, record_id: Any,
                     reason: str, position: int) -> dict[str, Any]:
    """One replaced record, as reported in ``bad_records.jsonl`` (the trainer adds the step);
    `record_id` is None when the record could not even be parsed."""
    return {"dataset": source.name, "path": source.path, "split": source.split,
            "record": int(record_index), "id": record_id, "reason": reason,
            "position": int(position)}


def pick_caption(caption: Any, rng: np.random.Generator | None) -> str:
    """A caption field may hold several captions: a random one in training, else the first."""
    if not isinstance(caption, (list, tuple)):
        return caption
    if not caption:
        return ""
    return caption[int(rng.integers(len(caption)))] if rng is not None else caption[0]


class BatchLoader:
    """Builds this process's local batch k from global stream positions [kB + pb, kB + pb + b).

    Train: `stream` maps a position to (source, record). Eval (`stream=None`): position = record
    index of the only source, and positions past its end become padding (``valid=False``).
    Each record's randomness comes from (seed, position), so it does not depend on the
    process count. `image_views` / `text_extras` (train only) add the SLIP / DeCLIP inputs;
    `on_bad_record` (train only) is ``config.data.on_bad_record``.
    `fields` is (image field, caption field); a caption field of None reads images only (the
    batches then have no ``text_ids`` / ``text_mask``).
    """

    def __init__(self, record_sources: Sequence[sources.RecordSource],
                 stream: grain.MapDataset | None, settings: ImageSettings,
                 tokenizer: Tokenizer | None, max_len: int, fields: tuple[str, str | None],
                 seed: int, global_batch: int,
                 process_index: int, process_count: int,
                 image_views: ImageViews | None = None, text_extras: TextExtras | None = None,
                 on_bad_record: str = "fail"):
        if on_bad_record == "skip" and stream is None:
            raise ValueError("eval batches never skip bad records")
        self.on_bad_record = on_bad_record
        self.sources = list(record_sources)
        self.stream = stream
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.image_field, self.caption_field = fields
        self.seed = seed % 2**63
        self.global_batch = global_batch
        self.local_batch = global_batch // process_count
        self.process_index = process_index
        self.views = image_views if image_views is not None and image_views.count else None
        self.text_extras = text_extras if text_extras is not None and text_extras.active else None

    def locate(self, position: int) -> tuple[int, int] | None:
        """(source, record) at a stream position; None for eval padding."""
        if self.stream is not None:
            return self.stream[position]
        return (0, position) if position < len(self.sources[0]) else None

    def decode(self, data: bytes, where: str) -> tuple[Image.Image, Image.Image | None]:
        """(main image, view image or None) decoded; BadRecordError if the bytes are bad."""
        if self.views is None:
            return image_ops.decode_pil(data, where, self.settings.min_side), None
        decoded, view_source = image_ops.decode_pil_shared(
            data, where, [self.settings.min_side, self.views.min_side])
        return decoded, view_source

    def read_or_replace(self, source_index: int, record_index: int, position: int
                        ) -> tuple[int, dict[str, Any], tuple[Image.Image, Image.Image | None],
                                   list[dict[str, Any]]]:
        """(record index read, its record, `decode`'s result, the bad records replaced on
        the way).

        With ``on_bad_record="fail"`` a bad record raises; with ``"skip"`` it is replaced by a
        draw that depends on (seed, position, attempt) only (see the module docstring).
        """
        source = self.sources[source_index]
        bad: list[dict[str, Any]] = []
        for attempt in range(MAX_REPLACEMENT_TRIES + 1):
            record = {}
            try:
                record = source[record_index]
                where = source.where(record_index, record.get("id"))
                return record_index, record, self.decode(record[self.image_field], where), bad
            except BadRecordError as e:
                if self.on_bad_record != "skip":
                    if self.stream is None:  # eval: no skipping (see the module docstring)
                        raise
                    raise BadRecordError(
                        f"{e} (config.data.on_bad_record='skip' replaces bad training "
                        f"records)", e.where, e.reason) from e
                if record_index not in {event["record"] for event in bad}:
                    bad.append(bad_record_event(source, record_index, record.get("id"),
                                                e.reason, position))
                last = e
            record_index = replacement_index(self.seed, position, attempt, len(source))
        raise UserError(
            f"config.data.on_bad_record='skip': the record at stream position {position} and "
            f"{MAX_REPLACEMENT_TRIES} replacements drawn from {source.path} split "
            f"{source.split} are all bad (last: {last.where}: {last.reason}); is the dataset "
            f"mostly corrupt?")

    def example(self, position: int
                ) -> tuple[np.ndarray, np.ndarray | None, str, int, int, list[dict[str, Any]]]:
        """uint8 image, uint8 views (or None), caption, record and source index at a position,
        and the bad records replaced to get there."""
        located = self.locate(position)
        size = self.settings.size
        if located is None:
            views = (np.zeros((self.views.count, size, size, 3), np.uint8)
                     if self.views is not None else None)
            return np.zeros((size, size, 3), np.uint8), views, "", -1, 0, []
        source_index, record_index = located
        record_index, record, (decoded, view_source), bad = self.read_or_replace(
            source_index, record_index, position)
        rng = (np.random.default_rng([self.seed, AUGMENT_TAG, position])
               if self.settings.train else None)
        views = self.views(view_source, self.seed, position) if self.views is not None else None
        image = self.settings.transform(decoded, rng)
        caption = (pick_caption(record[self.caption_field], rng)
                   if self.caption_field is not None else "")
        return image, views, caption, record_index, source_index, bad

    def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
        start = int(batch_index) * self.global_batch + self.process_index * self.local_batch
        positions = range(start, start + self.local_batch)
        images, views, captions, index, source, bad = zip(*(self.example(p) for p in positions))
        mean, std = self.settings.mean, self.settings.std
        batch = {"image": image_ops.normalize(np.stack(images), mean, std),
                 "index": np.asarray(index, np.int64), "source": np.asarray(source, np.int32)}
        if self.caption_field is not None:
            ids, mask = self.tokenizer(list(captions), self.max_len)
            batch.update(text_ids=ids, text_mask=mask)
        if self.views is not None:
            batch["image_views"] = image_ops.normalize(np.stack(views), mean, std)
        if self.text_extras is not None:
            batch.update(self.text_extras(ids, mask, self.seed, positions))
        if self.stream is not None:  # train: the key of the duplicate-caption targets
            batch["caption_hash"] = text_ops.caption_hashes(captions)
        if self.stream is None:
            batch["valid"] = batch["index"] >= 0
        if self.on_bad_record == "skip":
            batch["bad_records"] = tuple(event for row in bad for event in row)
        return batch


def open_sources(data_dir: str, entries: Sequence[sources.MixtureEntry],
                 fields: tuple[str, str | None]) -> list[sources.RecordSource]:
    """The mixture's sources, reading only the image, caption (if any) and id (if any) fields."""
    opened = []
    for entry in entries:
        path = sources.dataset_dir(data_dir, entry.name)
        available = sources.read_builder(path).info.features.keys()
        wanted = [f for f in fields if f is not None]
        source = sources.RecordSource(path, entry.split,
                                      [*wanted, *(["id"] if "id" in available else [])],
                                      entry.name)
        if len(source) == 0:
            raise UserError(f"dataset {path} split {entry.split} has no records")
        opened.append(source)
    return opened


def batches_to_iter(batches: grain.MapDataset, data: DataSettings, use_workers: bool
                    ) -> grain.IterDataset:
    """Reader threads (and optionally worker processes) build whole batches ahead of time."""
    threads, prefetch = data.read_threads, data.prefetch_batches
    workers = data.worker_processes if use_workers else 0
    dataset = batches.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    if workers:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return dataset


def train_dataset(data_config: DataConfig, *, image_size: int, max_len: int,
                  tokenizer: Tokenizer, global_batch_size: int, process_index: int,
                  process_count: int, seed: int) -> grain.IterDataset:
    """The endless batched train dataset of this process (see the module docstring)."""
    data = data_settings(data_config)
    local_batch_size(global_batch_size, process_index, process_count)
    settings = ImageSettings(data, image_size, True)
    image_views = ImageViews(data, image_size)
    text_extras = TextExtras(data, tokenizer)
    entries = sources.parse_mixture(data.train_mixture)
    fields = (data.image_field, data.caption_field)
    record_sources = open_sources(data.data_dir, entries, fields)
    lengths = [len(s) for s in record_sources]
    stream = record_stream(lengths, sources.mixture_weights(entries, lengths), seed)
    loader = BatchLoader(record_sources, stream, settings, tokenizer, max_len, fields, seed,
                         global_batch_size, process_index, process_count,
                         image_views=image_views, text_extras=text_extras,
                         on_bad_record=data.on_bad_record)
    batches = grain.MapDataset.range(sys.maxsize // global_batch_size).map(loader)
    return batches_to_iter(batches, data, use_workers=True)


def make_train_iterator(data_config: DataConfig, *, image_size: int,
                        max_len: int, tokenizer: Tokenizer, global_batch_size: int,
                        process_index: int, process_count: int, seed: int
                        ) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's train batches."""
    return iter(train_dataset(
        data_config, image_size=image_size, max_len=max_len, tokenizer=tokenizer,
        global_batch_size=global_batch_size, process_index=process_index,
        process_count=process_count, seed=seed))


def num_examples(data_config: DataConfig, mixture_spec: str) -> int:
    """Records in one pass over every source of a mixture (the schedule's epoch size)."""
    return sum(sources.num_records(data_config.data_dir, e.name, e.split)
               for e in sources.parse_mixture(mixture_spec))


def make_eval_iterator(data_dir: str, name: str, split: str, *, image_size: int, max_len: int,
                       tokenizer: Tokenizer | None, global_batch_size: int, process_index: int,
                       process_count: int,
                       data_config: DataConfig = None,
                       image_field: str = "image", text_field: str | None = None
                       ) -> grain.IterDataset:
    """Every record once, in order, as padded host-local batches (re-iterable).

    Global batch k holds records [k*B, (k+1)*B); process p gets its slice. The last batch is
    padded to full size (``valid=False``, ``index=-1``), so all processes yield
    ``ceil(N / B)`` batches of identical shape. No augmentation: shorter side resize + centre
    crop. Reader threads only (no worker processes: evaluation restarts often in training).

    The fields are the evaluated dataset's own (`medclip_jax.evaluation.fields`), not
    `data_config`'s training fields: `data_config` only sets the image normalisation and the
    reader threads. With ``text_field=None`` (the default) batches hold images only; with a
    text field (a list field gives its first caption) they add ``text_ids`` / ``text_mask``.
    A bad record fails with one line naming it, whatever ``config.data.on_bad_record`` says.
    """
    data = data_settings(data_config)
    local_batch_size(global_batch_size, process_index, process_count)
    fields = (image_field, text_field)
    record_source = open_sources(data_dir, [sources.MixtureEntry(name, split)], fields)[0]
    loader = BatchLoader([record_source], None, ImageSettings(data, image_size, False),
                         tokenizer, max_len, fields, 0, global_batch_size, process_index,
                         process_count)
    num_batches = -(-len(record_source) // global_batch_size)
    batches = grain.MapDataset.range(num_batches).map(loader)
    return batches_to_iter(batches, data, use_workers=False)
