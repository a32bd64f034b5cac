"""open_clip checkpoints: import against open_clip's own PyTorch models (the reference), export
round trips, and one-line errors on what our towers cannot take.

The references are built with open_clip 3.3 + timm (CPU torch, see requirements.txt and the
torchvision note in conftest.py): a tiny OpenAI-style CLIP (open_clip's ViT + causal text) and
a BiomedCLIP-style CustomTextCLIP (timm ``vit_tiny_patch16_224`` + an HF BERT text tower with an
MLP or linear head). Every parameter is perturbed from its init so LayerNorm scales, biases and
the split q/k/v are all exercised.
"""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from helpers import lazy_import_or_skip
from medclip_jax import train
from medclip_jax.errors import UserError
from medclip_jax.models import presets
from medclip_jax.pretrained import init as init_lib
from medclip_jax.pretrained import openclip

torch = lazy_import_or_skip("torch")
open_clip = lazy_import_or_skip("open_clip")
transformers = lazy_import_or_skip("transformers")

# PyTorch parity and training from imported weights: the slow tier.
pytestmark = pytest.mark.slow

NATIVE_CFG = {"embed_dim": 24, "quick_gelu": True,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                             "patch_size": 8},
              "text_cfg": {"context_length": 16, "vocab_size": 300, "width": 32, "heads": 2,
                           "layers": 2}}
BERT = dict(vocab_size=300, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=256, max_position_embeddings=64)


def perturb(model) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def save_folder(model, model_cfg: dict, folder: str) -> str:
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, "open_clip_model.safetensors"))
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": {}}, f)
    return folder


def native_model(model_cfg: dict):
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**model_cfg).eval()
    perturb(model)
    return model


def biomed_cfg(bert_folder: str, proj: str = "mlp",
               pooler: str = "cls_last_hidden_state_pooler") -> dict:
    return {"embed_dim": 24,
            "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224",
                           "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
                           "image_size": 224},
            "text_cfg": {"hf_model_name": bert_folder, "hf_tokenizer_name": bert_folder,
                         "hf_proj_type": proj, "hf_pooler_type": pooler, "context_length": 16,
                         "hf_model_pretrained": False}}


def biomed_model(model_cfg: dict):
    torch.manual_seed(0)
    model = open_clip.model.CustomTextCLIP(**model_cfg).eval()
    perturb(model)
    return model


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("bert_config"))
    transformers.BertConfig(**BERT).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    model = native_model(NATIVE_CFG)
    return model, save_folder(model, NATIVE_CFG, str(tmp_path_factory.mktemp("native")))


@pytest.fixture(scope="module")
def biomed(tmp_path_factory, bert_folder):
    cfg = biomed_cfg(bert_folder)
    model = biomed_model(cfg)
    return model, save_folder(model, cfg, str(tmp_path_factory.mktemp("biomed")))


def token_batch(vocab: int, eot: int | None, lengths=(5, 16, 9)) -> tuple[np.ndarray, np.ndarray]:
    """Ids with pad 0 after each text; `eot` (CLIP: the highest id) ends each text."""
    rng = np.random.default_rng(0)
    ids = np.zeros((len(lengths), 16), np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, vocab - 1, n)
        if eot is not None:
            ids[row, n - 1] = eot
    return ids, (np.arange(16)[None] < np.array(lengths)[:, None]).astype(np.int32)


def ours(params, model_cfg, images_nhwc, ids, mask):
    model = presets.build_model(model_cfg)
    img, _ = model.apply({"params": params}, jnp.asarray(images_nhwc), method=model.encode_image)
    txt, _ = model.apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask),
                         method=model.encode_text)
    return np.asarray(img), np.asarray(txt)


def theirs(model, images_nhwc, ids):
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy()))
        txt = model.encode_text(torch.from_numpy(ids))
    return img.numpy(), txt.numpy()


def images(size: int, count: int = 2) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(count, size, size, 3)).astype(np.float32)


