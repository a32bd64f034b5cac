"""ConVIRT, VSE++/VSE0 and CyCLIP against naive float64 references, on 1 and 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import numeric_grad
from medclip_jax import methods, sharding
from medclip_jax.errors import UserError
from medclip_jax.losses.convirt import convirt_loss
from medclip_jax.losses.cyclip import cyclip_loss
from medclip_jax.losses.vse import vse_loss


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_convirt(image, text, tau, lam):
    v, u = unit(image), unit(text)
    n = len(v)
    total = 0.0
    for i in range(n):
        v2u = -np.log(np.exp(v[i] @ u[i] / tau) / sum(np.exp(v[i] @ u[k] / tau) for k in range(n)))
        u2v = -np.log(np.exp(u[i] @ v[i] / tau) / sum(np.exp(u[i] @ v[k] / tau) for k in range(n)))
        total += lam * v2u + (1 - lam) * u2v
    return total / n


def ref_vse(image, text, margin, max_violation, reduction="mean"):
    s = unit(image) @ unit(text).T
    n = len(s)
    total = 0.0
    for i in range(n):
        text_costs = [max(0.0, margin - s[i, i] + s[i, j]) for j in range(n) if j != i]
        image_costs = [max(0.0, margin - s[i, i] + s[j, i]) for j in range(n) if j != i]
        pick = max if max_violation else sum
        total += pick(text_costs) + pick(image_costs)
    return total / n if reduction == "mean" else total


def ref_clip(image, text, scale):
    logits = scale * unit(image) @ unit(text).T
    n = len(logits)
    i2t = np.mean([np.log(np.sum(np.exp(logits[i]))) - logits[i, i] for i in range(n)])
    t2i = np.mean([np.log(np.sum(np.exp(logits[:, i]))) - logits[i, i] for i in range(n)])
    return 0.5 * (i2t + t2i)


def ref_cyclip(image, text, scale, w_in, w_cross, reduction):
    I, T = unit(image), unit(text)
    n = len(I)
    in_modal = sum((I[j] @ I[k] - T[j] @ T[k]) ** 2 for j in range(n) for k in range(n))
    cross = sum((I[j] @ T[k] - I[k] @ T[j]) ** 2 for j in range(n) for k in range(n))
    divisor = n * n if reduction == "mean" else n  # "code": the N^2 mean times N
    return ref_clip(image, text, scale) + (w_in * in_modal + w_cross * cross) / divisor


CASES = {
    "convirt": (lambda i, t: convirt_loss(i, t, 0.1, 0.75)[0],
                lambda i, t: ref_convirt(i, t, 0.1, 0.75)),
    "convirt_half": (lambda i, t: convirt_loss(i, t, 0.5, 0.3)[0],
                     lambda i, t: ref_convirt(i, t, 0.5, 0.3)),
    "vse++": (lambda i, t: vse_loss(i, t, 0.2, True)[0], lambda i, t: ref_vse(i, t, 0.2, True)),
    "vse0": (lambda i, t: vse_loss(i, t, 0.2, False)[0], lambda i, t: ref_vse(i, t, 0.2, False)),
    "vse++_sum": (lambda i, t: vse_loss(i, t, 0.3, True, "sum")[0],
                  lambda i, t: ref_vse(i, t, 0.3, True, "sum")),
    "vse0_sum": (lambda i, t: vse_loss(i, t, 0.2, False, "sum")[0],
                 lambda i, t: ref_vse(i, t, 0.2, False, "sum")),
    "cyclip": (lambda i, t: cyclip_loss(i, t, jnp.float32(5.0), 0.25, 0.25, "mean")[0],
               lambda i, t: ref_cyclip(i, t, 5.0, 0.25, 0.25, "mean")),
    "cyclip_code": (lambda i, t: cyclip_loss(i, t, jnp.float32(5.0), 0.5, 0.1, "code")[0],
                    lambda i, t: ref_cyclip(i, t, 5.0, 0.5, 0.1, "code")),
}


def embeddings(seed=0, n=8, dim=6):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)).astype(np.float32),
            rng.normal(size=(n, dim)).astype(np.float32))


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_gradients_match_reference(name):
    ours, reference = CASES[name]
    image, text = embeddings()
    np.testing.assert_allclose(ours(jnp.asarray(image), jnp.asarray(text)),
                               reference(image.astype(np.float64), text.astype(np.float64)),
                               rtol=1e-5)
    grads = jax.grad(ours, argnums=(0, 1))(jnp.asarray(image), jnp.asarray(text))
    image64, text64 = image.astype(np.float64), text.astype(np.float64)
    np.testing.assert_allclose(grads[0], numeric_grad(lambda x: reference(x, text64), image64),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[1], numeric_grad(lambda x: reference(image64, x), text64),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_on_one_and_eight_devices(name):
    ours, _ = CASES[name]
    image, text = embeddings(seed=1, n=16)
    fn = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))
    single = fn(image, text)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    batch = NamedSharding(mesh, P(sharding.BATCH_AXES))
    sharded = fn(jax.device_put(image, batch), jax.device_put(text, batch))
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
    for a, b in zip(sharded[1], single[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_vse_hardest_negative_is_global_and_margin_is_a_hinge():
    image = np.eye(3, dtype=np.float32)
    text = np.eye(3, dtype=np.float32)  # perfect: positives 1, negatives 0
    loss, _ = vse_loss(jnp.asarray(image), jnp.asarray(text), margin=0.2)
    assert float(loss) == 0.0
    loss, _ = vse_loss(jnp.asarray(image), jnp.asarray(text), margin=1.5)
    np.testing.assert_allclose(loss, 2 * 0.5, rtol=1e-6)  # one hinge per direction


def test_cyclip_terms_vanish_for_identical_modalities():
    image, _ = embeddings()
    loss, metrics = cyclip_loss(jnp.asarray(image), jnp.asarray(image), jnp.float32(10.0))
    assert float(metrics["in_modal_cyclic"]) < 1e-10
    assert float(metrics["cross_modal_cyclic"]) < 1e-10
    with pytest.raises(UserError, match="reduction"):
        cyclip_loss(jnp.asarray(image), jnp.asarray(image), jnp.float32(1.0), reduction="sum")


def test_loss_kwargs_are_checked_against_the_method():
    methods.check_loss_kwargs("vse", {"margin": 0.1, "max_violation": False})
    with pytest.raises(UserError, match="config.loss"):
        methods.check_loss_kwargs("vse", {"temperature": 0.1})
    with pytest.raises(UserError, match="config.loss"):
        methods.check_loss_kwargs("clip", {"margin": 0.1})
    with pytest.raises(UserError, match="reduction"):
        vse_loss(jnp.ones((2, 2)), jnp.ones((2, 2)), reduction="max")
