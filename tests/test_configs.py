"""Every config file imports, builds each of its presets, and yields a buildable model."""

import glob
import importlib.util
import os

import jax
import pytest

from conftest import REPO_ROOT
from medclip_jax import losses
from medclip_jax.errors import UserError
from medclip_jax.models import build_model

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "*.py")))
PRESETS = {"eval.py": ("demo", "tiny", "paper")}
TRAIN_PRESETS = ("demo", "tiny", "paper")


def load(path: str):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_files_are_found():
    names = {os.path.basename(p) for p in CONFIG_FILES}
    assert {"base.py", "clip.py", "eval.py"} <= names


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if not p.endswith("__init__.py")],
                         ids=os.path.basename)
def test_every_preset_builds(path):
    module = load(path)
    name = os.path.basename(path)
    for preset in PRESETS.get(name, TRAIN_PRESETS):
        config = module.get_config(preset)
        assert config is not None
        if "method" in config:
            assert config.method in losses.REGISTRY
            model_cfg = config.model.copy_and_resolve_references()
            if model_cfg.text.vocab_size <= 0:
                model_cfg.text.vocab_size = 1000
            model = build_model(model_cfg)
            size, length = model_cfg.image.image_size, model_cfg.text.max_len
            shapes = jax.eval_shape(
                lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, size, size, 3)),
                                   jax.numpy.zeros((1, length), "int32"),
                                   jax.numpy.ones((1, length), "int32")))
            assert "params" in shapes
    with pytest.raises(UserError, match="preset"):
        module.get_config("no_such_preset")
