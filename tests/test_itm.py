"""CLIP + ITM (the README's worked example of a method with a head): the model's matching
logits and the loss against a naive numpy re-implementation of the formulas in
`medclip_jax/methods/itm.py`; the head is the method's own, in the param tree under
`itm_head`. Its training run (the loss goes down) is in test_method_training.py, which covers
every registered method."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import itm as itm_config
from medclip_jax import methods
from medclip_jax.data import synthetic_batch
from medclip_jax.errors import UserError
from medclip_jax.models import build_model, init_params

N = 6


@functools.cache
def setup_model():
    """The tiny ITM model, its params and one batch's outputs (built once: the tests only read
    them)."""
    config = itm_config.get_config("tiny")
    config.model.text.vocab_size = 100
    model = build_model(config.model, "itm")
    params = jax.jit(lambda rng: init_params(model, rng, config.model.image.image_size,
                                             config.model.text.max_len))(jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in synthetic_batch.random_batch(config, N).items()}
    forward = jax.jit(lambda params, batch: model.apply({"params": params}, batch,
                                                        method=model.apply_batch))
    return config, model, params, forward(params, batch)


def ref_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def ref_head(p, u, v):
    """f(u, v) = w2 . gelu(W1 [u; v; u*v; |u-v|] + b1) + b2, one pair at a time."""
    x = np.concatenate([u, v, u * v, np.abs(u - v)])
    hidden = ref_gelu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    return float(hidden @ p["fc2"]["kernel"][:, 0] + p["fc2"]["bias"][0])


def ref_itm_logits(p, image, text):
    u, v = ref_normalize(image), ref_normalize(text)
    sims = u @ v.T
    rows = []
    for i in range(len(u)):
        hard_text = max((j for j in range(len(v)) if j != i), key=lambda j: sims[i, j])
        hard_image = max((k for k in range(len(u)) if k != i), key=lambda k: sims[k, i])
        rows.append([ref_head(p, u[i], v[i]), ref_head(p, u[i], v[hard_text]),
                     ref_head(p, u[hard_image], v[i])])
    return np.array(rows)


def ref_softplus(x):
    return np.log1p(np.exp(-abs(x))) + max(x, 0.0)


def ref_loss(image, text, scale, logits, weight):
    u, v = ref_normalize(image), ref_normalize(text)
    z = scale * u @ v.T
    i2t = -np.mean([z[i, i] - np.log(np.sum(np.exp(z[i]))) for i in range(len(z))])
    t2i = -np.mean([z[j, j] - np.log(np.sum(np.exp(z[:, j]))) for j in range(len(z))])
    matching = np.mean([ref_softplus(-row[0]) + ref_softplus(row[1]) + ref_softplus(row[2])
                        for row in logits]) / 3
    return 0.5 * (i2t + t2i) + weight * matching, matching


def as_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def test_head_is_the_methods_own_and_clip_has_none():
    config, model, params, _ = setup_model()
    assert set(params) == {"image", "text", "image_proj", "text_proj", "logit_scale",
                           "itm_head"}
    assert params["itm_head"]["fc1"]["kernel"].shape == (4 * config.model.embed_dim,
                                                         config.model.embed_dim)
    with pytest.raises(UserError, match=r"^config\.model\.itm_hidden_dim is not a model field"):
        build_model(config.model, "clip")


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_logits_and_loss_match_a_numpy_reference(weight):
    config, model, params, outputs = setup_model()
    image, text = np.asarray(outputs.image_emb, np.float64), np.asarray(outputs.text_emb,
                                                                         np.float64)
    want_logits = ref_itm_logits(as_numpy(params["itm_head"]), image, text)
    np.testing.assert_allclose(outputs.itm_logits, want_logits, rtol=1e-4, atol=1e-5)
    loss, metrics = methods.bind_loss("itm", {"itm_weight": weight})(outputs, {})
    want_loss, want_matching = ref_loss(image, text, float(outputs.logit_scale),
                                        np.asarray(outputs.itm_logits, np.float64), weight)
    np.testing.assert_allclose(metrics["itm_loss"], want_matching, rtol=1e-5)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)


def test_the_hardest_negative_is_never_the_positive():
    from medclip_jax.methods.itm import hardest_negatives
    # Every image is closest to its own text; the second closest is the one to find.
    image = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    text = jnp.array([[1.0, 0.5, 0.0], [0.1, 1.0, 0.2], [0.9, 0.0, 1.0]])
    hard_text, hard_image = hardest_negatives(image, text)
    np.testing.assert_array_equal(hard_text, [2, 0, 1])
    np.testing.assert_array_equal(hard_image, [1, 2, 0])


def test_bad_knobs_are_named():
    config, model, params, outputs = setup_model()
    config = config.copy_and_resolve_references()
    with pytest.raises(UserError, match="config.loss.itm_weight"):
        methods.bind_loss("itm", {"itm_weight": -1.0})(outputs, {})
    with pytest.raises(UserError, match="config.loss.duplicate_captions: method 'itm'"):
        methods.check_loss_kwargs("itm", {"duplicate_captions": True})
    config.model.itm_hidden_dim = 0
    with pytest.raises(UserError, match="config.model.itm_hidden_dim"):
        build_model(config.model, "itm")
