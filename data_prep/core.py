"""What every data_prep builder shares: items found in a raw folder, rejects, parallel image
conversion, the TFDS builder base class, and the build report.

A builder only says how to *scan* its publisher's folder: `ManualImageBuilder.scan` returns a
`Scan` of `Item`s per split (one future record each: an id, an image file or pixel array, and
the non-image fields) plus the `Reject`s it met while reading annotation files (malformed rows,
empty or non-UTF-8 captions, duplicate ids, unknown labels). The base class converts every
item's image (`images.convert_image`: colour modes normalised, downscaled to `max_side`,
re-encoded) in a pool of worker processes (one pool for every split of a build:
`conversion_pool`), writes the records with TFDS as ArrayRecord (for
``--file_format tfrecord`` rewritten as TFRecord by `medclip_jax.data.tfrecord` before TFDS
renames the folder: TFDS would need TensorFlow), and afterwards writes next to `dataset_info.json`:

* ``rejects.jsonl`` — one JSON object per rejected item: split, id, path, reason, detail;
* ``build_summary.json`` — items found / records written / rejected per split and per reason.

Invariant (checked): written + rejected = found, per split. Builders whose records gather
several annotation rows (PMC-OA, Quilt-1M: one record per image, one row per caption) also
count the rows they read, and the check holds for rows too: rows read = written + rejected +
rows kept as a further caption of another row's record. Records keep scan order
(TFDS shuffling is disabled; consumers shuffle), so a build is reproducible.

An interrupted build leaves no half-written version: TFDS writes into a temporary folder and
renames it when every split is done, and readers ignore version folders without a
dataset_info.json. Re-running the command resumes: the images converted before the
interruption are kept in a cache file next to the version folder (`conversion_cache`) and are
not converted again; the records are then written anew, which is fast.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import json
import multiprocessing
import os
import sys
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from data_prep import images
from data_prep.conversion_cache import ConversionCache, cache_path
from medclip_jax.data import tfrecord
from medclip_jax.errors import UserError

SPLITS: tuple[str, ...] = ("train", "validation", "test")
REJECTS_FILE = "rejects.jsonl"
SUMMARY_FILE = "build_summary.json"
FILE_FORMATS = ("array_record", "tfrecord")


# --------------------------------------------------------------------------------------------
# Items and rejects
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Item:
    """One record-to-be: `image` is an image file's path or a uint8 pixel array (HDF5 / npz)."""

    split: str
    id: str
    image: str | np.ndarray
    fields: dict[str, Any]
    path: str = ""  # where the item came from, for the rejects file (default: the image path)
    rows: int = 1  # annotation rows the record gathers (one per caption of an image)

    def where(self) -> str:
        return self.path or (self.image if isinstance(self.image, str) else self.id)


@dataclasses.dataclass(frozen=True)
class Reject:
    split: str
    id: str
    path: str
    reason: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


class Scan:
    """Items per split and the rejects met while scanning; ids are unique within a dataset.

    A builder that gathers rows into records counts every row it reads (`count_rows`), so the
    build can check that no row went missing; `rows_merged` are the rows that became a further
    caption of an item rather than an item or a reject."""

    def __init__(self) -> None:
        self.items: dict[str, list[Item]] = collections.defaultdict(list)
        self.rejects: list[Reject] = []
        self.rows_read: collections.Counter[str] = collections.Counter()
        self.rows_merged: collections.Counter[str] = collections.Counter()
        self._seen: dict[str, str] = {}

    def count_rows(self, split: str, count: int = 1) -> None:
        """Counts annotation rows read for `split`, whatever becomes of them."""
        self.rows_read[split] += count

    def add(self, item: Item) -> bool:
        """Adds `item`, or rejects it as a duplicate id (the first occurrence wins)."""
        self.rows_merged[item.split] += item.rows - 1
        if item.id in self._seen:
            self.reject(item.split, item.id, item.where(), "duplicate_id",
                        f"id already used by {self._seen[item.id]}")
            return False
        self._seen[item.id] = item.where()
        self.items[item.split].append(item)
        return True

    def reject(self, split: str, item_id: str, path: str, reason: str, detail: str) -> None:
        self.rejects.append(Reject(split, str(item_id), str(path), reason, detail))

    def splits(self) -> list[str]:
        """Splits with items, rejects or rows read, in the canonical order first."""
        names = set(self.items) | {r.split for r in self.rejects} | set(self.rows_read)
        return [s for s in SPLITS if s in names] + sorted(names - set(SPLITS))

    def found(self, split: str) -> int:
        return len(self.items.get(split, [])) + sum(r.split == split for r in self.rejects)


