"""Multi-process runs: a parent process that turns JAX's abort on a lost coordinator into one line.

When process 0 (which hosts JAX's coordination service) dies, JAX's client in every other
process aborts from C++ within a second: its ``PollForError`` RPC fails, glog prints an E and an
F line ("Terminating process because the JAX distributed service detected fatal errors"), a C++
stack trace and Python's fault-handler dump follow, exit -6. This jaxlib gives Python no hook
for it (`peer_watch` covers the death of any other process). So a multi-process binary runs as
the child of a small parent (`run_supervised`): stdout passes straight through; stderr is relayed
line by line, except that an E/F glog record is held back for up to `HOLD_S` seconds to see
whether it opens an abort report. When the child dies of such a report about the coordination
service, the parent prints `peer_watch`'s one line for process 0 and exits 75 (resumable), with
the whole report saved to a file the line names. Any other report is relayed as it was, and the
child's exit code is the parent's (128 + N for signal N). Nothing is dropped.

The parent forwards SIGTERM (cluster preemption) to the child; Ctrl-C reaches the child from the
terminal directly (same process group), so the parent ignores it rather than doubling it. The
child asks the kernel for SIGKILL when its parent dies (Linux), so killing the parent still
kills the process, as a scheduler expects.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

from medclip_jax import peer_watch

#: Set in the child's environment (to the parent's pid): the child does not supervise again.
CHILD_ENV = "MEDCLIP_JAX_SUPERVISED_BY"
#: How long an E/F glog record is held before it is relayed as an ordinary log line.
HOLD_S = 2.0

_GLOG_ERROR = re.compile(rb"^[EF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")
_FATAL = re.compile(rb"^(F\d{4} \d\d:\d\d:\d\d|\*\*\* Check failure stack trace|"
                    rb"Fatal Python error: )")
_COORDINATOR_LOST = re.compile(rb"coordination service|JAX distributed service", re.IGNORECASE)
_VALUE_FLAGS = ("coordinator_address", "num_processes", "process_id")


def multiprocess_flags(argv: Sequence[str]) -> dict[str, str] | None:
    """The multi-process flags of an absl command line, or None for a one-process run.

    Multi-process means ``--distributed`` (cluster auto-detection) or a
    ``--coordinator_address`` with ``--num_processes`` other than 1.
    """
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        if arg.startswith("-"):
            name, has_value, value = arg.lstrip("-").partition("=")
            if name in _VALUE_FLAGS:
                if not has_value and i + 1 < len(argv):
                    i += 1
                    value = argv[i]
                values[name] = value
            elif name == "distributed":
                values[name] = value.lower() if has_value else "true"
            elif name == "nodistributed":
                values["distributed"] = "false"
        i += 1
    distributed = values.get("distributed") in ("true", "1", "t", "yes", "y")
    by_hand = bool(values.get("coordinator_address")) and values.get("num_processes") != "1"
    return values if distributed or by_hand else None


class AbortFilter:
    """Decides, line by line, what of the child's stderr reaches the terminal now.

    An E/F glog record starts a held block. A fatal marker inside it (an F record, a
    check-failure trace, a fatal Python error) makes the block an abort report, held until the
    child exits; otherwise the block is released once it is `HOLD_S` old.
    """

    def __init__(self, hold_s: float = HOLD_S):
        self.hold_s = hold_s
        self.held: list[bytes] = []
        self.held_since: float | None = None
        self.aborting = False

    def feed(self, line: bytes, now: float) -> list[bytes]:
        """The lines to write now, `line` included or held."""
        out = self.tick(now)
        if self.held_since is None and not _GLOG_ERROR.match(line):
            return out + [line]
        if self.held_since is None:
            self.held_since = now
        self.held.append(line)
        self.aborting = self.aborting or bool(_FATAL.match(line))
        return out

    def tick(self, now: float) -> list[bytes]:
        """Releases a held block that turned out to be ordinary log lines."""
        if self.held_since is None or self.aborting or now - self.held_since < self.hold_s:
            return []
        return self.release()

    def release(self) -> list[bytes]:
        out, self.held, self.held_since, self.aborting = self.held, [], None, False
        return out

    def coordinator_lost(self, returncode: int) -> bool:
        """The child died of JAX's abort about the coordination service."""
        return (returncode < 0 and self.aborting
                and any(_COORDINATOR_LOST.search(line) for line in self.held))


def exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it (128 + N for signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def coordinator_lost_line(flags: dict[str, str], report_path: str) -> str:
    count = flags.get("num_processes")
    return peer_watch.lost_line(
        [0], int(count) if count and count.isdigit() else None, flags.get("process_id"),
        f"the coordinator is gone; JAX aborted this process, its report: {report_path}")


def _save_report(lines: list[bytes]) -> str:
    fd, path = tempfile.mkstemp(prefix="medclip_jax_abort_", suffix=".log")
    with os.fdopen(fd, "wb") as f:
        f.writelines(lines)
    return path


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, b""):
        lines.put(line)
    lines.put(None)


def _write(lines: list[bytes]) -> None:
    if lines:
        sys.stderr.buffer.writelines(lines)
        sys.stderr.buffer.flush()


def run_supervised(command: Sequence[str], flags: dict[str, str]) -> int:
    """Runs `command` as the supervised child; returns the exit code to exit with."""
    env = {**os.environ, CHILD_ENV: str(os.getpid())}
    child = subprocess.Popen(list(command), env=env, stderr=subprocess.PIPE)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(child.stderr, lines), daemon=True).start()
    abort_filter = AbortFilter()
    while True:
        try:
            line = lines.get(timeout=0.25)
        except queue.Empty:
            _write(abort_filter.tick(time.monotonic()))
            continue
        if line is None:
            break
        _write(abort_filter.feed(line, time.monotonic()))
    returncode = child.wait()
    if abort_filter.coordinator_lost(returncode):
        report = _save_report(abort_filter.release())
        print(coordinator_lost_line(flags, report), file=sys.stderr, flush=True)
        return peer_watch.LOST_PROCESS_EXIT_CODE
    _write(abort_filter.release())
    return exit_code(returncode)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != os.environ.get(CHILD_ENV):
        os._exit(1)  # the parent died before the request took effect


def supervise_if_multiprocess() -> None:
    """In a multi-process binary's first process: run it again as a supervised child and exit
    with its code. Returns in the child and in one-process runs."""
    if os.environ.get(CHILD_ENV):
        _die_with_parent()
        del os.environ[CHILD_ENV]  # binaries this one starts are not supervised children
        return
    flags = multiprocess_flags(sys.argv[1:])
    if flags is not None:
        sys.exit(run_supervised([sys.executable, *sys.orig_argv[1:]], flags))
