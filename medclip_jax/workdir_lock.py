"""One trainer per workdir: a lock file that process 0 holds for the run's lifetime.

Two trainers writing the same checkpoints corrupt each other's steps halfway through, so the
second one must refuse at start-up, naming the holder. The lock is ``<workdir>/train.lock``,
created atomically (``O_EXCL``), holding the holder's host, pid and start time; a daemon thread
refreshes its modification time every `HEARTBEAT_S` seconds while the run lives. A lock is
stale, and is taken over with a note, when its holder is known to be gone: on the same host,
its pid no longer runs; on any host, its heartbeat is older than ``stale_after_s``
(``config.checkpoint.lock_stale_s``), which covers a job killed on one node and requeued on
another. The lock is removed on exit, whatever the exit; a SIGKILL leaves a stale lock, which
the next run takes over.
"""

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from medclip_jax.errors import UserError

LOCK_NAME = "train.lock"
HEARTBEAT_S = 10.0


def lock_path(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), LOCK_NAME)


def this_holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "command": " ".join(sys.argv)[:500]}


def pid_running(pid: int) -> bool:
    """Whether `pid` is a live (non-zombie) process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_holder(path: str) -> dict[str, Any] | None:
    """The lock's content; None when it is unreadable (being written, or damaged)."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def stale_reason(path: str, holder: dict[str, Any] | None, stale_after_s: float) -> str | None:
    """Why the lock's holder is gone, or None while it may still run."""
    try:
        age = time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return "the lock disappeared"
    if holder is not None and holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if isinstance(pid, int) and not pid_running(pid):
            return f"pid {pid} no longer runs on this host"
    if age > stale_after_s:
        return f"its heartbeat stopped {age:.0f} s ago (> config.checkpoint.lock_stale_s)"
    return None


def describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unreadable lock"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('started')}")


def _write_new(path: str, holder: dict[str, Any]) -> bool:
    """Creates the lock atomically; False when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(holder, f)
    return True


def _replace(path: str, holder: dict[str, Any]) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(holder, f)
    os.replace(temporary, path)


def acquire(workdir: str, stale_after_s: float) -> dict[str, Any]:
    """Takes the lock (or a stale one over) and returns what it holds; a UserError naming the
    holder when another run holds it."""
    os.makedirs(os.path.abspath(workdir), exist_ok=True)
    path, mine = lock_path(workdir), this_holder()
    for _ in range(20):  # an unreadable lock may be one being written right now
        if _write_new(path, mine):
            return mine
        holder = read_holder(path)
        reason = stale_reason(path, holder, stale_after_s)
        if holder is None and reason is None:
            time.sleep(0.05)
            continue
        if reason is None:
            raise UserError(f"workdir {os.path.abspath(workdir)} is in use by another trainer "
                            f"({describe(holder)}); wait for it to finish, or use another "
                            f"--workdir (remove {path} only if that run is gone)")
        print(f"Taking over the stale lock of {describe(holder)}: {reason}", flush=True)
        _replace(path, mine)
        time.sleep(0.2)  # two runs taking over at once: the last writer wins, the other leaves
        if read_holder(path) == mine:
            return mine
    raise UserError(f"could not take the workdir lock {path} (another trainer is starting "
                    f"there at the same time: {describe(read_holder(path))})")


def release(workdir: str, mine: dict[str, Any]) -> None:
    """Removes the lock if it is still this run's."""
    path = lock_path(workdir)
    if read_holder(path) == mine:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _heartbeat(path: str, mine: dict[str, Any], stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        if read_holder(path) != mine:
            return
        with contextlib.suppress(OSError):
            os.utime(path)


@contextlib.contextmanager
def hold(workdir: str, stale_after_s: float) -> Iterator[Callable[[], None]]:
    """The lock for the duration of the block, taken by process 0; every process fails with
    one line when it cannot be taken. Yields a function that releases it early (for an exit
    that skips the block's end, `os._exit`)."""
    mine, error = None, ""
    if jax.process_index() == 0:
        try:
            mine = acquire(workdir, stale_after_s)
        except UserError as e:
            error = str(e)
    if jax.process_count() > 1:
        taken = multihost_utils.broadcast_one_to_all(np.int32(not error))
        if not int(taken) and not error:
            error = "process 0 could not take the workdir lock (its log says why)"
    if error:
        raise UserError(error)
    stop = threading.Event()
    if mine is not None:
        threading.Thread(target=_heartbeat, args=(lock_path(workdir), mine, stop),
                         daemon=True, name="workdir-lock-heartbeat").start()
    def release_now() -> None:
        stop.set()
        if mine is not None:
            release(workdir, mine)

    try:
        yield release_now
    finally:
        release_now()