def test_native_clip_matches_open_clip(native):
    model, folder = native
    params, cfg = openclip.import_open_clip(folder)
    assert (cfg.image.num_heads, cfg.image.activation, cfg.text.kind) == (2, "quick_gelu", "causal")
    ids, mask = token_batch(300, eot=299)
    x = images(32)
    for a, b in zip(ours(params, cfg, x, ids, mask), theirs(model, x, ids)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(float(params["logit_scale"]),
                               float(model.logit_scale.detach()), rtol=1e-6)


def test_biomedclip_layout_matches_open_clip(biomed):
    model, folder = biomed
    params, cfg = openclip.import_open_clip(folder)
    assert cfg.text_projection == "mlp" and cfg.projection == "linear"
    assert (cfg.image.width, cfg.image.num_heads, cfg.image.patch_bias, cfg.image.ln_pre) == \
        (192, 3, True, False)
    assert (cfg.text.kind, cfg.text.pooling, cfg.text.num_heads) == ("bert", "cls", 2)
    ids, mask = token_batch(300, eot=None)
    x = images(224)
    for a, b in zip(ours(params, cfg, x, ids, mask), theirs(model, x, ids)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_hf_text_with_mean_pooling_and_linear_head_and_no_local_bert_config(bert_folder,
                                                                           tmp_path, caplog):
    model = biomed_model(biomed_cfg(bert_folder, proj="linear", pooler="mean_pooler"))
    hub_name_cfg = biomed_cfg("microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                              proj="linear", pooler="mean_pooler")
    folder = save_folder(model, hub_name_cfg, str(tmp_path / "ckpt"))
    with caplog.at_level(logging.WARNING):
        params, cfg = openclip.import_open_clip(folder)
    assert "read from the tensor shapes with 2 heads" in caplog.text   # 128 / 64
    assert (cfg.text.pooling, cfg.text_projection) == ("mean", "linear")
    ids, mask = token_batch(300, eot=None)
    x = images(224, 1)
    for a, b in zip(ours(params, cfg, x, ids, mask), theirs(model, x, ids)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("which", ["native", "biomed"])
def test_export_round_trips_and_loads_into_open_clip(which, native, biomed, tmp_path):
    model, folder = {"native": native, "biomed": biomed}[which]
    params, cfg = openclip.import_open_clip(folder)
    out = openclip.export_open_clip(params, cfg, str(tmp_path / "out"))
    again, cfg2 = openclip.import_open_clip(out)
    assert cfg2.to_dict() == cfg.to_dict()
    assert jax.tree.structure(again) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The exported folder is a real open_clip checkpoint: open_clip builds and loads it.
    model_cfg = json.load(open(os.path.join(out, "open_clip_config.json")))["model_cfg"]
    if which == "biomed":
        model_cfg["text_cfg"]["hf_model_name"] = os.path.join(out, "text_config")
        rebuilt = open_clip.model.CustomTextCLIP(**model_cfg).eval()
    else:
        rebuilt = open_clip.model.CLIP(**model_cfg).eval()
    from safetensors.torch import load_file
    state = load_file(os.path.join(out, "open_clip_model.safetensors"))
    missing, unexpected = rebuilt.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    size = cfg.image.image_size
    ids, _ = token_batch(300, eot=299 if which == "native" else None)
    for a, b in zip(theirs(rebuilt, images(size), ids), theirs(model, images(size), ids)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_position_grid_is_resized_for_another_image_size(native):
    params, cfg = openclip.import_open_clip(native[1], image_size=48)
    assert params["image"]["pos_embed"].shape == (1 + 6 * 6, 32)
    assert cfg.image.image_size == 48
    presets.build_model(cfg)


def edited(folder: str, tmp_path, change) -> str:
    """A copy of `folder` with its model_cfg changed by `change`."""
    out = tmp_path / "edited"
    out.mkdir()
    for name in os.listdir(folder):
        if os.path.isfile(os.path.join(folder, name)):
            os.link(os.path.join(folder, name), out / name)
    config = json.load(open(os.path.join(folder, "open_clip_config.json")))
    change(config["model_cfg"])
    os.remove(out / "open_clip_config.json")
    (out / "open_clip_config.json").write_text(json.dumps(config))
    return str(out)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["vision_cfg"].update(ls_init_value=0.1), r"vision_cfg.ls_init_value=0.1 is not"),
    (lambda c: c["vision_cfg"].update(layers=[3, 4, 6, 3]), r"ResNet image towers"),
    (lambda c: c["vision_cfg"].update(pool_type="avg"), r"vision_cfg.pool_type='avg'"),
    (lambda c: c["text_cfg"].update(pool_type="last"), r"text_cfg.pool_type='last'"),
    (lambda c: c["text_cfg"].update(embed_cls=True), r"text_cfg.embed_cls=True"),
    (lambda c: c["vision_cfg"].update(width=48, head_width=16),
     r"tensor visual.conv1.weight has shape \(32, 3, 8, 8\), the config implies \(48, 3, 8, 8\)"),
    (lambda c: c.update(embed_dim=20), r"tensor visual.proj has shape \(32, 24\)"),
])
def test_native_config_problems_are_one_line(native, tmp_path, change, message):
    folder = edited(native[1], tmp_path, change)
    with pytest.raises(UserError, match=message) as e:
        openclip.import_open_clip(folder)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["vision_cfg"].update(timm_pool="avg"), r"timm_pool='avg' is not supported"),
    (lambda c: c["vision_cfg"].update(timm_model_name="convnext_base"),
     r"timm_model_name='convnext_base' is not supported"),
    (lambda c: c["vision_cfg"].update(timm_model_name="vit_small_patch16_224"),
     r"tensor visual.trunk.patch_embed.proj.weight has shape \(192, 3, 16, 16\), the config "
     r"implies \(384, 3, 16, 16\)"),
    (lambda c: c["text_cfg"].update(hf_pooler_type="cls_pooler"),
     r"hf_pooler_type='cls_pooler' is not supported"),
])
def test_biomedclip_config_problems_are_one_line(biomed, tmp_path, change, message):
    folder = edited(biomed[1], tmp_path, change)
    with pytest.raises(UserError, match=message) as e:
        openclip.import_open_clip(folder)
    assert "\n" not in str(e.value)


