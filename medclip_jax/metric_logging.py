"""Training metrics to stdout, a JSONL file and TensorBoard event files (no TensorFlow).

Only process 0 writes files; every process may print.
"""

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np


def _to_float(value: Any) -> float:
    return float(np.asarray(value))


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported lazily (only process 0 needs it) and without
    PyTorch: tensorboardX imports torch when it can, only to accept torch tensors, and that
    import costs every trainer ~3 s at start-up. Scalars written here are Python floats."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which it handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Writes scalar metrics keyed by step to every sink at once."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
            self._tb = summary_writer_class()(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
        values = {f"{prefix}{k}": _to_float(v) for k, v in scalars.items()}
        if self.enabled:
            self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
            self._jsonl.flush()
            for key, value in values.items():
                self._tb.add_scalar(key, value, int(step))
            self._tb.flush()
        return values

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


class Progress:
    """Steps/s, pairs/s and an ETA measured over the window since the last report."""

    def __init__(self, total_steps: int, start_step: int, global_batch_size: int):
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def report(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        step_time = (now - self._last_time) / steps
        self._last_step, self._last_time = step, now
        return {
            "step_time_s": step_time,
            "pairs_per_s": self.global_batch_size / step_time if step_time > 0 else 0.0,
            "eta_s": step_time * (self.total_steps - step),
        }
