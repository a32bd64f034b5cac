"""SigLIP sigmoid loss: naive float64 reference, finite differences, global vs ring, 1/8 devices."""

import importlib.util
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import REPO_ROOT, numeric_grad
from medclip_jax import sharding
from medclip_jax.errors import UserError
from medclip_jax.losses.siglip import siglip_loss, siglip_loss_from_outputs, siglip_ring_loss

MESHES = {"data8": {"data": 8, "fsdp": 1}, "data2_fsdp4": {"data": 2, "fsdp": 4}}


def ref_siglip(image, text, t, b):
    """The paper's formula, one pair at a time: -1/N sum_ij log sigmoid(z_ij (t <x_i, y_j> + b))."""
    n = len(image)
    total = 0.0
    for i in range(n):
        x = image[i] / np.sqrt(np.sum(image[i] ** 2))
        for j in range(n):
            y = text[j] / np.sqrt(np.sum(text[j] ** 2))
            z = 1.0 if i == j else -1.0
            logit = t * np.dot(x, y) + b
            total += np.log(1.0 / (1.0 + np.exp(-z * logit)))
    return -total / n


def ref_mean_logits(image, text, t, b):
    n = len(image)
    x = image / np.linalg.norm(image, axis=1, keepdims=True)
    y = text / np.linalg.norm(text, axis=1, keepdims=True)
    positives = [t * x[i] @ y[i] + b for i in range(n)]
    negatives = [t * x[i] @ y[j] + b for i in range(n) for j in range(n) if i != j]
    return np.mean(positives), np.mean(negatives)


def embeddings(seed=0, n=8, dim=6):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)).astype(np.float32),
            rng.normal(size=(n, dim)).astype(np.float32))


def batch_sharded(mesh, *arrays):
    spec = NamedSharding(mesh, P(sharding.BATCH_AXES))
    return [jax.device_put(a, spec) for a in arrays]


def value_and_grads(loss_fn):
    """jit(value_and_grad) w.r.t. image, text, scale and bias, with the metrics as aux."""
    return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3), has_aux=True))


def assert_same(got, want, rtol=1e-5, atol=1e-7):
    (loss_a, metrics_a), grads_a = got
    (loss_b, metrics_b), grads_b = want
    np.testing.assert_allclose(loss_a, loss_b, rtol=rtol)
    for name, a, b in zip(("image", "text", "scale", "bias"), grads_a, grads_b):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)
    assert metrics_a.keys() == metrics_b.keys()
    for key in metrics_a:
        np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=rtol, atol=atol,
                                   err_msg=key)


@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (3.0, -1.5), (0.7, 2.0)])
def test_loss_metrics_and_gradients_match_reference(scale, bias):
    image, text = embeddings()
    image64, text64 = image.astype(np.float64), text.astype(np.float64)
    args = (jnp.asarray(image), jnp.asarray(text), jnp.float32(scale), jnp.float32(bias))
    (loss, metrics), grads = value_and_grads(siglip_loss)(*args)
    np.testing.assert_allclose(loss, ref_siglip(image64, text64, scale, bias), rtol=1e-5)
    positive, negative = ref_mean_logits(image64, text64, scale, bias)
    np.testing.assert_allclose(metrics["positive_logit"], positive, rtol=1e-5)
    np.testing.assert_allclose(metrics["negative_logit"], negative, rtol=1e-5)
    numeric = [
        numeric_grad(lambda x: ref_siglip(x, text64, scale, bias), image64),
        numeric_grad(lambda y: ref_siglip(image64, y, scale, bias), text64),
        numeric_grad(lambda t: ref_siglip(image64, text64, t, bias), np.array(scale, np.float64)),
        numeric_grad(lambda b: ref_siglip(image64, text64, scale, b), np.array(bias, np.float64)),
    ]
    for name, ours, want in zip(("image", "text", "scale", "bias"), grads, numeric):
        np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-6, err_msg=name)


