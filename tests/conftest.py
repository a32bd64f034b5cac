"""Test session set-up: 8 fake CPU devices so sharding is exercised without accelerators."""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run, shared by the xdist processes and every
# binary the tests start (they inherit the environment): many tests compile the same tiny train
# and embedding steps, and a cache hit replaces a compile of seconds by a read of milliseconds.
# JAX_COMPILATION_CACHE_DIR="" turns it off.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(REPO_ROOT, ".pytest_cache", "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The tests' programs are tiny, so compiling them costs far more than running them: LLVM at -O0
# cuts the compile of a tiny train step about 4x (56 s -> 15 s on this 2-core machine) and a
# whole 48-step method run's CPU time by a third. Inherited by every binary a test starts
# (helpers.subprocess_env); a flag the caller's XLA_FLAGS sets already wins.
# XLA's new CPU fusion emitters are slower to compile: the classic ones cut a tiny train step's
# compile by a fifth to a third (CLIP 5.6 -> 4.0 s, DeCLIP 14.1 -> 11.1 s on 8 fake devices)
# at the same step time.
TEST_XLA_FLAGS = {"--xla_backend_optimization_level": "0",
                  "--xla_cpu_use_fusion_emitters": "false"}
for flag, value in TEST_XLA_FLAGS.items():
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={value}".strip()
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import pytest  # noqa: E402


class TorchvisionOpsShim:
    """Lets torchvision import next to the CPU torch of requirements.txt.

    Its PyPI wheel is a CUDA build: the C ops do not load, and the import then fails while
    registering fake kernels for ``nms`` and ``qnms`` ("operator torchvision::nms does not
    exist"). transformers, timm and open_clip (the weight-import oracles) import torchvision but
    never call its ops, so on the first import of torchvision this defines those two schemas.
    Costs nothing in runs that never import it.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            from importlib import metadata
            import torch
            if "+cpu" in torch.__version__ and "+cpu" not in metadata.version("torchvision"):
                library = torch.library.Library("torchvision", "FRAGMENT")
                for op in ("nms", "qnms"):
                    library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) "
                                   f"-> Tensor")
                TorchvisionOpsShim.library = library  # keeps the definitions alive
        return None


sys.meta_path.insert(0, TorchvisionOpsShim())


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
    """The `tiny` synthetic dataset, built once per test session (TFDS data_dir root)."""
    from data_prep import synthetic_medical
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    synthetic_medical.build(data_dir, "tiny")
    return data_dir


def tiny_config(data_dir: str, **overrides):
    """The CLIP `tiny` preset pointed at a test data_dir, with dotted-key overrides."""
    from configs import clip
    config = clip.get_config("tiny")
    config.data.data_dir = data_dir
    from helpers import set_dotted
    for key, value in overrides.items():
        set_dotted(config, key, value)
    return config
