"""The CLIP loss against an independent float64 numpy reference, on 1 and 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import numeric_grad
from medclip_jax import methods, sharding
from medclip_jax.errors import UserError
from medclip_jax.losses.clip import clip_loss


def reference_clip_loss(image: np.ndarray, text: np.ndarray, scale: float) -> float:
    """Naive loops in float64: mean of the image->text and text->image cross-entropies."""
    scale = float(scale)
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    n = len(image)
    logits = np.array([[scale * float(image[i] @ text[j]) for j in range(n)] for i in range(n)])
    i2t = [-(logits[i, i] - np.log(np.sum(np.exp(logits[i])))) for i in range(n)]
    t2i = [-(logits[j, j] - np.log(np.sum(np.exp(logits[:, j])))) for j in range(n)]
    return 0.5 * (np.mean(i2t) + np.mean(t2i))


@pytest.fixture
def embeddings():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(8, 5)).astype(np.float32),
            rng.normal(size=(8, 5)).astype(np.float32), np.float32(7.5))


def test_loss_matches_reference(embeddings):
    image, text, scale = embeddings
    loss, metrics = clip_loss(jnp.asarray(image), jnp.asarray(text), jnp.asarray(scale))
    expected = reference_clip_loss(image.astype(np.float64), text.astype(np.float64), scale)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(0.5 * (metrics["loss_i2t"] + metrics["loss_t2i"]), expected,
                               rtol=1e-5)


def test_gradients_match_finite_differences(embeddings):
    image, text, scale = embeddings
    grads = jax.grad(lambda i, t, s: clip_loss(i, t, s)[0], argnums=(0, 1, 2))(
        jnp.asarray(image), jnp.asarray(text), jnp.asarray(scale))
    image64, text64 = image.astype(np.float64), text.astype(np.float64)
    ref_image = numeric_grad(lambda x: reference_clip_loss(x, text64, scale), image64)
    ref_text = numeric_grad(lambda x: reference_clip_loss(image64, x, scale), text64)
    ref_scale = numeric_grad(lambda s: reference_clip_loss(image64, text64, s[0]),
                             np.array([scale], np.float64))[0]
    np.testing.assert_allclose(grads[0], ref_image, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[1], ref_text, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[2], ref_scale, rtol=1e-4, atol=1e-6)


def test_perfect_alignment_gives_low_loss():
    emb = np.eye(6, dtype=np.float32)
    loss, metrics = clip_loss(jnp.asarray(emb), jnp.asarray(emb), jnp.asarray(100.0))
    assert float(loss) < 1e-6
    assert float(metrics["i2t_batch_acc"]) == 1.0


def test_same_loss_and_grads_on_one_and_eight_devices(embeddings):
    image, text, scale = embeddings
    loss_and_grad = jax.jit(jax.value_and_grad(lambda i, t, s: clip_loss(i, t, s)[0],
                                               argnums=(0, 1)))
    single = loss_and_grad(image, text, scale)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    assert mesh.devices.size == 8
    batch = NamedSharding(mesh, P(sharding.BATCH_AXES))
    sharded = loss_and_grad(jax.device_put(image, batch), jax.device_put(text, batch), scale)
    assert len(sharded[1][0].sharding.device_set) == 8
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
    for a, b in zip(sharded[1], single[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_registry_rejects_unknown_method():
    from medclip_jax.losses.clip import clip_loss_from_outputs
    assert methods.get("clip").loss is clip_loss_from_outputs
    assert methods.get("clip") is methods.registry()["clip"]
    with pytest.raises(UserError, match=r"^config\.method: unknown method 'not_a_method'"):
        methods.get("not_a_method")
