"""TFRecord shards without TensorFlow: framing, a per-shard offset index, random access by split.

Why this exists: TFDS reads TFRecord only through tf.data (TensorFlow), and its random-access
``as_data_source`` serves ArrayRecord and Parquet alone. A dataset built with
``--file_format tfrecord`` would otherwise be unreadable here.

Framing (TensorFlow's record writer; CRCs are CRC32C, the Castagnoli polynomial)::

    uint64 length                    little endian
    uint32 masked_crc32c(length)     of the 8 length bytes
    byte   data[length]
    uint32 masked_crc32c(data)
    masked_crc = ((crc >> 15) | (crc << 17)) + 0xa282ead8   (mod 2**32)

TFRecord has no index, so `TFRecordSource` scans each shard's headers once (seeking past the
payloads), on the first read of that shard, and keeps the offsets in memory. It checks every
length CRC and the record count against ``shardLengths`` of dataset_info.json while scanning,
and each record's data CRC when it reads it; any mismatch is a one-line `UserError` naming the
shard file and the record. Reads use ``os.pread``, so reader threads share one descriptor.

Writing (`write_records`) is the same framing; `rewrite_as_tfrecord` is how
``data_prep.build --file_format tfrecord`` writes TFRecord without TensorFlow, and
`convert_array_record_build` copies an ArrayRecord build as TFRecord (tests, benchmarks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import threading
import weakref
from typing import Any, Iterable, Iterator, Sequence

import google_crc32c
import numpy as np

from medclip_jax.errors import BadRecordError, UserError

HEADER = struct.Struct("<QI")  # length, masked CRC of the length bytes
FOOTER = struct.Struct("<I")  # masked CRC of the data
LENGTH = struct.Struct("<Q")
MASK_DELTA = 0xA282EAD8
INFO_FILE = "dataset_info.json"


# --------------------------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------------------------


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of `data`: google-crc32c's C implementation (hardware where it can)."""
    return google_crc32c.value(data)


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C: rotated and offset, so a CRC of CRCs does not look valid."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One record as it is stored: header, data, footer."""
    length = LENGTH.pack(len(record))
    return b"".join((length, FOOTER.pack(masked_crc(length)), record,
                     FOOTER.pack(masked_crc(record))))


def write_records(path: str, records: Iterable[bytes]) -> int:
    """Writes `records` as one uncompressed TFRecord file (as TFDS does); returns the count."""
    count = 0
    with open(path, "wb") as f:
        for record in records:
            f.write(frame(record))
            count += 1
    return count


# --------------------------------------------------------------------------------------------
# Reading one shard
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shard:
    """The records [skip, skip + take) of one shard file, which holds `expected` records.

    `first` is the index (within the split being read) of the shard's record `skip`.
    """

    path: str
    skip: int
    take: int
    expected: int
    first: int


def shard_error(shard: Shard, record: int, split: str, problem: str) -> UserError:
    """One line naming the shard, the record in it and, if the split reads it, in the split."""
    if shard.skip <= record < shard.skip + shard.take:
        in_split = f" = record {shard.first + record - shard.skip} of split {split!r}"
    else:
        in_split = f" (not read by split {split!r})"
    return UserError(f"TFRecord shard {shard.path}: record {record} of the shard{in_split}: "
                     f"{problem}")


