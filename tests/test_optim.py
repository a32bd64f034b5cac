"""Schedule, AdamW parity with optax, decay masks, freezing and lr multipliers."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from medclip_jax import optim
from medclip_jax.errors import UserError


def optim_config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-2, warmup_steps=-1, warmup_fraction=0.2,
        end_lr_fraction=0.0, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, grad_clip_norm=0.0,
        no_decay_regex="logit_scale", lr_multipliers=()))
    config.update(overrides)
    return config


def make_params():
    rng = np.random.default_rng(0)
    return {
        "image": {"block_0": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                              "bias": jnp.asarray(rng.normal(size=3), jnp.float32)}},
        "text": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
        "logit_scale": jnp.asarray(2.6, jnp.float32),
    }


def grads_for(params, step):
    return jax.tree.map(lambda p: jnp.sin(p * (step + 1)), params)


def run_steps(tx, params, steps=4):
    """Gradients depend on the step only, so updates under different lrs stay comparable."""
    initial = params
    state = tx.init(params)
    for step in range(steps):
        updates, state = tx.update(grads_for(initial, step), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_schedule_warmup_then_cosine():
    schedule = optim.warmup_cosine_schedule(1.0, total_steps=110, warmup_steps=10,
                                            end_lr_fraction=0.1)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(schedule(5), 0.5, rtol=1e-6)
    np.testing.assert_allclose(schedule(10), 1.0, rtol=1e-6)
    np.testing.assert_allclose(schedule(60), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)),
                               rtol=1e-6)
    np.testing.assert_allclose(schedule(110), 0.1, rtol=1e-6)


def test_total_steps_derived_from_data():
    assert optim.total_train_steps(1000, 3, 64) == 46
    assert optim.total_train_steps(1000, 0.5, 100) == 5
    with pytest.raises(UserError, match="num_epochs"):
        optim.total_train_steps(10, 1, 64)


def test_matches_optax_adamw_without_rules():
    params = make_params()
    config = optim_config()
    tx, schedule = optim.make_optimizer(config, params, total_steps=10)
    decay_mask = {"image": {"block_0": {"kernel": True, "bias": False}},
                  "text": {"kernel": True}, "logit_scale": False}
    reference = optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1,
                            mask=decay_mask)
    ours, _ = run_steps(tx, params)
    theirs, _ = run_steps(reference, params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_decay_mask_excludes_vectors_scalars_and_regex():
    mask = optim.weight_decay_mask(make_params(), "text/")
    assert mask == {"image": {"block_0": {"kernel": True, "bias": False}},
                    "text": {"kernel": False}, "logit_scale": False}


def test_frozen_params_do_not_move_and_carry_no_adam_state():
    params = make_params()
    tx, _ = optim.make_optimizer(optim_config(lr_multipliers=(("^image/", 0.0),),
                                              grad_clip_norm=1.0), params, total_steps=10)
    new, state = run_steps(tx, params)
    np.testing.assert_array_equal(new["image"]["block_0"]["kernel"],
                                  params["image"]["block_0"]["kernel"])
    np.testing.assert_array_equal(new["image"]["block_0"]["bias"],
                                  params["image"]["block_0"]["bias"])
    assert not np.allclose(new["text"]["kernel"], params["text"]["kernel"])
    moment_leaves = [x for x in jax.tree.leaves(state) if getattr(x, "shape", None) == (4, 3)]
    assert not moment_leaves, "a frozen kernel has optimizer moments"


def test_lr_multiplier_scales_updates():
    params = make_params()
    base_tx, _ = optim.make_optimizer(optim_config(weight_decay=0.0), params, 10)
    half_tx, _ = optim.make_optimizer(
        optim_config(weight_decay=0.0, lr_multipliers=(("^text/", 0.5),)), params, 10)
    half, _ = run_steps(half_tx, params, steps=3)
    base, _ = run_steps(base_tx, params, steps=3)
    delta_base = base["text"]["kernel"] - params["text"]["kernel"]
    delta_half = half["text"]["kernel"] - params["text"]["kernel"]
    np.testing.assert_allclose(delta_half, 0.5 * delta_base, rtol=1e-5)
    np.testing.assert_allclose(half["logit_scale"], base["logit_scale"], rtol=1e-6)


def test_gradient_clipping_ignores_frozen_grads():
    params = make_params()
    config = optim_config(lr_multipliers=(("^image/", 0.0),), grad_clip_norm=1e-3)
    tx, _ = optim.make_optimizer(config, params, 10)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    grads["image"]["block_0"]["kernel"] = 1e6 * grads["image"]["block_0"]["kernel"]
    clip_state_grads = optax.chain(optax.masked(optax.set_to_zero(), {
        "image": {"block_0": {"kernel": True, "bias": True}}, "text": {"kernel": False},
        "logit_scale": False}), optax.clip_by_global_norm(1e-3))
    expected, _ = clip_state_grads.update(grads, clip_state_grads.init(params))
    assert float(optax.tree.norm(expected)) == pytest.approx(1e-3, rel=1e-4)
    updates, _ = tx.update(grads, state, params)
    assert float(jnp.abs(updates["image"]["block_0"]["kernel"]).max()) == 0.0


def test_bad_values_name_the_field():
    with pytest.raises(UserError, match="lr_multipliers"):
        optim.make_optimizer(optim_config(lr_multipliers=(("x", -1.0),)), make_params(), 10)
    with pytest.raises(UserError, match="optim.name"):
        optim.make_optimizer(optim_config(name="sgd"), make_params(), 10)
