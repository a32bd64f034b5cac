"""Model towers: shapes, masking, pooling, dtypes, param names, param count and config errors."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from medclip_jax.errors import UserError
from medclip_jax.models import (DualEncoder, EncoderOutputs, build_model, dummy_inputs,
                                init_params, model_config)
from medclip_jax.models import layers
from medclip_jax.models.text import BertTextEncoder, CausalTextTransformer

B, L, IMAGE = 3, 16, 32


def tiny_config(kind: str = "causal", pooling: str = "eos", **model_overrides
                ) -> ml_collections.ConfigDict:
    cfg = model_config("tiny")
    cfg.text.kind = kind
    cfg.text.pooling = pooling
    cfg.update(model_overrides)
    return cfg


def text_inputs(lengths: tuple[int, ...], total: int = L, seed: int = 0
                ) -> tuple[jax.Array, jax.Array]:
    """Right-padded ids with random ids (not zeros) at the padding, to prove they are ignored."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 500, size=(len(lengths), total)).astype(np.int32)
    mask = (np.arange(total)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return jnp.asarray(ids), jnp.asarray(mask)


def images(seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (B, IMAGE, IMAGE, 3))


def random_params(model, *init_args, seed: int = 0):
    """Params of the right tree and shapes, drawn in numpy: no XLA compile of the initialisers.

    Kernels get std 1/sqrt(fan_in) so activations stay O(1); LayerNorm scales are 1.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), *init_args)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "scale":
            return jnp.ones(leaf.shape, jnp.float32)
        if name == "logit_scale":
            return jnp.float32(math.log(1 / 0.07))
        std = 1 / math.sqrt(math.prod(leaf.shape[:-1])) if name == "kernel" else 0.5
        return jnp.asarray(rng.normal(0.0, std, leaf.shape), jnp.float32)

    return jax.tree.map_with_path(draw, shapes)


def model_params(model, seed: int = 0):
    return random_params(model, *dummy_inputs(IMAGE, L), seed=seed)["params"]


def abstract_params(model):
    return jax.eval_shape(lambda rng: init_params(model, rng, IMAGE, L), jax.random.key(0))


def flat_names(params) -> set[str]:
    return {"/".join(k) for k in traverse_util.flatten_dict(params)}


def tower(kind: str, pooling: str, **overrides):
    common = dict(vocab_size=512, max_len=L, width=32, depth=2, num_heads=2, mlp_dim=64,
                  pooling=pooling)
    common.update(overrides)
    if kind == "causal":
        return CausalTextTransformer(**common)
    return BertTextEncoder(**common, activation="gelu", layer_norm_eps=1e-12)


@pytest.fixture(scope="module")
def tower_params():
    ids, mask = text_inputs((L,))
    return {kind: random_params(tower(kind, "eos"), ids, mask, seed=1)
            for kind in ("causal", "bert")}


@pytest.mark.parametrize("kind,pooling", [("causal", "eos"), ("bert", "cls"), ("bert", "mean")])
def test_tiny_shapes(kind, pooling):
    model = build_model(tiny_config(kind, pooling))
    params = model_params(model)
    ids, mask = text_inputs((5, 16, 1))
    out = model.apply({"params": params}, images(), ids, mask)
    assert isinstance(out, EncoderOutputs)
    assert out.image_emb.shape == (B, 32) and out.text_emb.shape == (B, 32)
    assert out.image_tokens.shape == (B, (IMAGE // 8) ** 2, 32)
    assert out.text_tokens.shape == (B, L, 32)
    assert out.text_mask.shape == (B, L) and out.text_mask.dtype == jnp.int32
    assert out.logit_scale.shape == () and out.logit_scale.dtype == jnp.float32
    for leaf in (out.image_emb, out.text_emb, out.image_tokens, out.text_tokens):
        assert leaf.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(leaf)))

    # Each tower alone, through the full param tree (what eval does).
    emb, tokens = model.apply({"params": params}, images(), method=DualEncoder.encode_image)
    np.testing.assert_allclose(emb, out.image_emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tokens, out.image_tokens, rtol=1e-5, atol=1e-6)
    emb, tokens = model.apply({"params": params}, ids, mask, method=DualEncoder.encode_text)
    np.testing.assert_allclose(emb, out.text_emb, rtol=1e-5, atol=1e-6)


def test_eos_pooling_picks_last_real_token(tower_params):
    ids, mask = text_inputs((4, 16, 9))
    pooled, tokens = tower("causal", "eos").apply(tower_params["causal"], ids, mask)
    for row, length in enumerate((4, 16, 9)):
        np.testing.assert_array_equal(pooled[row], tokens[row, length - 1])


def test_causal_mask_hides_later_tokens(tower_params):
    ids, mask = text_inputs((L,))
    changed = ids.at[:, 10].set((ids[:, 10] + 7) % 500)
    _, tokens = tower("causal", "eos").apply(tower_params["causal"], ids, mask)
    _, tokens2 = tower("causal", "eos").apply(tower_params["causal"], changed, mask)
    np.testing.assert_allclose(tokens[:, :10], tokens2[:, :10], rtol=1e-6, atol=1e-6)
    assert not np.allclose(tokens[:, 10:], tokens2[:, 10:], atol=1e-4)


def test_bert_is_bidirectional(tower_params):
    ids, mask = text_inputs((L,))
    changed = ids.at[:, 10].set((ids[:, 10] + 7) % 500)
    _, tokens = tower("bert", "cls").apply(tower_params["bert"], ids, mask)
    _, tokens2 = tower("bert", "cls").apply(tower_params["bert"], changed, mask)
    assert not np.allclose(tokens[:, :10], tokens2[:, :10], atol=1e-4)


@pytest.mark.parametrize("kind,pooling", [("causal", "eos"), ("bert", "cls"), ("bert", "mean")])
def test_padding_does_not_change_features(tower_params, kind, pooling):
    lengths = (3, 7)
    short_ids, short_mask = text_inputs(lengths, total=8, seed=1)
    long_ids, long_mask = text_inputs(lengths, total=L, seed=2)  # other garbage in the padding
    long_ids = long_ids.at[:, :8].set(jnp.where(short_mask == 1, short_ids, long_ids[:, :8]))
    model = tower(kind, pooling)
    pooled_s, tokens_s = model.apply(tower_params[kind], short_ids, short_mask)
    pooled_l, tokens_l = model.apply(tower_params[kind], long_ids, long_mask)
    np.testing.assert_allclose(pooled_s, pooled_l, rtol=1e-5, atol=1e-5)
    for row, length in enumerate(lengths):
        np.testing.assert_allclose(tokens_s[row, :length], tokens_l[row, :length],
                                   rtol=1e-5, atol=1e-5)


def test_all_padding_row_is_finite(tower_params):
    """Eval pads its last batch with empty records; they must not produce NaN."""
    ids, mask = text_inputs((0, 4))
    for kind, pooling in (("causal", "eos"), ("bert", "mean")):
        pooled, tokens = tower(kind, pooling).apply(tower_params[kind], ids, mask)
        assert bool(jnp.all(jnp.isfinite(pooled))) and bool(jnp.all(jnp.isfinite(tokens)))


def naive_attention(x, p, num_heads, mask):
    """Textbook multi-head attention in numpy: per head softmax(q k^T / sqrt(d)) v (a query
    that sees no key averages every value)."""
    x = np.asarray(x, np.float64)
    proj = {n: x @ np.asarray(p[n]["kernel"]) + np.asarray(p[n]["bias"])
            for n in ("query", "key", "value")}
    batch, length, width = x.shape
    d = width // num_heads
    out = np.zeros_like(x)
    for b in range(batch):
        for h in range(num_heads):
            sl = slice(h * d, (h + 1) * d)
            q, k, v = (proj[n][b, :, sl] for n in ("query", "key", "value"))
            logits = q @ k.T / math.sqrt(d)
            logits = np.where(mask[b], logits, -np.inf)
            logits[~mask[b].any(-1)] = 0.0   # no visible key: uniform weights
            w = np.exp(logits - logits.max(-1, keepdims=True))
            out[b, :, sl] = (w / w.sum(-1, keepdims=True)) @ v
    return out @ np.asarray(p["out"]["kernel"]) + np.asarray(p["out"]["bias"])


@pytest.mark.parametrize("causal, key_mask", [
    (True, [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    (False, [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    (False, [[1, 0, 1, 1, 0], [0, 0, 0, 0, 0]]),   # holes, and a row with no visible key
])
def test_attention_matches_naive_reference(causal, key_mask):
    """`jax.nn.dot_product_attention` (the XLA path) and the explicit softmax that attention
    dropout uses both equal textbook attention, masks of any pattern included."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 12))
    mask = layers.AttentionMask(jnp.array(key_mask), causal=causal)
    attn = layers.MultiHeadAttention(num_heads=3)
    params = random_params(attn, x, mask, seed=1)
    ours = attn.apply(params, x, mask)
    dense_mask = np.broadcast_to(np.asarray(mask.dense()[:, 0]), (2, 5, 5))
    ref = naive_attention(x, params["params"], 3, dense_mask)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 3, 4)) for i in range(3))
    explicit = jnp.einsum("bhqk,bkhd->bqhd", layers.attention_weights(q, k, mask.dense()), v)
    np.testing.assert_allclose(layers.attend(q, k, v, mask, "xla"), explicit,
                               rtol=1e-5, atol=1e-6)


