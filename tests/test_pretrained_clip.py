"""HF CLIPModel import / export: a tiny random transformers CLIPModel (PyTorch, the oracle) saved
as safetensors gives the same image / text features and logit scale through our DualEncoder;
position grids are resized for another image size; bad shapes fail with one line; export
round-trips exactly and loads back into transformers."""

import json
import logging

import jax
import numpy as np
import pytest

from medclip_jax.errors import UserError
from medclip_jax.models import presets
from medclip_jax.pretrained import hf_clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, EOS, MAX_LEN = 100, 99, 16


def tiny_clip():
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=MAX_LEN, eos_token_id=EOS, bos_token_id=98,
                         pad_token_id=0),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=24, logit_scale_init_value=2.3)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm params, so a swapped scale/bias shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("clip"))
    model = tiny_clip()
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


def inputs():
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)  # NCHW for torch
    ids = np.zeros((2, 10), np.int64)
    mask = np.zeros((2, 10), np.int64)
    for row, length in enumerate((10, 6)):  # every text ends with EOS; row 1 is padded
        ids[row, :length - 1] = rng.integers(1, EOS - 2, length - 1)
        ids[row, length - 1] = EOS
        mask[row, :length] = 1
    return pixels, ids, mask


def torch_features(model, pixels, ids, mask):
    with torch.no_grad():
        image = model.get_image_features(pixel_values=torch.from_numpy(pixels))
        text = model.get_text_features(input_ids=torch.from_numpy(ids),
                                       attention_mask=torch.from_numpy(mask))
        # transformers 5 may return a model output rather than a tensor
        image = getattr(image, "pooler_output", image)
        text = getattr(text, "pooler_output", text)
        return image.numpy(), text.numpy(), float(model.logit_scale.exp())


def our_features(params, cfg, pixels, ids, mask):
    model = presets.build_model(cfg)
    out = model.apply({"params": params}, pixels.transpose(0, 2, 3, 1), ids.astype(np.int32),
                      mask.astype(np.int32))
    return np.asarray(out.image_emb), np.asarray(out.text_emb), float(out.logit_scale)


@pytest.mark.slow
def test_parity_with_pytorch(hf_folder):
    folder, model = hf_folder
    params, cfg = hf_clip.import_clip(folder)
    assert cfg.image.image_size == 32 and cfg.text.max_len == MAX_LEN and cfg.embed_dim == 24
    assert cfg.image.activation == cfg.text.activation == "quick_gelu"
    ours = our_features(params, cfg, *inputs())
    theirs = torch_features(model, *inputs())
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-4, rtol=1e-4)
    assert abs(ours[2] - theirs[2]) < 1e-4


def test_param_tree_matches_a_fresh_model(hf_folder):
    from medclip_jax.models.dual_encoder import init_params
    params, cfg = hf_clip.import_clip(hf_folder[0], max_len=8)
    fresh = jax.eval_shape(lambda: init_params(presets.build_model(cfg), jax.random.PRNGKey(0),
                                               cfg.image.image_size, cfg.text.max_len))
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, fresh)
    assert params["text"]["pos_embed"].shape == (8, 32)


