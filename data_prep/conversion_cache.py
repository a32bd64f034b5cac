"""Resuming an interrupted build: every converted image (or reject) is also kept in a SQLite
file next to the dataset's version folder, ``<version>.conversion_cache.sqlite``. A re-run of
the same build converts only the items that are not in it yet and takes the others from the
file; after a successful build the file is deleted.

An entry is reused only if its source is unchanged — same file size and modification time (an
image file), or the same pixel bytes (an array from HDF5 / npz) — and it was converted with the
same ``max_side``. Only the main process writes the file (workers return results to it), and it
commits every `COMMIT_EVERY` entries and when the build stops for any reason, so an
interruption loses at most the images in flight.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:
    from data_prep.core import Item, Reject

COMMIT_EVERY = 512
SUFFIX = ".conversion_cache.sqlite"


def cache_path(dataset_dir: str) -> str:
    return os.path.normpath(dataset_dir) + SUFFIX


def fingerprint(item: "Item") -> str:
    """What must be unchanged for a cached conversion of `item` to be reused."""
    if isinstance(item.image, str):
        try:
            stat = os.stat(item.image)
        except OSError:
            return "absent"
        return f"file:{stat.st_size}:{stat.st_mtime_ns}"
    pixels = np.ascontiguousarray(item.image)  # memory-mapped or strided arrays too
    digest = hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest()
    return f"array:{item.image.shape}:{item.image.dtype}:{digest}"


class ConversionCache:
    """Converted image bytes and rejects of one build, keyed by (split, id)."""

    def __init__(self, path: str, max_side: int):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self.max_side = max_side
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS results (split TEXT, id TEXT, "
                        "fingerprint TEXT, max_side INTEGER, image BLOB, reason TEXT, "
                        "detail TEXT, PRIMARY KEY (split, id))")
        self.pending = 0

    def has(self, split: str) -> bool:
        """Whether anything of `split` is cached (a fresh build skips the fingerprint pass)."""
        return self.db.execute("SELECT 1 FROM results WHERE split = ? LIMIT 1",
                               (split,)).fetchone() is not None

    def reusable(self, items: Iterable["Item"], split: str) -> set[str]:
        """Ids of `items` (one split's) whose cached result is still valid."""
        stored = dict(self.db.execute(
            "SELECT id, fingerprint FROM results WHERE split = ? AND max_side = ?",
            (split, self.max_side)))
        return {item.id for item in items
                if item.id in stored and stored[item.id] == fingerprint(item)}

    def load(self, item: "Item") -> dict[str, Any] | "Reject":
        from data_prep.core import Reject
        image, reason, detail = self.db.execute(
            "SELECT image, reason, detail FROM results WHERE split = ? AND id = ?",
            (item.split, item.id)).fetchone()
        if reason is not None:
            return Reject(item.split, item.id, item.where(), reason, detail)
        return {"id": item.id, "image": bytes(image), **item.fields}

    def store(self, item: "Item", result: dict[str, Any] | "Reject") -> None:
        from data_prep.core import Reject
        rejected = isinstance(result, Reject)
        self.db.execute(
            "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
            (item.split, item.id, fingerprint(item), self.max_side,
             None if rejected else result["image"], result.reason if rejected else None,
             result.detail if rejected else None))
        self.pending += 1
        if self.pending >= COMMIT_EVERY:
            self.flush()

    def flush(self) -> None:
        self.db.commit()
        self.pending = 0

    def close(self) -> None:
        self.flush()
        self.db.close()

    def remove(self) -> None:
        self.db.close()
        if os.path.exists(self.path):
            os.remove(self.path)
