"""Multi-process jobs: a process dies; the survivor must stop quickly, in one line."""

import subprocess
import time

import portpicker

from faults import Case
from faults.common import REPO_ROOT, NotHeld, Scratch, checkpoint_steps, env, wait_for_line

PEER_TIMEOUT_S = 10


def start_pair(scratch: Scratch, workdir: str, *overrides: str, data_dir: str | None = None
               ) -> list[subprocess.Popen]:
    """A 2-process tiny training job (one fake device each), started in the background."""
    port = portpicker.pick_unused_port()
    extra = {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    return [subprocess.Popen(
        scratch.train_args(workdir, *overrides, f"--coordinator_address=localhost:{port}",
                           "--num_processes=2", f"--process_id={i}",
                           f"--peer_timeout_s={PEER_TIMEOUT_S}", data_dir=data_dir),
        cwd=REPO_ROOT, env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True) for i in range(2)]


def run_pair(scratch: Scratch, workdir: str, *overrides: str, data_dir: str | None = None,
             timeout: float = 400) -> list[subprocess.CompletedProcess]:
    """A 2-process tiny training job to its end; each process's exit code and output."""
    pair = start_pair(scratch, workdir, *overrides, data_dir=data_dir)
    try:
        outputs = [p.communicate(timeout=timeout) for p in pair]
    finally:
        for p in pair:
            if p.poll() is None:
                p.kill()
            p.wait()
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err)
            for p, (out, err) in zip(pair, outputs)]


def kill_one(scratch: Scratch, victim: int) -> None:
    """Kills process `victim` mid-run (SIGKILL to its supervisor, which takes the training
    process with it): the survivor notices through `medclip_jax.peer_watch` (a worker lost)
    or through its supervisor (process 0 lost: JAX aborts it, `medclip_jax.supervisor`)."""
    workdir = scratch.path("run")
    pair = start_pair(scratch, workdir, "--config.max_steps=100000",
                      "--config.num_epochs=100000", "--config.eval.every_steps=0",
                      "--config.checkpoint.every_steps=3")
    survivor = pair[1 - victim]
    try:
        wait_for_line(pair[0], "step 4/", timeout=400)
        wait_for_checkpoint(workdir, timeout=120)
        pair[victim].kill()
        start = time.monotonic()
        _, err = survivor.communicate(timeout=PEER_TIMEOUT_S + 120)
        took = time.monotonic() - start
    finally:
        for p in pair:
            if p.poll() is None:
                p.kill()
            p.wait()
    with open(scratch.path("survivor.stderr"), "w", encoding="utf-8") as f:
        f.write(err)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    if survivor.returncode != 75 or len(lines) != 1 or "Check failure" in err:
        raise NotHeld(f"survivor exit {survivor.returncode} after {took:.0f} s, stderr ending "
                      f"{err[-1200:]!r}")
    if f"lost process {victim} of this 2-process job" not in lines[0]:
        raise NotHeld(f"the line does not name process {victim}: {lines[0]!r}")
    if took > PEER_TIMEOUT_S + 30:
        raise NotHeld(f"the survivor took {took:.0f} s (--peer_timeout_s={PEER_TIMEOUT_S})")
    if not checkpoint_steps(workdir):
        raise NotHeld("no checkpoint to resume from")


def wait_for_checkpoint(workdir: str, timeout: float) -> None:
    """Until a finished step folder exists (process 0 finalizes it; killed earlier, there
    would be nothing to resume from whatever the survivors do)."""
    deadline = time.monotonic() + timeout
    while not checkpoint_steps(workdir):
        if time.monotonic() > deadline:
            raise NotHeld(f"no checkpoint after {timeout:.0f} s, before any fault")
        time.sleep(0.2)


CASES = [
    Case("lost_worker_process", False, lambda scratch: kill_one(scratch, 1),
         "when a process dies, the others exit 75 within --peer_timeout_s with one line naming "
         "it; re-running every process resumes"),
    Case("lost_coordinator_process", False, lambda scratch: kill_one(scratch, 0),
         "when process 0 (the coordinator) dies, the others exit 75 at once with one line "
         "naming it and the file holding JAX's abort report; re-running every process resumes"),
]