def test_cudnn_attention_falls_back_to_xla_off_gpu(caplog):
    """On this CPU 'cudnn' runs the XLA path, with one warning, and gives its numbers."""
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 3, 4)) for i in range(3))
    mask = layers.AttentionMask(jnp.array([[1, 1, 1, 0, 0]] * 2), causal=True)
    with caplog.at_level("WARNING"):
        out = layers.attend(q, k, v, mask, "cudnn")
    np.testing.assert_array_equal(out, layers.attend(q, k, v, mask, "xla"))
    assert "attention runs on the XLA path" in caplog.text or \
        layers._warn_cudnn_fallback.cache_info().currsize
    cfg = tiny_config(attention="cudnn")
    assert build_model(cfg).image.attention == "cudnn"
    cfg.attention = "flash"
    with pytest.raises(UserError, match=r"config\.model\.attention must be one of"):
        build_model(cfg)


def test_logit_scale_init_and_clamp():
    model = build_model(tiny_config())
    # `scale` touches only the logit scale, so this initialises nothing else (no towers).
    variables = model.init(jax.random.key(0), method=DualEncoder.scale)
    assert variables["params"]["logit_scale"].dtype == jnp.float32
    np.testing.assert_allclose(variables["params"]["logit_scale"], math.log(1 / 0.07), rtol=1e-6)
    scale = model.apply(variables, method=DualEncoder.scale)
    assert scale.shape == () and scale.dtype == jnp.float32
    np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-6)
    clamped = model.apply({"params": {"logit_scale": jnp.float32(math.log(1000.0))}},
                          method=DualEncoder.scale)
    np.testing.assert_allclose(clamped, 100.0, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind,pooling", [("causal", "eos"), ("bert", "mean")])
def test_bfloat16_mode(kind, pooling):
    model32 = build_model(tiny_config(kind, pooling))
    model16 = build_model(tiny_config(kind, pooling, dtype="bfloat16"))
    shapes = abstract_params(model16)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
    params = model_params(model16)
    ids, mask = text_inputs((5, 16, 9))
    out16 = model16.apply({"params": params}, images(), ids, mask)
    out32 = model32.apply({"params": params}, images(), ids, mask)
    for name in ("image_emb", "text_emb", "image_tokens", "text_tokens"):
        a, b = getattr(out16, name), getattr(out32, name)
        assert a.dtype == jnp.float32
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 0.05, name
    assert out16.logit_scale.dtype == jnp.float32


def test_param_names():
    names = flat_names(abstract_params(build_model(tiny_config())))
    expected = {
        "image/patch_embed/kernel", "image/cls_token", "image/pos_embed", "image/ln_pre/scale",
        "image/block_0/ln_1/scale", "image/block_1/attn/query/kernel",
        "image/block_0/attn/key/bias", "image/block_0/attn/value/kernel",
        "image/block_0/attn/out/kernel", "image/block_0/ln_2/bias",
        "image/block_0/mlp/fc1/kernel", "image/block_0/mlp/fc2/bias", "image/ln_post/scale",
        "text/token_embed/embedding", "text/pos_embed", "text/block_1/attn/query/kernel",
        "text/ln_final/scale", "image_proj/kernel", "text_proj/kernel", "logit_scale"}
    assert expected <= names
    assert "image/patch_embed/bias" not in names and "image/block_2/ln_1/scale" not in names

    cfg = tiny_config("bert", "cls", projection="mlp", projection_hidden_dim=48)
    names = flat_names(abstract_params(build_model(cfg)))
    assert {"text/embeddings/word/embedding", "text/embeddings/position/embedding",
            "text/embeddings/token_type/embedding", "text/embeddings/ln/scale",
            "text/layer_0/attn/query/kernel", "text/layer_1/attn/out/bias",
            "text/layer_0/attn_ln/scale", "text/layer_0/mlp/fc1/kernel",
            "text/layer_0/mlp/fc2/kernel", "text/layer_0/mlp_ln/bias",
            "image_proj/fc1/kernel", "image_proj/fc2/bias", "text_proj/fc1/bias"} <= names


def test_base_param_count_matches_openai_clip_vit_b16():
    cfg = model_config("base")
    model = build_model(cfg)
    shapes = jax.eval_shape(lambda rng: init_params(model, rng, 224, 77), jax.random.key(0))
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    image = count(shapes["image"]) + count(shapes["image_proj"])
    text = count(shapes["text"]) + count(shapes["text_proj"])
    print(f"base: image {image:,} text {text:,} total {count(shapes):,}")
    # OpenAI CLIP ViT-B/16: visual 86,192,640 (incl. proj), text 63,428,096, + logit_scale.
    assert image == 86_192_640 and text == 63_428_096
    assert count(shapes) == 149_620_737


@pytest.mark.slow
def test_remat_and_dropout():
    """Remat changes memory, not values: same loss and grads with dropout on, same names."""
    model = build_model(tiny_config(dropout=0.1, remat=True))
    assert model.image.remat and model.text.remat and model.image.dropout == 0.1
    assert flat_names(abstract_params(model)) == flat_names(abstract_params(
        build_model(tiny_config())))
    # One block keeps the two gradient compiles cheap; dropout > 0 makes `train` reach Dropout
    # through the remat boundary (it must stay static there).
    ids, mask = text_inputs((5, 16, 9))
    plain = tower("causal", "eos", depth=1, dropout=0.1)
    remat = tower("causal", "eos", depth=1, dropout=0.1, remat=True)
    params = random_params(plain, ids, mask)
    rngs = {"dropout": jax.random.key(3, impl="rbg")}  # compiles faster than threefry on CPU

    def loss(params, module):
        pooled, _ = module.apply(params, ids, mask, train=True, rngs=rngs)
        return jnp.sum(pooled ** 2)

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    l1, g1 = grad_fn(params, plain)
    l2, g2 = grad_fn(params, remat)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    evaluated, _ = plain.apply(params, ids, mask)
    trained, _ = plain.apply(params, ids, mask, train=True, rngs=rngs)
    assert not np.allclose(evaluated, trained)


@pytest.mark.parametrize("field,value,message", [
    ("text.kind", "gpt", "config.model.text.kind must be one of ('causal', 'bert'), got 'gpt'"),
    ("image.image_size", 30, "config.model.image.image_size (30) must be divisible"),
    ("image.num_heads", 3, "config.model.image.width (32) must be divisible by"),
    ("text.num_heads", 5, "config.model.text.width (32) must be divisible by"),
    ("text.vocab_size", -1, "config.model.text.vocab_size must be a positive integer"),
    ("text.pooling", "max", "config.model.text.pooling must be one of"),
    ("image.activation", "swish", "config.model.image.activation must be one of"),
    ("projection", "conv", "config.model.projection must be one of"),
    ("dtype", "float16", "config.model.dtype must be one of"),
    ("image.depth", 0, "config.model.image.depth must be a positive integer"),
    ("dropout", 1.0, "config.model.dropout must be in [0, 1)"),
])
def test_invalid_config_names_the_field(field, value, message):
    cfg = tiny_config()
    section, _, name = field.rpartition(".")
    target = cfg[section] if section else cfg
    target[name] = value
    with pytest.raises(UserError) as err:
        build_model(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_field_and_size_are_rejected():
    cfg = tiny_config()
    cfg.image.widht = 3
    with pytest.raises(UserError, match=r"config\.model\.image\.widht"):
        build_model(cfg)
    with pytest.raises(UserError, match="model size"):
        model_config("huge")


def test_presets_build():
    for size in ("tiny", "small", "base"):
        assert isinstance(build_model(model_config(size)), DualEncoder)
    # "eos" pooling with a BERT tower is allowed (the [SEP] token).
    build_model(tiny_config("bert", "eos"))


def test_outputs_extras_absent_ones_raise_unless_read_as_optional():
    """A misspelt extra must not read as "absent": attribute access raises naming what is
    there; getattr with a default is the explicit optional read."""
    from medclip_jax.models.dual_encoder import EncoderOutputs
    zeros = np.zeros((2, 4), np.float32)
    outputs = EncoderOutputs(zeros, zeros, zeros[:, None], zeros[:, None], zeros.astype(np.int32),
                             np.float32(1.0), extras={"itm_logits": zeros})
    assert outputs.itm_logits is zeros
    with pytest.raises(AttributeError, match=r"no extra 'itm_logts' \(extras: itm_logits\)"):
        outputs.itm_logts  # noqa: B018
    assert getattr(outputs, "logit_bias", None) is None
    assert outputs.with_extras(logit_bias=zeros[0]).logit_bias is not None
