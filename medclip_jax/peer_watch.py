"""Multi-process jobs: notice a lost process quickly and say which, instead of a core dump.

When one process of a job dies, the survivors either fail in their next collective (Gloo:
"Connection reset by peer") and then hang in JAX's shutdown barrier until the coordination
service's heartbeat timeout aborts them (``-6`` and a C++ stack trace), or, when the peer's
host vanished, block in the collective until that same abort. Here every process bumps a
counter in the coordination service's key-value store every `INTERVAL_S` seconds from a daemon
thread; a peer whose counter stops for ``--peer_timeout_s`` is lost. On a lost peer, or on
an exception escaping a multi-process run, the process prints one line naming the lost
process(es), says the job can be resumed, and exits with `LOST_PROCESS_EXIT_CODE` at once
(skipping the shutdown barrier that would hang). JAX's own heartbeat timeout is set above
``--peer_timeout_s`` (`jax_heartbeat_timeout`) so this watch speaks first.

When process 0 (which hosts the coordination service) dies, JAX's client terminates every
other process at once from C++ ("Terminating process because the JAX distributed service
detected fatal errors"); this jaxlib offers no working hook to replace that (its
``missed_heartbeat_callback`` cannot be given a Python function), so `medclip_jax.supervisor`
turns that abort into the same one line from a parent process.

The key-value store is reached through ``jax._src.distributed.global_state.client``: JAX has no
public handle on it (multihost_utils uses the same one).
"""

import atexit
import os
import sys
import threading
import time
import traceback

import jax

INTERVAL_S = 1.0
#: Exit code of a process that lost a peer (EX_TEMPFAIL: the job can be retried / resumed).
LOST_PROCESS_EXIT_CODE = 75
#: How much later than the watch JAX's own heartbeat timeout fires.
JAX_HEARTBEAT_MARGIN_S = 30

_ALIVE = "medclip_jax/alive/{}"
_DONE = "medclip_jax/done/{}"


def jax_heartbeat_timeout(peer_timeout_s: int) -> int:
    """The `heartbeat_timeout_seconds` for `jax.distributed.initialize`."""
    return int(peer_timeout_s) + JAX_HEARTBEAT_MARGIN_S


def _client():
    from jax._src import distributed
    return distributed.global_state.client


class PeerWatch:
    """The daemon thread of one process (`start`), and what it knows about its peers."""

    def __init__(self, timeout_s: float):
        self.timeout_s = float(timeout_s)
        self.me, self.count = jax.process_index(), jax.process_count()
        self.peers = [p for p in range(self.count) if p != self.me]
        self._stopping = threading.Event()
        self._seen: dict[int, tuple[str | None, float]] = {}

    def start(self) -> None:
        atexit.register(self.finish)  # registered after jax.distributed's: runs before it
        threading.Thread(target=self._loop, daemon=True, name="peer-watch").start()

    def finish(self) -> None:
        """A normal exit: peers must not take this process for lost."""
        if not self._stopping.is_set():
            self._stopping.set()
            try:
                _client().key_value_set(_DONE.format(self.me), "1", allow_overwrite=True)
            except Exception:  # the coordinator may already be gone; nothing to tell then
                pass

    def _read(self, peer: int) -> str | None:
        client = _client()
        try:
            if client.key_value_try_get(_DONE.format(peer)):
                return "done"
        except Exception:  # NOT_FOUND: not done
            pass
        try:
            return client.key_value_try_get(_ALIVE.format(peer))
        except Exception:
            return None

    def silent_peers(self, now: float) -> list[int]:
        """Peers whose counter has not moved for `timeout_s` (one read of each counter)."""
        silent = []
        for peer in self.peers:
            value = self._read(peer)
            if value == "done":
                continue
            last_value, since = self._seen.get(peer, (None, now))
            if value != last_value or peer not in self._seen:
                self._seen[peer] = (value, now)
            elif now - since > self.timeout_s:
                silent.append(peer)
        return silent

    def _loop(self) -> None:
        beat = 0
        while not self._stopping.wait(INTERVAL_S):
            beat += 1
            try:
                _client().key_value_set(_ALIVE.format(self.me), str(beat), allow_overwrite=True)
            except Exception:
                if self._stopping.is_set():
                    return
                exit_lost([0], "the coordinator is unreachable")
            silent = self.silent_peers(time.monotonic())
            if silent and not self._stopping.is_set():
                exit_lost(silent, f"no sign of life for {self.timeout_s:.0f} s "
                                  f"(--peer_timeout_s)")

    def lost_peers(self, wait_s: float = 3 * INTERVAL_S) -> list[int] | None:
        """After an error: the peers whose counters do not move within `wait_s` (None: the
        coordinator itself is unreachable)."""
        try:
            _client().key_value_try_get(_ALIVE.format(self.me))
        except Exception:
            return None
        before = {p: self._read(p) for p in self.peers}
        time.sleep(wait_s)
        return [p for p in self.peers if before[p] != "done" and self._read(p) == before[p]]


_WATCH: PeerWatch | None = None


def start(timeout_s: float) -> None:
    """Starts this process's watch (multi-process runs only)."""
    global _WATCH
    if jax.process_count() > 1 and _WATCH is None:
        _WATCH = PeerWatch(timeout_s)
        _WATCH.start()


def lost_line(lost: list[int], count: int | None, me: int | str | None, how: str) -> str:
    """The one line of a process that lost peers (`count`, `me`: None where unknown)."""
    names = ", ".join(f"process {p}" for p in lost) or "another process"
    job = f"this {count}-process job" if count else "this multi-process job"
    this = f"; this is process {me}" if me is not None else ""
    return (f"error: lost {names} of {job} ({how}){this}. Re-run the same command on every "
            f"process to resume from the last checkpoint")


def exit_lost(lost: list[int], how: str) -> None:
    """One line naming the lost processes, then exit at once (no shutdown barrier)."""
    print(lost_line(lost, jax.process_count(), jax.process_index(), how), file=sys.stderr,
          flush=True)
    os._exit(LOST_PROCESS_EXIT_CODE)


def exit_now(code: int) -> None:
    """Exits; in a multi-process run at once, skipping JAX's shutdown barrier, which would
    wait for peers that may be blocked in a collective with this process."""
    if _WATCH is None:
        sys.exit(code)
    _WATCH._stopping.set()  # not `finish`: the peers must see this process stop
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_on_error(error: BaseException) -> None:
    """An exception escaped a multi-process run. A lost peer (its counter stopped): one line
    naming it. None lost: this process failed by itself; its traceback, then exit 1. Either
    way at once. Returns only when no watch runs (one process), so the caller re-raises."""
    if _WATCH is None:
        return
    _WATCH._stopping.set()
    lost = _WATCH.lost_peers()
    first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    how = f"{type(error).__name__}: {first_line}"
    if lost is None:
        exit_lost([0], f"the coordinator is unreachable after {how}")
    if lost:
        exit_lost(lost, how)
    traceback.print_exception(error)
    print(f"error: process {jax.process_index()} failed ({how}); the other processes will "
          f"stop", file=sys.stderr, flush=True)
    exit_now(1)