def test_bad_folders_are_one_line(tmp_path, native):
    with pytest.raises(UserError, match="no open_clip_config.json"):
        openclip.import_open_clip(str(tmp_path))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "open_clip_config.json").write_text(json.dumps({"model_cfg": NATIVE_CFG}))
    (pickled / "open_clip_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UserError, match=r"never unpickled here: convert them to "
                                        r"open_clip_model.safetensors"):
        openclip.import_open_clip(str(pickled))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 3}}')
    with pytest.raises(UserError, match="needs model_cfg with vision_cfg and text_cfg"):
        openclip.import_open_clip(str(tmp_path / "bad"))


def test_unused_tensors_are_listed_in_one_warning(native, tmp_path, caplog):
    from safetensors.numpy import load_file, save_file as save_numpy
    folder = edited(native[1], tmp_path, lambda c: None)
    weights = os.path.join(folder, "open_clip_model.safetensors")
    tensors = load_file(weights)
    os.remove(weights)
    save_numpy({**tensors, "visual.extra": np.zeros(2, np.float32)}, weights)
    with caplog.at_level(logging.WARNING):
        openclip.import_open_clip(folder)
    assert "1 tensor(s) not used by the model: visual.extra" in caplog.text


def biomed_train_config(data_dir: str, folder: str, **overrides):
    """The tiny preset shaped like the BiomedCLIP fixture (both towers from the folder)."""
    _, cfg = openclip.import_open_clip(folder)
    config = tiny_config(data_dir, max_steps=1, **{"eval.every_steps": 0})
    config.model.image = cfg.image
    config.model.text = cfg.text
    for key in ("embed_dim", "text_projection", "projection_hidden_dim",
                "projection_activation"):
        config.model[key] = cfg[key]
    config.init.image = config.init.text = f"open_clip:{folder}"
    for key, value in overrides.items():
        config[key] = value
    return config


