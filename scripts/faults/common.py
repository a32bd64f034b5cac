"""What fault cases share: a scratch folder with the tiny dataset, the binaries as
subprocesses, and the checks of what a user sees (one line, exit code 2, no traceback)."""

import functools
import os
import signal
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class NotHeld(AssertionError):
    """The fault was not handled as promised; the message says how."""


def env(num_devices: int = 1, **extra: str) -> dict[str, str]:
    """The binaries' environment: CPU, `num_devices` fake devices, the repo importable, and
    the test suite's compilation cache and XLA flags when it runs the cases."""
    out = dict(os.environ)
    inherited = " ".join(flag for flag in out.get("XLA_FLAGS", "").split()
                         if not flag.startswith("--xla_force_host_platform_device_count"))
    out.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT, PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices} "
                         f"{inherited}".strip())
    out.update(extra)
    return out


class Scratch:
    """One case's working area under `root`; the tiny synthetic dataset is built once per
    process and shared by every case."""

    def __init__(self, root: str, name: str):
        self.root = root
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)

    @property
    def data_dir(self) -> str:
        return tiny_data_dir(self.root)

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def train_args(self, workdir: str, *overrides: str, data_dir: str | None = None
                   ) -> list[str]:
        """The trainer on the `tiny` preset (16 pairs per step) reading this scratch's data
        (or `data_dir`)."""
        return [sys.executable, "-m", "medclip_jax.main", "--config", "configs/clip.py:tiny",
                "--workdir", workdir, f"--config.data.data_dir={data_dir or self.data_dir}",
                *overrides]

    def train(self, workdir: str, *overrides: str, timeout: float = 300
              ) -> subprocess.CompletedProcess:
        return run(self.train_args(workdir, *overrides), timeout=timeout)

    def start_train(self, workdir: str, *overrides: str) -> subprocess.Popen:
        """The trainer in the background (its own process group, so signals reach only it)."""
        return subprocess.Popen(self.train_args(workdir, *overrides), cwd=REPO_ROOT, env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def eval_binary(self, module: str, workdir: str, *args: str, timeout: float = 300
                    ) -> subprocess.CompletedProcess:
        """An eval binary (``evals.zero_shot`` ...) on the tiny eval preset."""
        return run([sys.executable, "-m", module, "--workdir", workdir, "--config",
                    "configs/eval.py:tiny", f"--config.data_dir={self.data_dir}", *args],
                   timeout=timeout)


@functools.lru_cache(maxsize=None)
def tiny_data_dir(root: str) -> str:
    data_dir = os.path.join(root, "tfds")
    if not os.path.isdir(os.path.join(data_dir, "synthetic_medical")):
        run([sys.executable, "-c", "import sys; from data_prep import synthetic_medical; "
             "synthetic_medical.build(sys.argv[1], 'tiny')", data_dir], timeout=300, check=True)
    return data_dir


def run(args: list[str], timeout: float = 300, check: bool = False, **env_extra: str
        ) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=REPO_ROOT, env=env(**env_extra), capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise NotHeld(f"{' '.join(args[:4])}... failed with {result.returncode}: "
                      f"{result.stderr[-2000:]}")
    return result


def expect_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2 and exactly one ``error: ...`` line on stderr (no traceback) containing
    every needle; returns that line."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    if result.returncode != 2 or len(lines) != 1 or "Traceback" in result.stderr:
        raise NotHeld(f"expected one 'error:' line and exit 2, got exit {result.returncode} "
                      f"and stderr ending {result.stderr[-1500:]!r}")
    missing = [n for n in needles if n not in lines[0]]
    if missing:
        raise NotHeld(f"the error line {lines[0]!r} does not mention {missing}")
    return lines[0]


def expect_success(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 0, no traceback, every needle in stdout."""
    if result.returncode != 0 or "Traceback" in result.stderr:
        raise NotHeld(f"expected success, got exit {result.returncode}: "
                      f"{result.stderr[-1500:]!r}")
    missing = [n for n in needles if n not in result.stdout]
    if missing:
        raise NotHeld(f"stdout lacks {missing}: {result.stdout[-1500:]!r}")


def wait_for_line(process: subprocess.Popen, needle: str, timeout: float = 300) -> list[str]:
    """Reads the process's stdout until a line contains `needle`; the lines read so far."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                tail = "".join(lines)[-1500:] + process.stderr.read()[-1500:]
                raise NotHeld(f"the process ended ({process.returncode}) before printing "
                              f"{needle!r}: {tail}")
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise NotHeld(f"no line with {needle!r} within {timeout:.0f} s")


def send(process: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    os.killpg(process.pid, sig)


def checkpoint_steps(workdir: str) -> list[int]:
    """The step folders Orbax would see (digits only; `<step>.corrupt` is not one)."""
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())
