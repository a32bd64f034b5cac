"""HF BertModel parity (PyTorch as the oracle), export round trip, and config.init selection."""

import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from helpers import lazy_import_or_skip
from medclip_jax import train
from medclip_jax.errors import UserError
from medclip_jax.models.text import BertTextEncoder
from medclip_jax.pretrained import hf_bert, init as init_lib

# PyTorch parity and training from imported weights: the slow tier.
pytestmark = pytest.mark.slow

torch = lazy_import_or_skip("torch")
transformers = lazy_import_or_skip("transformers")

# Sized like the `tiny` preset's text tower (width 32, depth 2, 2 heads, MLP 64, 16 tokens).
TINY_BERT = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=40, type_vocab_size=2,
                 hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)


def save_tiny_bert(folder: str, **overrides) -> "transformers.BertModel":
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**{**TINY_BERT, **overrides}))
    with torch.no_grad():  # LayerNorms and biases away from 1 / 0, so a mix-up shows.
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    try:
        model.save_pretrained(folder, safe_serialization=True)
    except TypeError:  # transformers versions without the keyword always write safetensors
        model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny_bert"))
    return folder, save_tiny_bert(folder)


def padded_batch(max_len: int = 12):
    rng = np.random.default_rng(1)
    lengths = [max_len, 7, 3, 1]
    ids = rng.integers(1, TINY_BERT["vocab_size"], (len(lengths), max_len)).astype(np.int32)
    mask = (np.arange(max_len)[None] < np.array(lengths)[:, None]).astype(np.int32)
    return ids * mask, mask


def torch_hidden(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long))
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_imported_bert_matches_pytorch_on_a_padded_batch(tiny_bert, pooling):
    folder, torch_model = tiny_bert
    params, fields = hf_bert.import_bert(folder, max_len=16)
    ids, mask = padded_batch()
    pooled, tokens = BertTextEncoder(**fields, pooling=pooling).apply({"params": params}, ids,
                                                                       mask)
    hidden = torch_hidden(torch_model, ids, mask)
    if pooling == "cls":
        expected = hidden[:, 0]
    else:
        w = mask[..., None].astype(np.float32)
        expected = (hidden * w).sum(1) / w.sum(1)
    np.testing.assert_allclose(np.asarray(pooled), expected, atol=1e-4, rtol=0)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(tokens)[real], hidden[real], atol=1e-4, rtol=0)


def test_export_round_trips_exactly_and_loads_in_pytorch(tiny_bert, tmp_path):
    folder, torch_model = tiny_bert
    params, fields = hf_bert.import_bert(folder)
    out = hf_bert.export_bert(params, fields, str(tmp_path / "export"))
    again, again_fields = hf_bert.import_bert(out)
    assert again_fields == fields
    assert jax.tree.structure(again) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    reloaded = transformers.BertModel.from_pretrained(out).eval()
    ids, mask = padded_batch()
    real = mask.astype(bool)
    np.testing.assert_allclose(torch_hidden(reloaded, ids, mask)[real],
                               torch_hidden(torch_model, ids, mask)[real], atol=1e-5)
    assert json.load(open(f"{out}/config.json"))["architectures"] == ["BertModel"]


def test_export_rejects_an_activation_bert_lacks(tiny_bert, tmp_path):
    params, fields = hf_bert.import_bert(tiny_bert[0])
    with pytest.raises(UserError, match="quick_gelu"):
        hf_bert.export_bert(params, {**fields, "activation": "quick_gelu"}, str(tmp_path))


def bert_train_config(data_dir: str, folder: str, **overrides):
    return tiny_config(data_dir, max_steps=1, **{
        "eval.every_steps": 0, "model.text.kind": "bert", "model.text.activation": "gelu",
        "model.text.layer_norm_eps": 1e-12, "model.text.pooling": "cls",
        "model.text.vocab_size": TINY_BERT["vocab_size"], "init.text": f"hf_bert:{folder}",
        **overrides})


def test_training_starts_from_the_imported_weights(tiny_data_dir, tiny_bert, tmp_path):
    folder, _ = tiny_bert
    run, checkpointer = train.setup(bert_train_config(tiny_data_dir, folder), str(tmp_path))
    expected, _ = hf_bert.import_bert(folder, max_len=16)
    got = run.state.params["text"]
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert int(run.state.step) == 0
    state, _ = run.train_step(run.state, next(iter(run.data_iter)), train.step_rng(0, 0))
    assert int(state.step) == 1
    checkpointer.close()


@pytest.mark.parametrize("overrides, message", [
    ({"model.text.width": 48, "model.text.mlp_dim": 96},
     r"config.model.text.width=48 does not match the checkpoint .* \(hidden_size -> 32\)"),
    ({"model.text.kind": "causal"}, r"config.model.text.kind='causal'"),
    ({"model.text.activation": "gelu_tanh"}, r"config.model.text.activation='gelu_tanh'"),
    ({"model.text.max_len": 64}, r"config.model.text.max_len=64 exceeds"),
    ({"init.text": "bert:/x"}, r"config.init.text='bert:/x': expected 'hf_bert:"),
    ({"init.image": "hf_bert:/x"}, r"hf_bert initialises the text tower only"),
])
def test_architecture_mismatch_is_one_line_naming_the_field(tiny_data_dir, tiny_bert, tmp_path,
                                                            overrides, message):
    config = bert_train_config(tiny_data_dir, tiny_bert[0], **overrides)
    with pytest.raises(UserError, match=message) as e:
        init_lib.apply_init({}, config)
    assert "\n" not in str(e.value)


def test_empty_init_keeps_the_params_and_an_empty_folder_names_init_clip(tiny_data_dir):
    config = tiny_config(tiny_data_dir)
    params = {"text": {"a": np.zeros(2)}}
    assert init_lib.apply_init(params, config) is params
    config.init.image = "hf_clip:"
    with pytest.raises(UserError, match=r"names no folder: set --config.init.clip=") as e:
        init_lib.apply_init(params, config)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory):
    """A random HF CLIPModel whose vision tower is the `tiny` preset's image tower."""
    pytest.importorskip("medclip_jax.pretrained.hf_clip")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=300, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=32)
    folder = str(tmp_path_factory.mktemp("tiny_clip"))
    transformers.CLIPModel(config).save_pretrained(folder)
    return folder


def test_init_image_from_hf_clip_replaces_the_image_tower(tiny_data_dir, tiny_clip_folder,
                                                          tmp_path):
    from medclip_jax.pretrained import hf_clip
    config = tiny_config(tiny_data_dir, max_steps=1, **{
        "eval.every_steps": 0, "init.image": f"hf_clip:{tiny_clip_folder}"})
    run, checkpointer = train.setup(config, str(tmp_path))
    expected, _ = hf_clip.import_clip(tiny_clip_folder, 32, 16)
    for key in ("image", "image_proj"):
        for a, b in zip(jax.tree.leaves(run.state.params[key]), jax.tree.leaves(expected[key])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    checkpointer.close()
    bad = tiny_config(tiny_data_dir, **{"init.image": f"hf_clip:{tiny_clip_folder}",
                                        "model.image.width": 48})
    with pytest.raises(UserError, match=r"config.model.image.width=48 does not match") as e:
        init_lib.apply_init({}, bad)
    assert "\n" not in str(e.value)
