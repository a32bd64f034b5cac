"""FILIP and GLoRIA token-level losses against naive float64 loop references, on 1 and 8 devices."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import numeric_grad
from medclip_jax import sharding
from medclip_jax.errors import UserError
from medclip_jax.losses.clip import l2_normalize
from medclip_jax.losses.filip import (filip_loss, filip_loss_from_outputs, filip_similarities,
                                      real_token_mask, select_tokens)
from medclip_jax.losses.gloria import gloria_loss, gloria_loss_from_outputs

# ----------------------------------------------------------------------------- references


def unit(v):
    return v / np.linalg.norm(v)


def softmax(values):
    values = np.asarray(values, dtype=np.float64)
    e = np.exp(values - values.max())
    return e / e.sum()


def ce_rows(logits):
    """Mean over rows of -log softmax(row)[diagonal]."""
    return np.mean([np.log(np.sum(np.exp(logits[i]))) - logits[i, i]
                    for i in range(len(logits))])


def ref_words(text_mask, exclude_special_tokens):
    """Per row, the list of positions that count."""
    words = []
    for row in text_mask:
        real = [r for r in range(len(row)) if row[r] == 1]
        if exclude_special_tokens:
            real = real[1:-1]
        words.append(real)
    return words


def ref_filip_select(x, y, words, fraction):
    """The selection rule written out: token-wise max similarity over the batch, top-k."""
    b, n, l = len(x), len(x[0]), len(y[0])
    keep_patches = max(1, int(math.floor(fraction * n + 1e-9)))
    keep_words = max(1, int(math.floor(fraction * l + 1e-9)))
    new_x, new_y, new_words = [], [], []
    for i in range(b):
        scores = [max(x[i][k] @ y[j][r] for j in range(b) for r in words[j]) for k in range(n)]
        order = np.argsort(-np.array(scores), kind="stable")[:keep_patches]
        new_x.append([x[i][k] for k in order])
    for j in range(b):
        scores = [max(y[j][r] @ x[i][k] for i in range(b) for k in range(n))
                  if r in words[j] else -np.inf for r in range(l)]
        order = np.argsort(-np.array(scores), kind="stable")[:keep_words]
        new_y.append([y[j][r] for r in order])
        new_words.append([p for p, r in enumerate(order) if r in words[j]])
    return new_x, new_y, new_words


def ref_filip(image_tokens, text_tokens, text_mask, scale, fraction=1.0, exclude=False):
    b = len(image_tokens)
    x = [[unit(t) for t in image] for image in image_tokens]
    y = [[unit(t) for t in text] for text in text_tokens]
    words = ref_words(text_mask, exclude)
    if fraction < 1.0:
        x, y, words = ref_filip_select(x, y, words, fraction)
    sim_i2t = np.zeros((b, b))
    sim_t2i = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            total = 0.0
            for k in range(len(x[i])):
                total += max(x[i][k] @ y[j][r] for r in words[j]) if words[j] else 0.0
            sim_i2t[i, j] = total / len(x[i])
            total = 0.0
            for r in words[j]:
                total += max(y[j][r] @ x[i][k] for k in range(len(x[i])))
            sim_t2i[j, i] = total / len(words[j]) if words[j] else 0.0
    return 0.5 * (ce_rows(scale * sim_i2t) + ce_rows(scale * sim_t2i))


def ref_cos(a, b):
    return a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-8)


def ref_local_score(regions, word_vectors, variant, tau1, tau2):
    """Z(image, report): per word attention, context, cosine, then aggregation."""
    if not word_vectors:
        return 0.0
    relevances = []
    for index, w in enumerate(word_vectors):
        if variant == "paper":
            logits = [(w @ v) / tau1 for v in regions]
        else:
            logits = []
            for v in regions:  # softmax over the report's words for this region, times tau1
                over_words = softmax([other @ v for other in word_vectors])
                logits.append(tau1 * over_words[index])
        attention = softmax(logits)
        context = sum(a * v for a, v in zip(attention, regions))
        relevances.append(ref_cos(context, w))
    if variant == "paper":
        return tau2 * np.log(sum(np.exp(r / tau2) for r in relevances))
    return np.log(sum(np.exp(tau2 * r) for r in relevances))


def ref_gloria(image_emb, text_emb, regions, word_emb, text_mask, variant,
               tau1=4.0, tau2=5.0, tau3=10.0, global_weight=1.0, local_weight=1.0,
               exclude=True):
    b = len(image_emb)
    words = ref_words(text_mask, exclude)
    global_cos = np.array([[ref_cos(image_emb[i], text_emb[j]) for j in range(b)]
                           for i in range(b)])
    local = np.array([[ref_local_score(list(regions[i]), [word_emb[j][r] for r in words[j]],
                                       variant, tau1, tau2) for j in range(b)]
                      for i in range(b)])
    if variant == "paper":
        g, l, combine = global_cos / tau3, local / tau3, lambda a, c: 0.5 * (a + c)
    else:
        g, l, combine = tau3 * global_cos, tau3 * local, lambda a, c: a + c
    global_loss = combine(ce_rows(g), ce_rows(g.T))
    local_loss = combine(ce_rows(l), ce_rows(l.T))
    return global_weight * global_loss + local_weight * local_loss


# ----------------------------------------------------------------------------- inputs


def text_mask_for(lengths, length):
    return np.array([[1] * n + [0] * (length - n) for n in lengths], dtype=np.int32)


def token_inputs(seed=0, b=3, n=4, l=5, e=3, lengths=(5, 3, 4), scale=1.0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: (scale * rng.normal(size=shape)).astype(np.float32)  # noqa: E731
    mask = text_mask_for(lengths, l)
    words = f(b, l, e)
    words[mask == 0] = f(int((mask == 0).sum()), e) * 3  # padding holds arbitrary values
    return {"image_emb": f(b, e), "text_emb": f(b, e), "image_tokens": f(b, n, e),
            "text_tokens": words, "text_mask": mask}


def f64(x):
    return np.asarray(x, dtype=np.float64)


def assert_matches_reference(ours, reference, args, rtol=1e-4, atol=1e-6):
    """`ours(*float32 args)`: value (rtol 1e-5) vs `reference(*float64 args)`, gradients vs
    its central differences."""
    value, grads = jax.jit(jax.value_and_grad(ours, argnums=tuple(range(len(args)))))(*args)
    args64 = [f64(a) for a in args]
    np.testing.assert_allclose(value, reference(*args64), rtol=1e-5)
    for index, grad in enumerate(grads):
        def one(x, index=index):
            return reference(*args64[:index], x, *args64[index + 1:])
        np.testing.assert_allclose(grad, numeric_grad(one, args64[index]), rtol=rtol, atol=atol,
                                   err_msg=f"argument {index}")


# ----------------------------------------------------------------------------- FILIP

FILIP_CASES = {
    "full": dict(),
    "keep_half": dict(token_keep_fraction=0.5),
    "keep_30pct_exclude_special": dict(token_keep_fraction=0.3, exclude_special_tokens=True),
}


def _ref_kwargs(knobs):
    return dict(fraction=knobs.get("token_keep_fraction", 1.0),
                exclude=knobs.get("exclude_special_tokens", False))


@pytest.mark.parametrize("case", sorted(FILIP_CASES))
def test_filip_matches_reference_value_and_gradients(case):
    knobs = FILIP_CASES[case]
    x = token_inputs(seed=1, n=6, l=7, lengths=(7, 3, 5))
    mask = x["text_mask"]

    def ours(image, text, scale):
        return filip_loss(image, text, mask, scale, chunk_size=2, **knobs)[0]

    def reference(image, text, scale):
        return ref_filip(image, text, mask, float(scale), **_ref_kwargs(knobs))

    assert_matches_reference(ours, reference,
                             (x["image_tokens"], x["text_tokens"], np.float32(4.0)))


def test_filip_token_subset_keeps_the_highest_scoring_tokens():
    x = token_inputs(seed=2, b=4, n=8, l=6, lengths=(6, 2, 4, 5))
    image = jnp.asarray(x["image_tokens"]) / jnp.linalg.norm(x["image_tokens"], axis=-1,
                                                               keepdims=True)
    text = jnp.asarray(x["text_tokens"]) / jnp.linalg.norm(x["text_tokens"], axis=-1,
                                                             keepdims=True)
    mask = jnp.asarray(x["text_mask"] > 0)
    kept_image, kept_text, kept_mask = select_tokens(image, text, mask, 0.5, chunk_size=3)
    assert kept_image.shape == (4, 4, 3) and kept_text.shape == (4, 3, 3)
    ref_x, ref_y, ref_words_kept = ref_filip_select(
        f64(image), f64(text), ref_words(x["text_mask"], False), 0.5)
    for i in range(4):  # the same sets of tokens (order is irrelevant to the loss)
        np.testing.assert_allclose(np.sort(np.asarray(kept_image[i]), axis=0),
                                   np.sort(np.array(ref_x[i]), axis=0), rtol=1e-6)
        np.testing.assert_allclose(np.sort(np.asarray(kept_text[i]), axis=0),
                                   np.sort(np.array(ref_y[i]), axis=0), rtol=1e-6)
        assert int(kept_mask[i].sum()) == len(ref_words_kept[i])
    assert int(kept_mask[1].sum()) == 2  # a 2-token text keeps both, the third slot is padding


def test_filip_keep_fraction_one_is_the_full_loss():
    x = token_inputs(seed=3, n=5, l=6, lengths=(6, 2, 4))

    @jax.jit
    def run(image, text, text_mask):
        explicit, _ = filip_loss(image, text, text_mask, jnp.float32(3.0), 2, 1.0)
        image, text = l2_normalize(image), l2_normalize(text)
        mask = text_mask > 0  # the selection code path at fraction 1 keeps every token
        kept = filip_similarities(*select_tokens(image, text, mask, 1.0, 2), chunk_size=2)
        return explicit, kept, filip_similarities(image, text, mask, chunk_size=2)

    explicit, kept, full = run(x["image_tokens"], x["text_tokens"], x["text_mask"])
    np.testing.assert_allclose(
        explicit, ref_filip(f64(x["image_tokens"]), f64(x["text_tokens"]), x["text_mask"], 3.0),
        rtol=1e-5)
    for a, b in zip(kept, full):
        np.testing.assert_allclose(a, b, rtol=1e-6)


# ----------------------------------------------------------------------------- GLoRIA

GLORIA_CASES = {
    "code": dict(variant="code"),
    "paper": dict(variant="paper"),
    "paper_other_knobs": dict(variant="paper", attention_temperature=0.5,
                              aggregation_temperature=0.2, contrastive_temperature=0.1,
                              exclude_special_tokens=False, global_weight=0.5, local_weight=2.0),
}


def _gloria_ref_kwargs(knobs):
    return dict(variant=knobs["variant"], tau1=knobs.get("attention_temperature", 4.0),
                tau2=knobs.get("aggregation_temperature", 5.0),
                tau3=knobs.get("contrastive_temperature", 10.0),
                global_weight=knobs.get("global_weight", 1.0),
                local_weight=knobs.get("local_weight", 1.0),
                exclude=knobs.get("exclude_special_tokens", True))


@pytest.mark.parametrize("case", sorted(GLORIA_CASES))
def test_gloria_matches_reference_value_and_gradients(case):
    knobs = GLORIA_CASES[case]
    # Report 1 is [CLS] [SEP] only: with special tokens excluded it has no words (Z = 0).
    x = token_inputs(seed=4, n=4, l=6, lengths=(6, 2, 5), scale=0.6)
    mask = x["text_mask"]

    def ours(image_emb, text_emb, regions, words):
        return gloria_loss(image_emb, text_emb, regions, words, mask, chunk_size=2, **knobs)[0]

    def reference(image_emb, text_emb, regions, words):
        return ref_gloria(image_emb, text_emb, regions, words, mask, **_gloria_ref_kwargs(knobs))

    assert_matches_reference(ours, reference, float_args(x), atol=2e-6)


def test_gloria_default_is_code_and_variants_differ():
    x = token_inputs(seed=5, lengths=(5, 4, 3))

    @jax.jit
    def run(*args):
        default, metrics = gloria_loss(*args)
        return (default, gloria_loss(*args, variant="code")[0],
                gloria_loss(*args, variant="paper")[0], metrics)

    default, code, paper, metrics = run(*float_args(x), x["text_mask"])
    assert float(default) == float(code) and abs(float(code) - float(paper)) > 1e-3
    np.testing.assert_allclose(default, metrics["global_loss"] + metrics["local_loss"],
                               rtol=1e-6)


# ----------------------------------------------------------------------------- shared properties


def filip_fn(mask, **knobs):
    def fn(image_emb, text_emb, image, text):
        del image_emb, text_emb
        return filip_loss(image, text, mask, jnp.float32(5.0), **knobs)[0]
    return fn


def gloria_fn(mask, **knobs):
    def fn(image_emb, text_emb, image, text):
        return gloria_loss(image_emb, text_emb, image, text, mask, **knobs)[0]
    return fn


LOSSES = {
    "filip": lambda mask, **k: filip_fn(mask, **k),
    "filip_keep_half": lambda mask, **k: filip_fn(mask, token_keep_fraction=0.5, **k),
    "gloria_code": lambda mask, **k: gloria_fn(mask, variant="code", **k),
    "gloria_paper": lambda mask, **k: gloria_fn(mask, variant="paper", **k),
}


def assert_float32_close(actual, desired):
    """Equal up to float32 summation order: GLoRIA's "code" logits reach ~10 * (5 + log L), so
    absolute errors scale with the largest gradient."""
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=1e-5,
                               atol=2e-6 * max(1.0, float(np.abs(desired).max())))


def float_args(x):
    return [x[k] for k in ("image_emb", "text_emb", "image_tokens", "text_tokens")]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["filip_keep_half", "gloria_code"])
def test_same_on_one_and_eight_devices(name):
    x = token_inputs(seed=7, b=16, n=4, l=6, e=4,
                     lengths=(6, 3, 5, 4, 6, 2, 3, 6, 5, 4, 3, 6, 4, 5, 6, 3), scale=0.7)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    batch = NamedSharding(mesh, P(sharding.BATCH_AXES))

    def loss(mask, *args):
        return LOSSES[name](mask, chunk_size=3)(*args)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3, 4)))
    single = fn(x["text_mask"], *float_args(x))
    sharded = fn(*[jax.device_put(a, batch) for a in [x["text_mask"], *float_args(x)]])
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
    for a, b in zip(sharded[1], single[1]):
        assert_float32_close(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["filip_keep_half", "gloria_code"])
def test_chunk_size_does_not_change_value_or_gradients(name):
    x = token_inputs(seed=8, b=5, n=4, l=6, lengths=(6, 3, 5, 2, 4), scale=0.7)
    results = []
    for chunk in (2, 5):  # 3 blocks with a padded remainder; 1 block
        fn = jax.jit(jax.value_and_grad(LOSSES[name](x["text_mask"], chunk_size=chunk),
                                        argnums=(0, 1, 2, 3)))
        results.append(fn(*float_args(x)))
    value, grads = results[-1]
    for other_value, other_grads in results[:-1]:
        np.testing.assert_allclose(other_value, value, rtol=1e-6)
        for a, b in zip(other_grads, grads):
            assert_float32_close(a, b)


@pytest.mark.parametrize("name", ["filip_keep_half", "gloria_code", "gloria_paper"])
def test_padding_values_change_nothing(name):
    x = token_inputs(seed=9, b=4, n=4, l=6, lengths=(6, 3, 5, 2), scale=0.7)
    fn = jax.jit(jax.value_and_grad(LOSSES[name](x["text_mask"], chunk_size=3),
                                    argnums=(0, 1, 2, 3)))
    value, grads = fn(*float_args(x))
    padding = x["text_mask"] == 0
    for fill in (0.0, 1e3):  # zeros (no NaN from a zero norm) and large values
        changed = dict(x)
        changed["text_tokens"] = x["text_tokens"].copy()
        changed["text_tokens"][padding] = fill * np.random.default_rng(1).normal(
            size=(int(padding.sum()), x["text_tokens"].shape[-1]))
        other_value, other_grads = fn(*float_args(changed))
        np.testing.assert_allclose(other_value, value, rtol=1e-6)
        for a, b in zip(other_grads, grads):
            assert np.isfinite(a).all()
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
        assert not np.any(other_grads[3][padding])


def test_chunked_memory_does_not_hold_the_batch_squared_token_products():
    b, n, l, e = 64, 16, 16, 8
    x = token_inputs(seed=10, b=b, n=n, l=l, e=e, lengths=(l,) * b)
    full_product_bytes = b * b * n * l * 4

    def temp_bytes(name, chunk):
        fn = LOSSES[name](x["text_mask"], chunk_size=chunk)
        compiled = jax.jit(jax.grad(fn, argnums=(0, 1, 2, 3))).lower(*float_args(x)).compile()
        analysis = compiled.memory_analysis()
        if analysis is None:
            pytest.skip("this backend gives no memory analysis")
        return analysis.temp_size_in_bytes

    for name in ("filip", "gloria_code"):  # unchunked, the backward pass alone keeps several
        assert temp_bytes(name, 2) < full_product_bytes / 4, name


def test_special_token_mask_drops_first_and_last_real_token():
    mask = text_mask_for((5, 3, 2, 1, 0), 5)
    np.testing.assert_array_equal(real_token_mask(mask, False), mask > 0)
    np.testing.assert_array_equal(real_token_mask(mask, True), np.array(
        [[0, 1, 1, 1, 0], [0, 1, 0, 0, 0], [0] * 5, [0] * 5, [0] * 5], dtype=bool))


def test_adapters_read_encoder_outputs():
    x = token_inputs(seed=11)

    @jax.jit
    def run(image_emb, text_emb, image_tokens, text_tokens, text_mask):
        outputs = types.SimpleNamespace(  # the attributes of the model's EncoderOutputs
            image_emb=image_emb, text_emb=text_emb, image_token_emb=image_tokens,
            text_token_emb=text_tokens, text_mask=text_mask, logit_scale=jnp.float32(7.0))
        return (filip_loss_from_outputs(outputs, chunk_size=2, token_keep_fraction=0.5),
                gloria_loss_from_outputs(outputs, variant="paper", local_weight=0.5))

    (filip, filip_metrics), (gloria, gloria_metrics) = run(*float_args(x), x["text_mask"])
    x64 = [f64(a) for a in float_args(x)]
    np.testing.assert_allclose(
        filip, ref_filip(x64[2], x64[3], x["text_mask"], 7.0, fraction=0.5), rtol=1e-5)
    np.testing.assert_allclose(
        gloria, ref_gloria(*x64, x["text_mask"], "paper", local_weight=0.5), rtol=1e-5)
    assert {"loss_i2t", "loss_t2i", "i2t_batch_acc", "t2i_batch_acc"} <= set(filip_metrics)
    assert {"global_loss", "local_loss"} <= set(gloria_metrics)


@pytest.mark.parametrize("knobs, field", [
    (dict(chunk_size=0), "chunk_size"), (dict(chunk_size=-2), "chunk_size"),
    (dict(chunk_size=2.5), "chunk_size"), (dict(chunk_size=True), "chunk_size"),
    (dict(token_keep_fraction=0.0), "token_keep_fraction"),
    (dict(token_keep_fraction=1.5), "token_keep_fraction"),
    (dict(token_keep_fraction=-0.25), "token_keep_fraction"),
    (dict(exclude_special_tokens="yes"), "exclude_special_tokens"),
])
def test_filip_bad_knobs_raise_user_error(knobs, field):
    x = token_inputs()
    with pytest.raises(UserError, match=f"config.loss.{field}"):
        filip_loss(x["image_tokens"], x["text_tokens"], x["text_mask"], jnp.float32(1.0),
                   **knobs)


@pytest.mark.parametrize("knobs, field", [
    (dict(variant="both"), "variant"), (dict(variant=None), "variant"),
    (dict(attention_temperature=0.0), "attention_temperature"),
    (dict(aggregation_temperature=-5.0), "aggregation_temperature"),
    (dict(contrastive_temperature=0), "contrastive_temperature"),
    (dict(global_weight=-1.0), "global_weight"), (dict(local_weight=-0.1), "local_weight"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(exclude_special_tokens=1), "exclude_special_tokens"),
])
def test_gloria_bad_knobs_raise_user_error(knobs, field):
    x = token_inputs()
    with pytest.raises(UserError, match=f"config.loss.{field}"):
        gloria_loss(*float_args(x), x["text_mask"], **knobs)
