"""SIGTERM (cluster preemption, `scancel`, Ctrl-\\) -> save a checkpoint and stop cleanly.

Every process records the signal locally; the training loop asks `should_stop()` at its log
interval, where all processes agree through one all-gather, so they stop at the same step.
"""

import signal
import types

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Installs a SIGTERM handler for its lifetime (use as a context manager)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        del signum, frame
        self.requested = True

    def __enter__(self) -> "PreemptionWatcher":
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def should_stop(self) -> bool:
        """True on every process once any process has been asked to stop."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.array([self.requested]))
        return bool(np.any(flags))
