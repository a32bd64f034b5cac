"""Every config file imports, builds each of its presets, and yields a buildable model."""

import glob
import importlib.util
import os

import jax
import pytest

from conftest import REPO_ROOT
from medclip_jax import methods
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
            assert config.method in methods.registry()
            model_cfg = config.model.copy_and_resolve_references()
            if model_cfg.text.vocab_size <= 0:
                model_cfg.text.vocab_size = 1000
            model = build_model(model_cfg, config.method)
            size, length = model_cfg.image.image_size, model_cfg.text.max_len
            shapes = jax.eval_shape(
                lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, size, size, 3)),
                                   jax.numpy.zeros((1, length), "int32"),
                                   jax.numpy.ones((1, length), "int32")))
            assert "params" in shapes
    with pytest.raises(UserError, match="preset"):
        module.get_config("no_such_preset")


def parse_flags(*argv: str):
    """The config as `python -m medclip_jax.main` would parse these flags."""
    from absl import flags
    from ml_collections import config_flags
    values = flags.FlagValues()
    argv = ["main", *argv]
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config


def test_paper_preset_is_the_benchmark_setup_starting_from_one_clip_folder():
    config = parse_flags(f"--config={REPO_ROOT}/configs/clip.py:paper",
                         "--config.init.clip=/models/clip-vit-base-patch16")
    assert config.init.image == config.init.text == "hf_clip:/models/clip-vit-base-patch16"
    assert config.data.tokenizer == "hf:/models/clip-vit-base-patch16"
    model = config.model
    assert (model.image.image_size, model.image.patch_size, model.image.width,
            model.image.depth, model.text.max_len, model.text.width, model.embed_dim) == \
        (224, 16, 768, 12, 77, 512, 512)
    optim = config.optim
    assert (config.batch_size, optim.name, optim.learning_rate, optim.b1, optim.b2, optim.eps,
            optim.weight_decay, optim.end_lr_fraction) == (512, "adamw", 5e-5, 0.9, 0.98, 1e-6,
                                                           0.1, 0.0)
    assert optim.lr_multipliers == ()


def test_paper_preset_without_the_clip_folder_fails_at_start_up_naming_the_flag():
    from medclip_jax import train
    config = parse_flags(f"--config={REPO_ROOT}/configs/clip.py:paper")
    with pytest.raises(UserError, match=r"names no folder: set --config.init.clip=") as e:
        train.validate_config(config)
    assert "\n" not in str(e.value)
    # A random-init paper run unlinks the towers and names its own tokenizer.
    config = parse_flags(f"--config={REPO_ROOT}/configs/clip.py:paper", "--config.init.image=",
                         "--config.init.text=", "--config.data.tokenizer=hf:/models/clip")
    train.validate_config(config)
    assert (config.init.image, config.init.text) == ("", "")


@pytest.mark.parametrize("method", methods.names())
@pytest.mark.parametrize("lock,rules", [
    ("none", ()), ("tower", ((r"^image/", 0.0),)),
    ("4", ((r"^image/(patch_embed|cls_token|pos_embed|ln_pre|block_0|block_1|block_2|block_3)"
            r"(/|$)", 0.0),))])
def test_every_method_takes_the_transfer_presets(method, lock, rules):
    config = parse_flags(f"--config={REPO_ROOT}/configs/{method}.py:paper,lock={lock}",
                         "--config.init.clip=/models/clip")
    assert tuple(tuple(r) for r in config.optim.lr_multipliers) == rules
    assert config.init.image == "hf_clip:/models/clip"


def test_siglip_keeps_its_own_logit_scale_and_bias_when_starting_from_clip():
    assert load(os.path.join(REPO_ROOT, "configs", "siglip.py")).get_config("paper") \
        .init.logit_scale is False
    assert load(os.path.join(REPO_ROOT, "configs", "clip.py")).get_config("paper") \
        .init.logit_scale is True


def test_text_option_takes_the_bert_architecture_tokenizer_and_weights_from_the_folder():
    from medclip_jax.data import tokenizers
    config = parse_flags(f"--config={REPO_ROOT}/configs/clip.py:demo,text=minilm")
    text = config.model.text
    assert (text.kind, text.width, text.depth, text.num_heads, text.mlp_dim, text.vocab_size,
            text.activation, text.pooling, text.max_len) == \
        ("bert", 384, 6, 12, 1536, 30522, "gelu", "mean", 32)
    assert config.data.tokenizer == "minilm"
    assert config.init.text == f"hf_bert:{tokenizers.minilm_folder()}"
    control = parse_flags(f"--config={REPO_ROOT}/configs/clip.py:demo,text=minilm",
                          "--config.init.text=")
    assert control.init.text == "" and control.model.text.to_dict() == text.to_dict()


@pytest.mark.parametrize("arg,message", [
    ("demo,freeze=3", r"config argument 'freeze=3': expected lock="),
    ("demo,lock=13", r"lock='13': choose tower, all, none or a block count in \[0, 2\]"),
    ("demo,text=bert", r"text='bert': expected text=minilm or text=hf_bert:"),
    ("demo,text=hf_bert:/nowhere", r"/nowhere: not a folder"),
])
def test_bad_config_options_are_one_line(arg, message):
    with pytest.raises(UserError, match=message) as e:
        load(os.path.join(REPO_ROOT, "configs", "clip.py")).get_config(arg)
    assert "\n" not in str(e.value)
