"""SIGTERM (cluster preemption, `scancel`) and Ctrl-C (SIGINT) -> save a checkpoint, stop cleanly.

Every process records the signal locally; the training loop asks `should_stop()` after each
step on one process, at its log interval on several (where all processes agree through one
all-gather, so they stop at the same step). A second Ctrl-C aborts at once, without a
checkpoint: for a user who does not want to wait for the save.
"""

import os
import signal
import sys
import types
from typing import Callable

from medclip_jax import sharding

#: Exit code of an abort by a second Ctrl-C (128 + SIGINT, as a shell reports it; the same as
#: `cli.INTERRUPTED_EXIT_CODE`).
ABORT_EXIT_CODE = 130


class PreemptionWatcher:
    """Installs SIGTERM and SIGINT handlers for its lifetime (use as a context manager).

    `on_abort` runs before the process exits on a second Ctrl-C (e.g. releasing the workdir
    lock); it must be quick and must not raise.
    """

    def __init__(self, on_abort: Callable[[], None] = lambda: None):
        self.signal_name: str | None = None
        self._on_abort = on_abort
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        del frame
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            print("error: interrupted twice: aborting without a checkpoint; re-run the same "
                  "command to resume from the last saved one", file=sys.stderr, flush=True)
            self._on_abort()
            os._exit(ABORT_EXIT_CODE)
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            if signum == signal.SIGINT:
                print("Ctrl-C: saving a checkpoint and stopping after this step (Ctrl-C "
                      "again aborts at once, without saving)", flush=True)

    def __enter__(self) -> "PreemptionWatcher":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def should_stop(self) -> bool:
        """True on every process once any process has been asked to stop."""
        return sharding.any_process(self.requested)
