"""``<workdir>/bad_records.jsonl`` and the ``train/bad_records`` count: the training records
that ``config.data.on_bad_record="skip"`` replaced (`medclip_jax.data.pipeline`).

One JSON line per replaced record: ``dataset``, ``path``, ``split``, ``record`` (index in the
split), ``id`` (null when the record could not be parsed), ``reason``, ``position`` (in the
record stream) and ``step`` (the train step whose batch it was in). A record that is bad is
replaced every time the stream reaches it again (each epoch), so it appears once per visit.

The file is idempotent under resume: a resumed run regenerates the batches after its checkpoint
and meets the same bad records again (the stream is a function of the position), so a line is
keyed by (dataset, split, record, position) and written only once. The count is cumulative and
summed over processes: each process sees only its own rows, so the events are gathered at the
steps where every process flushes together (`flush_due`), before any checkpoint of that step is
written, so a checkpoint never runs ahead of the file.
"""

import json
import os
from typing import Any, Iterable, Mapping

import jax
import numpy as np

FILENAME = "bad_records.jsonl"
METRIC = "bad_records"

Key = tuple[str, str, int, int]


def event_key(event: Mapping[str, Any]) -> Key:
    return str(event["dataset"]), str(event["split"]), int(event["record"]), int(event["position"])


def read_events(path: str) -> list[dict[str, Any]]:
    """The file's events; a line cut short by a crash mid-write is ignored."""
    if not os.path.exists(path):
        return []
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
                event_key(event)
                int(event["step"])
            except (ValueError, KeyError, TypeError):
                continue
            events.append(event)
    return events


def gather_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's events (a collective: every process calls it at the same step)."""
    if jax.process_count() == 1:
        return events
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(events).encode("utf-8"), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray(len(data), np.int64))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[:len(data)] = data
    gathered = multihost_utils.process_allgather(padded)
    out = []
    for row, length in zip(np.asarray(gathered), np.asarray(lengths).reshape(-1)):
        out += json.loads(bytes(row[:int(length)]).decode("utf-8"))
    return out


def flush_due(done: int, last: bool, log_every_steps: int, checkpoint_every_steps: int) -> bool:
    """Every step on one process (free); with several, at the steps where they all log or save
    (the only steps at which a multi-process run checkpoints)."""
    return (jax.process_count() == 1 or last or done % log_every_steps == 0
            or done % checkpoint_every_steps == 0)


class BadRecordLog:
    """Collects each step's replaced records, writes the new ones and keeps the count.

    `enabled=False` (``on_bad_record="fail"``): nothing is collected and `scalars` is empty.
    Only `writer` (process 0) writes the file; every process keeps the same count.
    """

    def __init__(self, workdir: str, start_step: int, enabled: bool, writer: bool,
                 log_every_steps: int, checkpoint_every_steps: int):
        self.path = os.path.join(workdir, FILENAME)
        self.enabled = enabled
        self.writer = writer
        self.every = (log_every_steps, checkpoint_every_steps)
        self.pending: list[dict[str, Any]] = []
        previous = read_events(self.path) if enabled else []
        self.written = {event_key(e) for e in previous}
        # Events after the checkpoint are met again (and counted then) by this run.
        self.total = sum(int(e["step"]) <= start_step for e in previous)

    def record(self, local_batch: Mapping[str, Any], done: int, last: bool) -> None:
        """After step `done`: notes its batch's replaced records, flushing when due."""
        if not self.enabled:
            return
        self.pending += [{**event, "step": done} for event in local_batch.get(METRIC, ())]
        if flush_due(done, last, *self.every):
            self.flush()

    def flush(self) -> None:
        events = sorted(gather_events(self.pending), key=lambda e: (e["step"], e["position"]))
        self.pending = []
        self.total += len(events)
        new = [e for e in events if event_key(e) not in self.written]
        self.written.update(event_key(e) for e in new)
        if self.writer and new:
            append_lines(self.path, new)

    def scalars(self) -> dict[str, int]:
        """``{"bad_records": cumulative count}`` for the metrics (empty when not skipping)."""
        return {METRIC: self.total} if self.enabled else {}


def ends_mid_line(path: str) -> bool:
    size = os.path.getsize(path)
    if not size:
        return False
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) != b"\n"


def append_lines(path: str, events: Iterable[Mapping[str, Any]]) -> None:
    """Appends one line per event; a line cut short by a crash is ended first, so it does
    not swallow the next event."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        if ends_mid_line(path):
            f.write("\n")
        for event in events:
            f.write(json.dumps(dict(event), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def note(values: Mapping[str, float], prefix: str = "train/") -> str:
    """`` bad_records N`` for the stdout line when records were replaced, else ''."""
    count = int(values.get(prefix + METRIC, 0))
    return f" bad_records {count}" if count else ""
