"""The multi-process supervisor: JAX's abort on a lost coordinator becomes one line and exit 75;
everything else the child writes or returns passes through unchanged. The children here are
small Python scripts that write what JAX's client writes when process 0 dies, so no JAX job
is needed."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import REPO_ROOT
from medclip_jax import peer_watch, supervisor

# What a worker's stderr holds when process 0 dies (jaxlib 0.10.2, trimmed).
ABORT_REPORT = [
    b"E1207 23:05:29.692957    1950 coordination_service_agent.cc:289] Polled an error from "
    b"coordination service (this can be an error from this or another task).\n",
    b"F1207 23:05:29.693063    1950 client.h:80] Terminating process because the JAX "
    b"distributed service detected fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC "
    b"to coordination service.\n",
    b"*** Check failure stack trace: ***\n",
    b"    @     0x7ff321ea71f5  (unknown)\n",
    b"Fatal Python error: Aborted\n",
]
ORDINARY_ERROR = (b"E1207 23:05:30.000001    1950 gloo.cc:12] transient: connection "
                  b"retried\n")


@pytest.mark.parametrize("argv, multi", [
    ([], False),
    (["--config", "c.py", "--workdir", "w"], False),
    (["--distributed"], True),
    (["--distributed=false"], False),
    (["--nodistributed"], False),
    (["--coordinator_address=h:1", "--num_processes=2", "--process_id=1"], True),
    (["--coordinator_address", "h:1", "--num_processes", "4"], True),
    (["-coordinator_address=h:1"], True),
    (["--coordinator_address=h:1", "--num_processes=1"], False),
    (["--", "--distributed"], False),
])
def test_multiprocess_flags(argv, multi):
    assert (supervisor.multiprocess_flags(argv) is not None) == multi


def test_flag_values_are_read_in_both_spellings():
    flags = supervisor.multiprocess_flags(
        ["--coordinator_address", "h:1", "--num_processes=2", "--process_id", "1"])
    assert flags == {"coordinator_address": "h:1", "num_processes": "2", "process_id": "1"}


def test_ordinary_lines_pass_at_once_and_an_error_record_after_the_hold():
    f = supervisor.AbortFilter(hold_s=2.0)
    assert f.feed(b"step 3/10\n", 0.0) == [b"step 3/10\n"]
    assert f.feed(ORDINARY_ERROR, 1.0) == []
    assert f.feed(b"step 4/10\n", 1.5) == []          # held behind it: order is kept
    assert f.tick(2.9) == []
    assert f.tick(3.0) == [ORDINARY_ERROR, b"step 4/10\n"]
    assert f.feed(b"step 5/10\n", 3.1) == [b"step 5/10\n"]
    assert not f.coordinator_lost(-6)


def test_an_abort_report_is_held_until_the_child_exits():
    f = supervisor.AbortFilter(hold_s=2.0)
    for i, line in enumerate(ABORT_REPORT):
        assert f.feed(line, 0.1 * i) == []
    assert f.tick(100.0) == []
    assert f.coordinator_lost(-signal.SIGABRT)
    assert not f.coordinator_lost(0)
    assert f.release() == ABORT_REPORT


def test_an_abort_about_something_else_is_not_a_lost_coordinator():
    f = supervisor.AbortFilter()
    f.feed(b"F1207 23:05:29.693063    1950 pjrt.cc:80] Check failed: buffer != nullptr\n", 0)
    assert f.aborting and not f.coordinator_lost(-6)


def test_exit_codes_are_what_a_shell_reports():
    assert supervisor.exit_code(0) == 0
    assert supervisor.exit_code(75) == 75
    assert supervisor.exit_code(-signal.SIGABRT) == 134


def test_the_line_names_process_0_the_job_and_the_report():
    line = supervisor.coordinator_lost_line({"num_processes": "4", "process_id": "2"}, "/r")
    assert line.startswith("error: lost process 0 of this 4-process job (") and "/r" in line
    assert "this is process 2" in line and "resume" in line
    line = supervisor.coordinator_lost_line({}, "/r")
    assert "of this multi-process job" in line and "this is process" not in line
    assert peer_watch.lost_line([1], 2, 0, "x") == (
        "error: lost process 1 of this 2-process job (x); this is process 0. Re-run the same "
        "command on every process to resume from the last checkpoint")


def child_command(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def supervise(body: str, flags: dict | None = None, **popen) -> subprocess.Popen:
    """`run_supervised` in a process of its own, supervising a child running `body`."""
    code = (f"import sys; from medclip_jax import supervisor; "
            f"sys.exit(supervisor.run_supervised({child_command(body)!r}, {flags or {}!r}))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": REPO_ROOT}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def test_a_lost_coordinator_gives_one_line_exit_75_and_the_report_in_a_file():
    report = b"".join(ABORT_REPORT)
    parent = supervise(f"""
        import os, sys
        print("step 4/10", flush=True)
        sys.stderr.buffer.write({report!r}); sys.stderr.flush()
        os.abort()
        """, {"num_processes": "2", "process_id": "1"})
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == peer_watch.LOST_PROCESS_EXIT_CODE
    assert out == b"step 4/10\n"
    (line,) = err.decode().splitlines()
    assert line.startswith("error: lost process 0 of this 2-process job")
    path = line.split("its report: ")[1].split(")")[0]
    with open(path, "rb") as f:
        assert f.read() == report
    os.remove(path)


def test_any_other_exit_passes_through_with_everything_it_wrote():
    parent = supervise(f"""
        import sys
        sys.stderr.buffer.write({ORDINARY_ERROR!r} + b"error: config.x is wrong\\n")
        sys.exit(2)
        """)
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == 2
    assert err == ORDINARY_ERROR + b"error: config.x is wrong\n"

    crash = b"F1207 23:05:29.693063    1950 pjrt.cc:80] Check failed: buffer != nullptr\n"
    parent = supervise(f"""
        import os, sys
        sys.stderr.buffer.write({crash!r}); sys.stderr.flush()
        os.abort()
        """)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 128 + signal.SIGABRT
    assert err == crash


def test_sigterm_reaches_the_child():
    parent = supervise("""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (print("saved", flush=True), sys.exit(0)))
        print("ready", flush=True)
        time.sleep(60)
        """)
    assert parent.stdout.readline() == b"ready\n"
    parent.send_signal(signal.SIGTERM)
    out, _ = parent.communicate(timeout=60)
    assert parent.returncode == 0 and out == b"saved\n"


def test_killing_the_parent_kills_the_supervised_child(tmp_path):
    """Through `supervise_if_multiprocess`, as a binary runs it: the child re-runs the same
    command line and dies with its parent."""
    pid_file = tmp_path / "child.pid"
    code = textwrap.dedent(f"""
        import os, sys, time
        from medclip_jax import supervisor
        supervisor.supervise_if_multiprocess()
        assert supervisor.CHILD_ENV not in os.environ
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(120)
        """)
    parent = subprocess.Popen([sys.executable, "-c", code, "--distributed"], cwd=REPO_ROOT,
                              env={**os.environ, "PYTHONPATH": REPO_ROOT})
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert child != parent.pid
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not alive(child):
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its parent")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it is dead)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