def index_shard(fd: int, shard: Shard, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(data offsets, data lengths) of every record in the shard, from one scan of the headers.

    Checks each length CRC, that each record fits in the file, and the record count.
    """
    size = os.fstat(fd).st_size
    offsets, lengths = [], []
    position = 0
    while position < size:
        record = len(offsets)
        header = os.pread(fd, HEADER.size, position)
        if len(header) < HEADER.size:
            raise shard_error(shard, record, split, f"truncated header at byte {position} "
                                                    f"(file has {size} bytes)")
        length, length_crc = HEADER.unpack(header)
        if masked_crc(header[:LENGTH.size]) != length_crc:
            raise shard_error(shard, record, split, f"corrupt length at byte {position} "
                                                    f"(length CRC mismatch)")
        end = position + HEADER.size + length + FOOTER.size
        if end > size:
            raise shard_error(shard, record, split, f"truncated: its {length} bytes end at byte "
                                                    f"{end}, the file has {size}")
        offsets.append(position + HEADER.size)
        lengths.append(length)
        position = end
    if len(offsets) != shard.expected:
        raise shard_error(shard, len(offsets), split,
                          f"missing: the file holds {len(offsets)} records, dataset_info.json "
                          f"says {shard.expected} (truncated?)")
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


def read_record(fd: int, offset: int, length: int) -> tuple[bytes | None, str]:
    """The data at `offset` if its CRC matches, else (None, what is wrong)."""
    raw = os.pread(fd, length + FOOTER.size, offset)
    if len(raw) < length + FOOTER.size:
        return None, "truncated: the file ends inside it (changed since it was indexed?)"
    data = raw[:length]
    if masked_crc(data) != FOOTER.unpack_from(raw, length)[0]:
        return None, "corrupt data (data CRC mismatch)"
    return data, ""


# --------------------------------------------------------------------------------------------
# A split across shards
# --------------------------------------------------------------------------------------------


def split_shards(info: Any, split: str) -> list[Shard]:
    """The split's shards in TFDS's order, from its file instructions (no TensorFlow needed).

    Accepts every split expression TFDS does ("train[:50%]", "train+test"); an unknown split
    raises TFDS's ValueError/KeyError.
    """
    shards, first = [], 0
    for instruction in info.splits[split].file_instructions:
        shards.append(Shard(os.fspath(instruction.filename), int(instruction.skip),
                            int(instruction.take), int(instruction.examples_in_shard), first))
        first += int(instruction.take)
    return shards


def stored_as_tfrecord(info: Any) -> bool:
    """True when TFRecord is the dataset's format and no format TFDS reads at random is there."""
    from tensorflow_datasets.core import file_adapters
    formats = file_adapters.FileFormat
    return (info.file_format == formats.TFRECORD
            and not set(info.available_file_formats()) & set(formats.with_random_access()))


def close_fds(fds: dict[int, int]) -> None:
    """A source's finalizer: closes its shard files when it is collected or at exit."""
    while fds:
        os.close(fds.popitem()[1])


class TFRecordSource:
    """Random access to a split's serialized records (bytes) across its TFRecord shards.

    `len`, ``[i]`` and `__getitems__` like TFDS's ArrayRecord source with RAW_BYTES. Shards are
    opened and indexed on first use; pickling keeps only the shard list, so a worker process
    reopens the files itself.
    """

    def __init__(self, shards: Sequence[Shard], split: str):
        self.shards = tuple(shards)
        self.split = split
        self.starts = np.cumsum([0] + [s.take for s in self.shards], dtype=np.int64)
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}  # shard -> descriptor, closed when self is collected
        self._open: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        weakref.finalize(self, close_fds, self._fds)  # also runs at exit, unlike __del__

    @classmethod
    def for_split(cls, info: Any, split: str) -> TFRecordSource:
        return cls(split_shards(info, split), split)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {"shards": self.shards, "split": self.split}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["shards"], state["split"])

    def shard_index(self, k: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(descriptor, data offsets, data lengths) of shard k, opened and indexed once."""
        opened = self._open.get(k)
        if opened is not None:
            return opened
        with self._lock:  # reader threads: one scan per shard
            if k not in self._open:
                shard = self.shards[k]
                try:
                    fd = os.open(shard.path, os.O_RDONLY)
                except OSError as e:
                    raise UserError(f"TFRecord shard {shard.path} of split {self.split!r} "
                                    f"cannot be opened: {e.strerror}") from None
                try:
                    offsets, lengths = index_shard(fd, shard, self.split)
                except BaseException:
                    os.close(fd)
                    raise
                self._fds[k] = fd
                self._open[k] = (fd, offsets, lengths)
            return self._open[k]

    def __getitem__(self, index: int) -> bytes:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for split {self.split!r} "
                             f"({len(self)} records)")
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        shard = self.shards[k]
        record = shard.skip + index - int(self.starts[k])
        fd, offsets, lengths = self.shard_index(k)
        data, problem = read_record(fd, int(offsets[record]), int(lengths[record]))
        if data is None:  # the shard's index is intact: only this record is bad (skippable)
            message = str(shard_error(shard, record, self.split, problem))
            raise BadRecordError(message, f"TFRecord shard {shard.path} record {record}",
                                 problem)
        return data

    def __getitems__(self, indices: Sequence[int]) -> list[bytes]:
        return [self[i] for i in indices]


# --------------------------------------------------------------------------------------------
# Converting an ArrayRecord build
# --------------------------------------------------------------------------------------------


def read_array_record(path: str, chunk: int = 256) -> Iterator[bytes]:
    """Every record of an ArrayRecord file, in order, `chunk` records in memory at a time."""
    from array_record.python import array_record_module
    reader = array_record_module.ArrayRecordReader(path)
    try:
        count = reader.num_records()
        for start in range(0, count, chunk):
            yield from reader.read(list(range(start, min(start + chunk, count))))
    finally:
        reader.close()


def write_tfrecord_shards(info: Any, source_dir: str, target_dir: str) -> list[str]:
    """Writes the ArrayRecord shards of `info`'s splits (in `source_dir`) to `target_dir` as
    TFRecord shards, named as TFDS names them, and switches `info` to TFRecord.

    Returns the ArrayRecord shard paths it read.
    """
    from tensorflow_datasets.core import file_adapters
    if info.file_format != file_adapters.FileFormat.ARRAY_RECORD:
        raise UserError(f"{source_dir} is not an ArrayRecord build ({info.file_format})")
    sources = {name: [os.path.join(source_dir, os.path.basename(os.fspath(p)))
                      for p in split.filepaths] for name, split in info.splits.items()}
    info.set_file_format(file_adapters.FileFormat.TFRECORD, override=True,
                         override_if_initialized=True)
    for name, split in info.splits.items():
        for src, dst in zip(sources[name], split.filepaths, strict=True):
            write_records(os.path.join(target_dir, os.path.basename(os.fspath(dst))),
                          read_array_record(src))
    return [path for paths in sources.values() for path in paths]


def rewrite_as_tfrecord(info: Any, folder: str) -> None:
    """TFRecord shards replace the ArrayRecord ones in `folder`, and `info` says TFRecord.

    How ``data_prep.build --file_format tfrecord`` writes TFRecord without TensorFlow (TFDS
    needs it for that): TFDS builds ArrayRecord into its temporary folder, this rewrites the
    shards there, then TFDS writes dataset_info.json and renames the folder.
    """
    for path in write_tfrecord_shards(info, folder, folder):
        os.remove(path)


def convert_array_record_build(source_dir: str, target_dir: str) -> str:
    """Writes the ArrayRecord build in `source_dir` to `target_dir` as TFRecord; returns it.

    Same records, shards and every other file; dataset_info.json differs only in fileFormat.
    It is written last, so readers (which skip folders without one) never see a half-written
    target.
    """
    import tensorflow_datasets as tfds
    with open(os.path.join(source_dir, INFO_FILE), encoding="utf-8") as f:
        info_json = json.load(f)
    os.makedirs(target_dir, exist_ok=True)
    read = write_tfrecord_shards(tfds.builder_from_directory(source_dir).info, source_dir,
                                 target_dir)
    skip = {INFO_FILE, *(os.path.basename(p) for p in read)}
    for name in sorted(set(os.listdir(source_dir)) - skip):
        if os.path.isfile(os.path.join(source_dir, name)):
            shutil.copyfile(os.path.join(source_dir, name), os.path.join(target_dir, name))
    with open(os.path.join(target_dir, INFO_FILE), "w", encoding="utf-8") as f:
        json.dump({**info_json, "fileFormat": "tfrecord"}, f, indent=2, sort_keys=True)
    return target_dir