# --------------------------------------------------------------------------------------------
# Reading annotation files
# --------------------------------------------------------------------------------------------


class RawMissing(UserError):
    """The raw files of a dataset (config) are not in manual_dir: a multi-config build of
    "every config present" skips it instead of failing."""


class BadText(ValueError):
    """A text field that cannot become a record: `reason` is the rejects-file code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def decode_utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadText("not_utf8", f"byte {e.start} is not UTF-8 ({raw[e.start:e.start + 4]!r})"
                      ) from None


def clean_text(text: str) -> str:
    """Whitespace collapsed (captions come with tabs, newlines and runs of spaces)."""
    return " ".join(text.replace("\x00", " ").split())


def clean_caption(text: str) -> str:
    caption = clean_text(text)
    if not caption:
        raise BadText("empty_caption", "the caption is empty")
    return caption


def read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line without its line break), for per-line UTF-8 checks."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            yield number, line.rstrip(b"\r\n")


def read_csv_rows(path: str, delimiter: str = ",", *, required: Sequence[str] = (),
                  keep_undecodable: bool = False
                  ) -> Iterator[tuple[int, dict[str, str] | BadText]]:
    """(line number, row dict) per CSV row of a ``.csv`` or ``.csv.gz``, streamed (lookup
    tables run to gigabytes, with fields past csv's default 128 KiB limit).

    A row with the wrong number of fields, a csv syntax error or (unless `keep_undecodable`)
    bytes that are not UTF-8 comes back as a `BadText` instead of stopping the read; with
    `keep_undecodable`, such bytes come through as surrogates so the caller can still name the
    row (check with `check_utf8`). A header without the `required` columns is a `UserError`.
    """
    import gzip
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = [h.strip().lstrip("\ufeff") for h in next(reader)]
        except (StopIteration, csv.Error) as e:
            raise UserError(f"{path}: no CSV header row ({e or 'empty file'})") from None
        require_columns(path, dict.fromkeys(header, ""), required)
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield reader.line_num, BadText("malformed_row", f"CSV: {e}")
                continue
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                yield reader.line_num, BadText(
                    "malformed_row", f"{len(values)} fields, header has {len(header)}")
                continue
            row = dict(zip(header, values))
            if not keep_undecodable:
                try:
                    check_utf8(row)
                except BadText as e:
                    yield reader.line_num, e
                    continue
            yield reader.line_num, row


def check_utf8(row: dict[str, str]) -> None:
    """Raises `BadText` if a row read with surrogateescape held bytes that are not UTF-8."""
    try:
        "\x00".join(row.values()).encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadText("not_utf8", f"the row is not valid UTF-8 ({e.reason})") from None


def require_columns(path: str, row: dict[str, str], columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} "
                        f"(columns: {', '.join(row)})")


def require_path(path: str, what: str) -> str:
    """`path` if it exists, else a one-line error saying what was expected there."""
    if not os.path.exists(path):
        raise UserError(f"{path} does not exist: expected {what}")
    return path


def find_first(root: str, candidates: Sequence[str], what: str) -> str:
    """The first existing `root/candidate`: publishers' archives unpack to slightly different
    folder names (with or without a top-level folder)."""
    for candidate in candidates:
        path = os.path.join(root, candidate)
        if os.path.exists(path):
            return path
    raise UserError(f"{root}: none of {', '.join(candidates)} exists: expected {what}")


# --------------------------------------------------------------------------------------------
# Deterministic splits for datasets shipped without one
# --------------------------------------------------------------------------------------------


def group_split(groups: Sequence[str], labels: Sequence[Any], fractions: dict[str, float],
                seed: int) -> list[str]:
    """A split name per item such that every group (patient, lesion, slide) lies in one split.

    Stratified: within each label (a group's label is that of its first item), groups are
    shuffled with `seed` and dealt to the splits until each split's share of that label's
    *items* reaches its fraction. Pure function of (groups, labels, fractions, seed); the order
    of the input does not matter.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-9 or min(fractions.values()) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    group_label: dict[str, Any] = {}
    group_size: collections.Counter = collections.Counter()
    first_index: dict[str, int] = {}
    order = sorted(range(len(groups)), key=lambda i: (str(groups[i]), i))
    for i in order:
        g = str(groups[i])
        group_size[g] += 1
        if g not in group_label:
            group_label[g] = labels[i]
            first_index[g] = i
    assignment: dict[str, str] = {}
    names = list(fractions)
    for label in sorted({str(v) for v in group_label.values()}):
        members = sorted(g for g, v in group_label.items() if str(v) == label)
        rng = np.random.default_rng([seed, *label.encode("utf-8")])
        members = [members[i] for i in rng.permutation(len(members))]
        total = sum(group_size[g] for g in members)
        targets = np.cumsum([fractions[n] for n in names]) * total
        done = 0
        for g in members:
            # The first split whose cumulative target is not yet reached takes the group.
            k = int(np.searchsorted(targets, done + 0.5 * group_size[g], side="right"))
            assignment[g] = names[min(k, len(names) - 1)]
            done += group_size[g]
    return [assignment[str(g)] for g in groups]


def hash_split(keys: Sequence[str], fractions: dict[str, float], seed: int) -> list[str]:
    """`group_split` with every item its own group and a single stratum."""
    return group_split(list(keys), [0] * len(keys), fractions, seed)


# --------------------------------------------------------------------------------------------
# Image conversion (runs in worker processes)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConversionOptions:
    max_side: int = 512
    workers: int = 1
    progress: bool = True
    resume: bool = True  # keep conversions in a cache file so an interrupted build resumes


def image_bytes(item: Item) -> bytes:
    if isinstance(item.image, str):
        try:
            with open(item.image, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise images.Rejected("missing_file", f"{item.image} does not exist") from None
        except (IsADirectoryError, PermissionError) as e:
            raise images.Rejected("unreadable_file", f"{type(e).__name__}: {e}") from None
    try:
        return images.encode_png(Image.fromarray(np.ascontiguousarray(item.image)))
    except (TypeError, ValueError) as e:
        raise images.Rejected("bad_array", f"cannot make an image of an array of shape "
                              f"{item.image.shape} and dtype {item.image.dtype}: {e}") from None


def convert_item(item: Item, max_side: int) -> dict[str, Any] | Reject:
    """The TFDS example of an item, or the `Reject` saying why it cannot be one."""
    try:
        converted = images.convert_image(image_bytes(item), max_side)
    except images.Rejected as r:
        return Reject(item.split, item.id, item.where(), r.reason, r.detail)
    except Exception as e:  # noqa: BLE001 -- one bad file must never stop a build
        return Reject(item.split, item.id, item.where(), "conversion_error",
                      f"{type(e).__name__}: {e}")
    return {"id": item.id, "image": converted.data, **item.fields}


def _convert_batch(items: list[Item], max_side: int) -> list[dict[str, Any] | Reject]:
    return [convert_item(item, max_side) for item in items]


def batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class WorkerPool:
    """Conversion processes, started when first needed. Starting them costs about a second
    each (a spawned worker imports TFDS and PIL), so one pool serves every split of a build
    (`conversion_pool`): a pool per split made small builds with 2 workers 20-40x slower than
    with one."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            # spawn: the parent may hold threads (TFDS, grain) that make fork unsafe.
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


_open_pool: WorkerPool | None = None  # the innermost `conversion_pool` block's


@contextlib.contextmanager
def conversion_pool(workers: int) -> Iterator[WorkerPool]:
    """Inside the block, every conversion with `workers` processes shares one pool, stopped
    when the block ends (`prepare` opens one per dataset config; a caller building several
    configs opens one around them all). A nested block with the same count shares the outer
    pool."""
    global _open_pool
    if _open_pool is not None and _open_pool.workers == workers:
        yield _open_pool
        return
    outer, pool = _open_pool, WorkerPool(workers)
    _open_pool = pool
    try:
        yield pool
    finally:
        _open_pool = outer
        pool.close()


def converted(items: Iterable[Item], count: int, options: ConversionOptions,
              reuse: Callable[[Item], dict[str, Any] | Reject | None] = lambda item: None
              ) -> Iterator[tuple[Item, dict[str, Any] | Reject]]:
    """(item, `convert_item(item)`) over `items` in order, on `options.workers` processes (the
    open `conversion_pool`'s, else a pool of its own); an item for which `reuse` returns a
    result (an earlier run's) is not converted again.

    Items are read once, as they are consumed, and at most ``4 * workers`` batches are in
    flight, so memory stays bounded for item lists that stream pixel arrays from disk
    (multiprocessing's imap would read the whole input ahead)."""
    if options.workers <= 1 or count < 2:
        for item in items:
            reused = reuse(item)
            yield item, reused if reused is not None else convert_item(item, options.max_side)
        return
    size = max(1, min(64, count // (options.workers * 8)))
    shared = _open_pool if _open_pool and _open_pool.workers == options.workers else None
    pool = shared or WorkerPool(options.workers)  # outside a `conversion_pool`: its own
    window: collections.deque = collections.deque()

    def merged(batch: list[Item], reused: list[Any], future: Any) -> Iterator[Any]:
        fresh = iter(future.result())
        for item, result in zip(batch, reused):
            yield item, result if result is not None else next(fresh)

    try:
        for batch in batches(items, size):
            reused = [reuse(item) for item in batch]
            todo = [item for item, r in zip(batch, reused) if r is None]
            window.append((batch, reused,
                           pool.executor().submit(_convert_batch, todo, options.max_side)))
            if len(window) >= 4 * options.workers:
                yield from merged(*window.popleft())
        while window:
            yield from merged(*window.popleft())
    finally:
        for _, _, future in window:  # stopped early: the pool may serve the next split
            future.cancel()
        if shared is None:
            pool.close()


def convert_items(items: Sequence[Item], split: str, options: ConversionOptions,
                  desc: str = "", cache: ConversionCache | None = None
                  ) -> Iterator[dict[str, Any] | Reject]:
    """`converted(items)` with a progress bar; with a `cache`, items converted by an earlier,
    interrupted run are taken from it and new results are added to it. `items` may be a lazy
    sequence (len + iteration) that reads pixel arrays as it goes: it is iterated once, or
    twice when resuming (the second pass finds what the first run converted)."""
    from tqdm import tqdm
    done = cache.reusable(items, split) if cache is not None and cache.has(split) else set()
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not options.progress,
               file=sys.stderr, dynamic_ncols=True)
    if done:
        bar.write(f"{desc}: {len(done)} of {len(items)} images already converted by an "
                  f"earlier run ({cache.path})")
    reuse = (lambda item: cache.load(item) if item.id in done else None)
    results = converted(items, len(items), options, reuse)
    try:
        for item, result in results:
            if cache is not None and item.id not in done:
                cache.store(item, result)
            yield result
            bar.update()
    finally:
        results.close()
        if cache is not None:
            cache.flush()
        bar.close()


# --------------------------------------------------------------------------------------------
# Build report
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BuildReport:
    """What a build found, wrote and rejected (per split and reason)."""

    dataset: str
    found: dict[str, int] = dataclasses.field(default_factory=dict)
    written: dict[str, int] = dataclasses.field(default_factory=dict)
    rejects: list[Reject] = dataclasses.field(default_factory=list)
    data_dir: str = ""
    # Builders that gather rows into records (`Scan.count_rows`); empty for the others.
    rows_read: dict[str, int] = dataclasses.field(default_factory=dict)
    rows_merged: dict[str, int] = dataclasses.field(default_factory=dict)

    def rejected(self, split: str) -> int:
        return sum(r.split == split for r in self.rejects)

    def reasons(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(r.reason for r in self.rejects).items()))

    def check(self) -> None:
        """written + rejected = found per split, and for rows where the builder counted them."""
        for split, found in self.found.items():
            if self.written.get(split, 0) + self.rejected(split) != found:
                raise AssertionError(
                    f"{self.dataset} {split}: {self.written.get(split, 0)} written + "
                    f"{self.rejected(split)} rejected != {found} found")
        for split, rows in self.rows_read.items():
            merged = self.rows_merged.get(split, 0)
            if self.written.get(split, 0) + self.rejected(split) + merged != rows:
                raise AssertionError(
                    f"{self.dataset} {split}: {self.written.get(split, 0)} written + "
                    f"{self.rejected(split)} rejected + {merged} rows merged into records "
                    f"!= {rows} rows read")

    def to_json(self) -> dict[str, Any]:
        rows = ({"rows_read": self.rows_read, "rows_merged": self.rows_merged}
                if self.rows_read else {})
        return {"dataset": self.dataset, "found": self.found, "written": self.written,
                "rejected": {s: self.rejected(s) for s in self.found},
                "rejected_by_reason": self.reasons(), **rows}

    def summary(self) -> str:
        lines = [f"{self.dataset}: {sum(self.written.values())} records written, "
                 f"{len(self.rejects)} rejected" + (f" -> {self.data_dir}" if self.data_dir else "")]
        for split in self.found:
            rows = (f"   rows {self.rows_read[split]:>9} ({self.rows_merged.get(split, 0)} as "
                    f"extra captions)" if split in self.rows_read else "")
            lines.append(f"  {split:<11} written {self.written.get(split, 0):>9}   rejected "
                         f"{self.rejected(split):>7}   found {self.found[split]:>9}{rows}")
        for reason, count in self.reasons().items():
            lines.append(f"  rejected {reason}: {count}")
        if self.rejects and self.data_dir:
            lines.append(f"  every rejected item with its path and reason: "
                         f"{os.path.join(self.data_dir, REJECTS_FILE)}")
        return "\n".join(lines)

    def write(self, directory: str) -> None:
        self.data_dir = directory
        with open(os.path.join(directory, REJECTS_FILE), "w", encoding="utf-8") as f:
            for reject in self.rejects:
                f.write(json.dumps(reject.to_json(), ensure_ascii=False) + "\n")
        with open(os.path.join(directory, SUMMARY_FILE), "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1)


def read_rejects(dataset_dir: str) -> list[dict[str, str]]:
    with open(os.path.join(dataset_dir, REJECTS_FILE), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------
# The builder base class
# --------------------------------------------------------------------------------------------


def image_feature() -> tfds.features.Image:
    """Encoded JPEG or PNG bytes as the converter left them; grey images keep one channel in
    the file and decode to 3 equal channels (PIL in our pipeline, or TFDS's decoder)."""
    return tfds.features.Image(shape=(None, None, 3), encoding_format=None)


class ManualImageBuilder(tfds.core.GeneratorBasedBuilder):
    """Base class: a dataset read from the publisher's folder in `manual_dir`.

    Subclasses set VERSION / RELEASE_NOTES / MANUAL_DOWNLOAD_INSTRUCTIONS (and BUILDER_CONFIGS
    if any) and implement `record_features`, `scan` and optionally `metadata`.
    """

    options = ConversionOptions()
    cache_file: str = ""  # set by `prepare` when resuming is on
    cache: ConversionCache | None = None  # opened once the scan found items
    output_format: str = "array_record"  # set by `prepare`; TFDS itself writes ArrayRecord
    manual_dir: str = ""  # set by `prepare`

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The subclass's file (TFDS's own lookup needs the importlib_resources backport)."""
        return epath.Path(sys.modules[cls.__module__].__file__)

    # -- to implement -------------------------------------------------------------------------
    def record_features(self) -> dict[str, tfds.features.FeatureConnector]:
        """The non-image, non-id features of a record."""
        raise NotImplementedError

    def scan(self, manual_dir: str) -> Scan:
        """Every item of the raw folder, per split, and what could not become an item."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """Stored in dataset_info (zero-shot tasks, split rule, source)."""
        return {}

    # -- TFDS hooks ---------------------------------------------------------------------------
    def _info(self) -> tfds.core.DatasetInfo:
        features = {"id": tfds.features.Text(), "image": image_feature(),
                    **self.record_features()}
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__,
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(self.metadata()),
            disable_shuffling=True)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        # Not dl_manager.manual_dir: TFDS asserts it is non-empty, and the builder's own scan
        # says better what is missing.
        del dl_manager
        manual_dir = self.manual_dir
        scan = self.scan(manual_dir)
        self.report = BuildReport(self.build_name())
        splits = scan.splits()
        if not any(scan.items.values()):
            raise UserError(f"{manual_dir}: no usable {self.name} item found "
                            f"({len(scan.rejects)} rejected; first: "
                            f"{scan.rejects[0].path if scan.rejects else 'none'}). "
                            f"Expected: {self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
        if self.cache_file:
            self.cache = ConversionCache(self.cache_file, self.options.max_side)
        self.report.rejects.extend(scan.rejects)
        for split in splits:
            self.report.found[split] = scan.found(split)
            self.report.written[split] = 0
            if scan.rows_read:
                self.report.rows_read[split] = scan.rows_read[split]
                self.report.rows_merged[split] = scan.rows_merged[split]
        return {split: self._generate(split, scan.items.get(split, []))
                for split in splits if scan.items.get(split)}

    def _generate(self, split: str, items: list[Item]) -> Iterator[tuple[int, dict]]:
        index = 0
        for result in convert_items(items, split, self.options, desc=f"{self.name} {split}",
                                    cache=self.cache):
            if isinstance(result, Reject):
                self.report.rejects.append(result)
                continue
            yield index, result
            index += 1
        self.report.written[split] = index
        if index == 0:  # TFDS cannot write an empty split, and it is a broken dataset anyway
            rejects = [r for r in self.report.rejects if r.split == split]
            reasons = BuildReport("", rejects=rejects).reasons()
            raise UserError(
                f"{self.name}: every one of the {len(rejects)} items of split {split!r} was "
                f"rejected ({', '.join(f'{k}: {v}' for k, v in reasons.items())}); first: "
                f"{rejects[0].path}: {rejects[0].reason}: {rejects[0].detail}")

    def _download_and_prepare(self, dl_manager: Any, download_config: Any) -> None:
        """TFDS's build, then the report files, written into the folder TFDS is about to
        rename to the final version folder, so a complete version always has them."""
        with conversion_pool(self.options.workers):  # one for all splits
            super()._download_and_prepare(dl_manager, download_config)
        if self.output_format == "tfrecord":
            tfrecord.rewrite_as_tfrecord(self.info, os.fspath(self.data_dir))
        self.report.check()
        self.report.write(os.fspath(self.data_dir))

    def build_name(self) -> str:
        """``name@config`` as the build command and the mixture specs spell it."""
        return self.name + (f"@{self.builder_config.name}" if self.builder_config else "")

    def _log_download_bytes(self) -> None:
        """TFDS prints download sizes here ("Unknown size"); there is no download."""
        print(f"{self.build_name()}: converting {self.manual_dir}", file=sys.stderr)

    def _log_download_done(self) -> None:
        """The build summary says it (`BuildReport.summary`)."""

    def _generate_examples(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("splits are generated by ManualImageBuilder._generate")


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def check_file_format(file_format: str) -> None:
    if file_format not in FILE_FORMATS:
        raise UserError(f"--file_format: unknown {file_format!r}; choose "
                        f"{' or '.join(FILE_FORMATS)}")


def prepare(builder_class: Callable[..., ManualImageBuilder], manual_dir: str, data_dir: str,
            config: str | None = None, file_format: str = "array_record",
            options: ConversionOptions = ConversionOptions()) -> BuildReport:
    """Builds one dataset (config) from `manual_dir` into `data_dir`; returns its report.

    An already complete build is left alone and its saved report returned.
    """
    check_file_format(file_format)
    if options.max_side <= 0:
        raise UserError(f"--max_image_side must be positive, got {options.max_side}")
    if options.workers <= 0:
        raise UserError(f"--workers must be positive, got {options.workers}")
    if not os.path.isdir(manual_dir):
        raise UserError(f"--manual_dir {manual_dir} is not a folder: expected "
                        f"{getattr(builder_class, 'name', 'the dataset')}'s raw files as its "
                        f"publisher ships them")
    kwargs = {"config": config} if config else {}
    try:
        builder = builder_class(data_dir=data_dir, file_format=file_format, **kwargs)
    except ValueError as e:
        raise UserError(f"{getattr(builder_class, 'name', builder_class)}: {e}") from None
    if builder.is_prepared():
        return load_report(builder.build_name(), builder.data_dir)
    builder.options = options
    builder.output_format = file_format
    builder.manual_dir = os.path.abspath(manual_dir)
    tfds.disable_progress_bar()  # ours counts images; TFDS's would interleave with it
    # Next to the final version folder (TFDS writes into a temporary one); SQLite needs a local
    # file system, so a gs:// data_dir builds without resuming.
    if options.resume and "://" not in os.fspath(builder.data_dir):
        builder.cache_file = cache_path(builder.data_dir)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.abspath(manual_dir), try_download_gcs=False),
            file_format="array_record")  # TFRecord: rewritten by _download_and_prepare
    finally:
        if builder.cache is not None:
            builder.cache.close()
    if builder.cache is not None:
        builder.cache.remove()  # complete: nothing left to resume
    builder.report.data_dir = builder.data_dir
    return builder.report


def load_report(name: str, dataset_dir: str) -> BuildReport:
    with open(os.path.join(dataset_dir, SUMMARY_FILE), encoding="utf-8") as f:
        saved = json.load(f)
    report = BuildReport(name, saved["found"], saved["written"], data_dir=dataset_dir,
                         rows_read=saved.get("rows_read", {}),
                         rows_merged=saved.get("rows_merged", {}))
    report.rejects = [Reject(**r) for r in read_rejects(dataset_dir)]
    return report
