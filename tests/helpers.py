"""Shared test helpers: finite differences, and running the real binaries as subprocesses."""

import importlib.util
import os
import subprocess
import sys
import types

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(num_devices: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a binary a test starts: `num_devices` fake CPU devices, plus the XLA
    flags conftest.py set for the tests (its compile-time settings)."""
    env = dict(os.environ)
    inherited = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                         if not flag.startswith("--xla_force_host_platform_device_count"))
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT, PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices} {inherited}".strip())
    env.update(extra)
    return env


def tiny_train_args(data_dir: str, workdir: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "medclip_jax.main", "--config", "configs/clip.py:tiny",
            "--workdir", workdir, f"--config.data.data_dir={data_dir}", *overrides]


def run(args: list[str], env: dict[str, str], timeout: float = 300
        ) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_in_process(run_fn, argv: list[str], monkeypatch) -> None:
    """An eval binary's `run()` with its flags parsed from `argv`, in this process.

    config_flags reads the ``--config.x`` overrides from sys.argv, hence the patch; parsing
    defines one flag per override, removed again afterwards so that a later test can parse."""
    from absl import flags
    monkeypatch.setattr(sys, "argv", argv)
    before = set(flags.FLAGS)
    flags.FLAGS(argv)
    try:
        run_fn()
    finally:
        flags.FLAGS.unparse_flags()
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)


def final_params(workdir: str) -> dict[str, np.ndarray]:
    """The latest checkpoint's params as flat numpy arrays keyed by path (read with Orbax)."""
    import jax
    import orbax.checkpoint as ocp
    from medclip_jax.sharding import path_to_str

    directory = os.path.join(workdir, "checkpoints")
    manager = ocp.CheckpointManager(directory, item_handlers={
        "params": ocp.StandardCheckpointHandler()})
    step = manager.latest_step()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          manager.item_metadata(step)["params"])
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))
    manager.close()
    leaves = jax.tree_util.tree_flatten_with_path(restored["params"])[0]
    return {"step": step, **{path_to_str(p): np.asarray(x) for p, x in leaves}}


def assert_params_close(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    assert a["step"] == b["step"]
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


def set_dotted(config, key: str, value) -> None:
    """config["a.b.c"] = value for a nested ConfigDict (or dict) and a dotted key."""
    *parents, leaf = key.split(".")
    for part in parents:
        config = config[part]
    config[leaf] = value


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar float64 function: an independent gradient."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (f(up) - f(down)) / (2 * eps)
    return grad


class LazyModule(types.ModuleType):
    """Stands for the module of its name and imports it at the first public attribute asked
    for. Private names do not import: pytest probes every module-level object for some
    (`__test__`, `_pytestfixturefunction`, ...) while collecting."""

    def __getattr__(self, attr: str):
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self.__name__), attr)


def lazy_import_or_skip(name: str) -> types.ModuleType:
    """`name`, imported at its first use; the calling module is skipped when it is not
    installed (as with pytest.importorskip).

    For modules whose tests are all in the slow tier: collection imports every test module in
    every pytest process, and torch/open_clip cost seconds each there although the fast tier
    then deselects every test that uses them."""
    import pytest
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"could not import {name!r}", allow_module_level=True)
    return LazyModule(name)