def test_global_same_on_one_and_eight_devices():
    image, text = embeddings(seed=1, n=16)
    scale, bias = jnp.float32(5.0), jnp.float32(-3.0)
    fn = value_and_grads(siglip_loss)
    single = fn(image, text, scale, bias)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    assert_same(fn(*batch_sharded(mesh, image, text), scale, bias), single)


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_ring_equals_global_on_eight_devices(mesh_name):
    image, text = embeddings(seed=2, n=32, dim=5)
    scale, bias = jnp.float32(10.0), jnp.float32(-10.0)
    mesh = sharding.make_mesh(MESHES[mesh_name])
    inputs = batch_sharded(mesh, image, text)
    want = value_and_grads(siglip_loss)(*inputs, scale, bias)
    ring = value_and_grads(lambda *a: siglip_ring_loss(*a, mesh=mesh))
    assert_same(ring(*inputs, scale, bias), want)
    np.testing.assert_allclose(want[0][0], ref_siglip(image.astype(np.float64),
                                                      text.astype(np.float64), 10.0, -10.0),
                               rtol=1e-5)


def test_ring_equals_global_on_one_device():
    image, text = embeddings(seed=3, n=8)
    scale, bias = jnp.float32(4.0), jnp.float32(-2.0)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
    ring = value_and_grads(lambda *a: siglip_ring_loss(*a, mesh=mesh))
    assert_same(ring(image, text, scale, bias), value_and_grads(siglip_loss)(image, text, scale,
                                                                              bias))


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_adapter_under_jit_and_set_mesh(mesh_name):
    image, text = embeddings(seed=4, n=16)
    mesh = sharding.make_mesh(MESHES[mesh_name])
    image, text = batch_sharded(mesh, image, text)

    def loss_fn(implementation):
        def fn(image, text, scale, bias):
            outputs = types.SimpleNamespace(image_emb=image, text_emb=text, logit_scale=scale,
                                            logit_bias=bias)
            return siglip_loss_from_outputs(outputs, implementation=implementation)
        return value_and_grads(fn)

    with jax.set_mesh(mesh):
        ring = loss_fn("ring")(image, text, jnp.float32(10.0), jnp.float32(-10.0))
        default = loss_fn("global")(image, text, jnp.float32(10.0), jnp.float32(-10.0))
    assert_same(ring, default)
    assert ring[0][0].dtype == jnp.float32


@pytest.mark.slow
def test_ring_takes_the_context_mesh_and_bfloat16_inputs():
    image, text = embeddings(seed=5, n=16)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    image, text = batch_sharded(mesh, image.astype(jnp.bfloat16), text.astype(jnp.bfloat16))
    with jax.set_mesh(mesh):
        loss, _ = siglip_ring_loss(image, text, jnp.float32(10.0), jnp.float32(-10.0))
    want, _ = siglip_loss(image, text, jnp.float32(10.0), jnp.float32(-10.0))
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_bad_knobs_raise_user_errors():
    image, text = embeddings()
    outputs = types.SimpleNamespace(image_emb=image, text_emb=text, logit_scale=jnp.float32(1.0),
                                    logit_bias=jnp.float32(0.0))
    with pytest.raises(UserError, match="config.loss.implementation"):
        siglip_loss_from_outputs(outputs, implementation="chunked")
    with pytest.raises(UserError, match="config.loss.implementation"):
        siglip_loss_from_outputs(outputs, implementation="ring")  # no mesh set
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    with pytest.raises(UserError, match="config.batch_size"):
        siglip_ring_loss(image[:6], text[:6], 1.0, 0.0, mesh)  # 6 rows over 8 devices


def test_ring_never_holds_global_logits():
    """Per-device temp memory: the ring stays below even one [b, N] logits buffer."""
    spec = importlib.util.spec_from_file_location(
        "siglip_loss_memory", os.path.join(REPO_ROOT, "benchmarks", "siglip_loss_memory.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    n, dim = 1024, 8
    ring = bench.loss_memory("ring", n, dim, mesh)
    full = bench.loss_memory("global", n, dim, mesh)
    row_block = (n // 8) * n * 4
    assert ring["temp_bytes"] < row_block < full["temp_bytes"]
