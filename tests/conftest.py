"""Test session set-up: 8 fake CPU devices so sharding is exercised without accelerators."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import pytest  # noqa: E402


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
