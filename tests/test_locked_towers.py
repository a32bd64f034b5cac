"""A locked (frozen) tower is not differentiated: the same gradients for the trainable leaves as
differentiating everything, zeros for the frozen ones, and a step that costs fewer FLOPs."""

import jax
import numpy as np
import pytest

from configs import clip
from medclip_jax import methods, optim, sharding, train
from medclip_jax.data import synthetic_batch
from medclip_jax.models import build_model
from medclip_jax.models import params as model_params


def tiny_locked(lock: str):
    config = clip.get_config(f"tiny,lock={lock}")
    config.model.text.vocab_size = 100
    model = build_model(config.model, "clip")
    mesh = sharding.make_mesh({"data": -1})
    params = train.init_params(model, config.model, jax.random.key(0), sharding.tree_shardings(
        model_params.abstract_params(model, config.model), (), mesh))
    batch = sharding.to_global_batch(synthetic_batch.random_batch(config, 16, seed=1), mesh)
    return config, model, mesh, params, batch, optim.frozen_mask(params, config.optim)


def grad_fn(model, mesh, frozen, accum: int = 1):
    return jax.jit(train.make_grad_fn(model, methods.bind_loss("clip", {}), accum, mesh, frozen))


def compiled(fn, *args):
    return fn.lower(*args).compile()


def flops(compiled_fn) -> float:
    cost = compiled_fn.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def check_grads(lock: str, accum: int) -> tuple[float, float]:
    """Asserts the gradients; (FLOPs with the frozen leaves left out, FLOPs without)."""
    _, model, mesh, params, batch, frozen = tiny_locked(lock)
    assert any(jax.tree.leaves(frozen)) and not all(jax.tree.leaves(frozen))
    args = (params, {}, batch, jax.random.key(2))
    locked = compiled(grad_fn(model, mesh, frozen, accum), *args)
    everything = compiled(grad_fn(model, mesh, None, accum), *args)
    (loss, _), grads = locked(*args)
    (reference_loss, _), reference = everything(*args)
    np.testing.assert_allclose(loss, reference_loss, rtol=1e-6)
    for (path, g), r, f in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                               jax.tree.leaves(reference), jax.tree.leaves(frozen)):
        name = jax.tree_util.keystr(path)
        if f:
            assert not np.any(np.asarray(g)), name
        else:
            # Two programs, so float32 sums may round differently: the absolute
            # tolerance is relative to the gradient's own scale.
            scale = float(np.max(np.abs(np.asarray(r))))
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5,
                                       atol=1e-5 * scale,
                                       err_msg=name)
    return flops(locked), flops(everything)


def test_a_locked_image_tower_is_not_differentiated():
    """LiT: the trainable grads are unchanged and the image tower's backward pass (about
    twice its forward) is gone from the compiled program."""
    locked, everything = check_grads("tower", 1)
    assert locked < 0.75 * everything, (locked, everything)


@pytest.mark.slow
def test_partly_locked_tower_with_gradient_accumulation():
    check_grads("1", 2)
