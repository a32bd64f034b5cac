"""Concurrency and interruption: a second trainer on a workdir, stale locks, Ctrl-C."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from faults import Case
from faults.common import (NotHeld, Scratch, checkpoint_steps, expect_one_line_error,
                           expect_success, send, wait_for_line)

LONG_RUN = ("--config.max_steps=100000", "--config.num_epochs=100000",
            "--config.eval.every_steps=0", "--config.checkpoint.every_steps=100000")


def lock_file(workdir: str) -> str:
    return os.path.join(workdir, "train.lock")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        send(process, signal.SIGKILL)
    process.wait(timeout=60)


def second_trainer_refuses(scratch: Scratch) -> None:
    workdir = scratch.path("run")
    first = scratch.start_train(workdir, *LONG_RUN)
    try:
        wait_for_line(first, "compiled and ran the first train step")
        second = scratch.train(workdir, "--config.max_steps=2")
        expect_one_line_error(second, "in use by another trainer", f"pid {first.pid}",
                              socket.gethostname())
        if first.poll() is not None:
            raise NotHeld(f"the first trainer died ({first.returncode}) when the second started")
    finally:
        stop(first)


def stale_lock_is_taken_over(scratch: Scratch) -> None:
    workdir = scratch.path("run")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    os.makedirs(workdir, exist_ok=True)
    with open(lock_file(workdir), "w", encoding="utf-8") as f:
        json.dump({"host": socket.gethostname(), "pid": gone.pid, "started": "earlier"}, f)
    result = scratch.train(workdir, "--config.max_steps=2", "--config.eval.every_steps=0")
    expect_success(result, "Taking over the stale lock", f"pid {gone.pid} no longer runs")
    if os.path.exists(lock_file(workdir)):
        raise NotHeld("the lock was not released at the end of the run")


def interrupt(scratch: Scratch, workdir: str, times: int
              ) -> tuple[subprocess.Popen, str, str, float]:
    """A long run sent `times` Ctrl-C (20 ms apart) after its third step; (process, stdout,
    stderr, seconds from the last signal to its exit)."""
    process = scratch.start_train(workdir, *LONG_RUN)
    try:
        wait_for_line(process, "step 3/")
        for i in range(times):
            if i:
                time.sleep(0.02)
            send(process, signal.SIGINT)
        start = time.monotonic()
        out, err = process.communicate(timeout=120)
        return process, out, err, time.monotonic() - start
    finally:
        stop(process)


def sigint_saves_and_resumes(scratch: Scratch) -> None:
    workdir = scratch.path("run")
    process, out, err, _ = interrupt(scratch, workdir, 1)
    if process.returncode != 0 or "Traceback" in err or "Stopped by SIGINT at step" not in out:
        raise NotHeld(f"Ctrl-C: exit {process.returncode}, stdout ending {out[-800:]!r}, "
                      f"stderr ending {err[-800:]!r}")
    stopped = int(out.split("Stopped by SIGINT at step ", 1)[1].split(";", 1)[0])
    if checkpoint_steps(workdir)[-1:] != [stopped]:
        raise NotHeld(f"stopped at {stopped} but the checkpoints are {checkpoint_steps(workdir)}")
    if os.path.exists(lock_file(workdir)):
        raise NotHeld("the lock was not released after Ctrl-C")
    resumed = scratch.train(workdir, f"--config.max_steps={stopped + 2}",
                            "--config.eval.every_steps=0")
    expect_success(resumed, f"Resumed from checkpoint at step {stopped}")


def second_sigint_aborts_at_once(scratch: Scratch) -> None:
    workdir = scratch.path("run")
    process, _, err, took = interrupt(scratch, workdir, 2)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    if process.returncode != 130 or len(lines) != 1 or "Traceback" in err:
        raise NotHeld(f"two Ctrl-C: exit {process.returncode}, stderr ending {err[-800:]!r}")
    if "aborting without a checkpoint" not in lines[0] or took > 20:
        raise NotHeld(f"two Ctrl-C: {lines[0]!r} after {took:.1f} s")
    if os.path.exists(lock_file(workdir)):
        raise NotHeld("the lock was not released after the abort")


CASES = [
    Case("second_trainer_refuses", True, second_trainer_refuses,
         "a second trainer on a workdir in use exits 2 with one line naming the holder's pid "
         "and host; the first one goes on"),
    Case("stale_lock_is_taken_over", False, stale_lock_is_taken_over,
         "a lock left by a dead process (same host: its pid is gone; any host: no heartbeat "
         "for config.checkpoint.lock_stale_s) is taken over with a note"),
    Case("sigint_saves_and_resumes", True, sigint_saves_and_resumes,
         "Ctrl-C saves a checkpoint after the current step and exits 0; the same command "
         "resumes from it"),
    Case("second_sigint_aborts_at_once", False, second_sigint_aborts_at_once,
         "a second Ctrl-C aborts at once (exit 130, one line), without a checkpoint, and "
         "releases the lock"),
]