def test_training_starts_from_an_open_clip_folder(tiny_data_dir, biomed, tmp_path):
    folder = biomed[1]
    config = biomed_train_config(tiny_data_dir, folder)
    config.model.image.image_size = 32   # the tiny data's size: the position grid is resized
    expected, _ = openclip.import_open_clip(folder, image_size=32, max_len=16)
    run, checkpointer = train.setup(config, str(tmp_path))
    for key in ("image", "image_proj", "text", "text_proj", "logit_scale"):
        for a, b in zip(jax.tree.leaves(run.state.params[key]), jax.tree.leaves(expected[key])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    state, _ = run.train_step(run.state, next(iter(run.data_iter)), train.step_rng(0, 0))
    assert int(state.step) == 1
    checkpointer.close()


def test_a_head_of_another_kind_stays_random_with_a_warning(tiny_data_dir, biomed, caplog):
    config = biomed_train_config(tiny_data_dir, biomed[1])
    config.model.text_projection = "linear"
    config.init.logit_scale = False
    with caplog.at_level(logging.WARNING):
        subtrees = init_lib.imported_subtrees(config)
    assert set(subtrees) == {"image", "image_proj", "text"}
    assert "text_proj keeps its random init" in caplog.text
    config.model.text_projection = "mlp"
    config.model.projection_hidden_dim = 100
    with pytest.raises(UserError, match=r"config.model.projection_hidden_dim=100 does not match"):
        init_lib.imported_subtrees(config)


def test_import_weights_writes_a_step0_workdir_the_evals_load(tiny_data_dir, biomed, tmp_path):
    """evals/import_weights.py (`step0.write_step0`): the BiomedCLIP-layout folder through a
    config whose model is the tiny preset's; the architecture comes from the folder, the eval loader gets open_clip's
    model (same image and text embeddings)."""
    from medclip_jax.evaluation import model_view
    from medclip_jax.pretrained import step0
    model, folder = biomed
    config = tiny_config(tiny_data_dir)
    config.init.image = config.init.text = f"open_clip:{folder}"
    config.model.image.image_size = 224
    workdir = str(tmp_path / "step0")
    reads = []
    real_import = init_lib.import_dual
    with pytest.MonkeyPatch.context() as patch:   # the folder is read once, not twice
        patch.setattr(init_lib, "import_dual", lambda *a: reads.append(a) or real_import(*a))
        saved = step0.write_step0(config, workdir)
    assert len(reads) == 1
    assert (saved["model"]["text"]["kind"], saved["model"]["text_projection"]) == ("bert", "mlp")
    loaded = model_view.from_checkpoint(workdir)
    assert loaded.step == 0
    ids, mask = token_batch(300, eot=None)
    x = images(224, 1)
    got = ours(jax.device_get(loaded.params), loaded.train_config.model, x, ids, mask)
    for a, b in zip(got, theirs(model, x, ids)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(UserError, match="already has checkpoints"):
        step0.write_step0(config, workdir)
    config.init.image = config.init.text = ""
    with pytest.raises(UserError, match="config.init names no weights"):
        step0.write_step0(config, str(tmp_path / "none"))


def test_import_weights_command_line_error_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys
    from conftest import REPO_ROOT
    result = subprocess.run(
        [sys.executable, "-m", "evals.import_weights", "--config", "configs/clip.py:tiny",
         "--workdir", str(tmp_path / "w")], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: config.init names no weights (config.init.image / config.init.text / "
        "config.init.clip): there is nothing to import")