def test_unused_tensors_in_one_warning(hf_folder, tmp_path, caplog):
    from safetensors.numpy import load_file, save_file
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "config.json").write_text(open(f"{hf_folder[0]}/config.json").read())
    tensors = load_file(f"{hf_folder[0]}/model.safetensors")
    tensors["text_model.embeddings.position_ids"] = np.arange(MAX_LEN)[None]
    tensors["extra.head.weight"] = np.zeros((2, 2), np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    with caplog.at_level(logging.WARNING):
        hf_clip.import_clip(str(folder))
    warnings = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(warnings) == 1
    assert "extra.head.weight" in warnings[0] and "position_ids" in warnings[0]


def test_interpolates_positions_for_another_image_size(hf_folder):
    folder, _ = hf_folder
    base, _ = hf_clip.import_clip(folder)
    params, cfg = hf_clip.import_clip(folder, image_size=48)
    assert cfg.image.image_size == 48
    pos = params["image"]["pos_embed"]
    assert pos.shape == (1 + 6 * 6, 32)
    np.testing.assert_array_equal(pos[0], base["image"]["pos_embed"][0])  # class token kept
    pixels, ids, mask = inputs()
    pixels = np.random.default_rng(1).normal(size=(2, 3, 48, 48)).astype(np.float32)
    image_emb, _, _ = our_features(params, cfg, pixels, ids, mask)
    assert image_emb.shape == (2, 24) and np.isfinite(image_emb).all()


def test_resize_positions_keeps_a_constant_grid():
    table = np.ones((1 + 4, 3), np.float32)
    table[0] = 7.0
    out = hf_clip.resize_positions(table, 2, 3)
    assert out.shape == (10, 3)
    np.testing.assert_allclose(out[1:], 1.0, atol=1e-6)
    assert (out[0] == 7.0).all()


@pytest.mark.parametrize("old,new", [(14, 16), (14, 24), (16, 14), (7, 3), (2, 5)])
def test_resize_positions_is_pytorchs_bicubic(old, new):
    """The reference: F.interpolate(bicubic, align_corners=False), as HF's and open_clip's
    position-embedding interpolation call it."""
    table = np.random.default_rng(old * new).normal(size=(1 + old * old, 6)).astype(np.float32)
    grid = torch.from_numpy(table[1:].reshape(1, old, old, 6)).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid.double(), size=(new, new), mode="bicubic",
                                               align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(-1, 6).numpy()
    out = hf_clip.resize_positions(table, old, new)
    np.testing.assert_allclose(out[1:], expected, atol=1e-5)
    np.testing.assert_array_equal(out[0], table[0])


def test_shape_mismatch_names_the_tensor_and_both_shapes(hf_folder, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    config = json.loads(open(f"{hf_folder[0]}/config.json").read())
    config["projection_dim"] = 20
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(open(f"{hf_folder[0]}/model.safetensors",
                                                    "rb").read())
    with pytest.raises(UserError) as e:
        hf_clip.import_clip(str(folder))
    message = str(e.value)
    assert "\n" not in message
    assert "visual_projection.weight" in message and "(24, 32)" in message \
        and "(20, 32)" in message


def test_bad_requests_fail_with_one_line(hf_folder):
    with pytest.raises(UserError, match="max_len 20 exceeds"):
        hf_clip.import_clip(hf_folder[0], max_len=20)
    with pytest.raises(UserError, match="not a multiple"):
        hf_clip.import_clip(hf_folder[0], image_size=36)


def test_export_round_trip_and_transformers_loads_it(hf_folder, tmp_path):
    folder, model = hf_folder
    params, cfg = hf_clip.import_clip(folder)
    out = str(tmp_path / "exported")
    hf_clip.export_clip(params, cfg, out)
    again, cfg2 = hf_clip.import_clip(out)
    assert cfg2.image.to_dict() == cfg.image.to_dict()
    assert cfg2.text.to_dict() == cfg.text.to_dict() and cfg2.embed_dim == cfg.embed_dim
    assert jax.tree.structure(again) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    reloaded = transformers.CLIPModel.from_pretrained(out).eval()
    theirs = torch_features(reloaded, *inputs())
    original = torch_features(model, *inputs())
    np.testing.assert_allclose(theirs[0], original[0], atol=1e-6)
    np.testing.assert_allclose(theirs[1], original[1], atol=1e-6)


def test_export_refuses_a_non_clip_architecture(hf_folder, tmp_path):
    params, cfg = hf_clip.import_clip(hf_folder[0])
    cfg.projection = "mlp"
    with pytest.raises(UserError, match="projection heads .*'mlp'"):
        hf_clip.export_clip(params, cfg, str(tmp_path / "x"))


def write_clip_tokenizer(folder: str) -> None:
    """The real CLIP BPE tokenizer (vocab.json + merges.txt, HF layout), rebuilt from the merges
    file open_clip ships: 256 byte symbols, the same with ``</w>``, 48894 merges, then
    ``<|startoftext|>`` = 49406 and ``<|endoftext|>`` = 49407, as in openai/clip-vit-*."""
    import gzip
    import os
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = transformers.CLIPTokenizer(vocab=os.path.join(folder, "vocab.json"),
                                           merges=os.path.join(folder, "merges.txt"))
    tokenizer.save_pretrained(folder)


@pytest.mark.slow
def test_paper_preset_starts_both_towers_and_the_tokenizer_from_one_clip_folder(
        tiny_data_dir, tmp_path):
    """`configs/clip.py:paper --config.init.clip=<folder>` with the model shrunk to a tiny CLIP:
    the towers, projections and logit scale are the folder's, the tokenizer is CLIP's BPE."""
    from configs import clip
    from medclip_jax import train
    from medclip_jax.data import tokenizers
    folder = str(tmp_path / "clip")
    torch.manual_seed(0)
    transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=24)).save_pretrained(folder)
    write_clip_tokenizer(folder)
    expected, model_cfg = hf_clip.import_clip(folder, image_size=32, max_len=16)
    config = clip.get_config("paper")
    config.init.clip = folder
    config.model = model_cfg
    config.data.data_dir = tiny_data_dir
    config.data.train_mixture = "synthetic_medical@tiny/train"
    config.data.caption_field = "caption"
    config.batch_size, config.max_steps, config.eval.every_steps = 16, 1, 0
    run, checkpointer = train.setup(config, str(tmp_path / "run"))
    for key in ("image", "image_proj", "text", "text_proj", "logit_scale"):
        for a, b in zip(jax.tree.leaves(run.state.params[key]), jax.tree.leaves(expected[key])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    text = ["Frontal chest X-ray: no acute cardiopulmonary process."]
    ids, mask = tokenizers.load_tokenizer(config.data.tokenizer)(text, 16)
    assert run.tokenizer.vocab_size == 49408
    import open_clip   # CLIP's own tokenizer on the same merges: the same ids
    reference = open_clip.tokenizer.SimpleTokenizer()(text, context_length=16).numpy()
    np.testing.assert_array_equal(ids * mask, reference)
    assert ids[0, 0] == 49406 and ids[0, int(mask[0].sum()) - 1] == 49407
    state, _ = run.train_step(run.state, next(iter(run.data_iter)), train.step_rng(0, 0))
    assert int(state.step) == 1
    checkpointer.close()
