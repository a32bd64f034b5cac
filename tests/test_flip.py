"""FLIP image-token dropping (`config.model.image.token_keep_fraction`) and its unmasked tuning
phase (`config.unmasked_tuning_steps`): what the tower computes on the kept patches, against
the blocks applied by hand; evaluation untouched; the cost it saves; the config errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medclip_jax.errors import UserError
from medclip_jax.models import build_model, layers, model_config
from medclip_jax.models.vit import VisionTransformer

TOWER = dict(image_size=32, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64)


def tower(keep: float) -> VisionTransformer:
    return VisionTransformer(**TOWER, token_keep_fraction=keep)


@pytest.fixture(scope="module")
def tower_and_params():
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    params = tower(1.0).init(jax.random.key(1), images)["params"]
    return images, params


def kept_subset(keep: float, params, images, rng) -> np.ndarray:
    """The patch indices the tower keeps for `rng`: `drop_tokens` on the patch numbers."""
    numbers = jnp.broadcast_to(jnp.arange(16, dtype=jnp.float32)[None, :, None], (4, 16, 1))
    picked = tower(keep).apply({"params": params}, numbers,
                               method=VisionTransformer.drop_tokens, rngs={"dropout": rng})
    return np.asarray(picked[..., 0]).astype(int)


def by_hand(params, images, subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tower on the kept patches, from its params: patch embedding + position, the class
    token, each block and ln_post applied one by one."""
    patches = images.reshape(4, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(4, 16, -1)
    kernel = params["patch_embed"]["kernel"].reshape(-1, 32)
    x = patches @ kernel + params["pos_embed"][1:]
    x = np.take_along_axis(np.asarray(x), subset[..., None], axis=1)
    cls = np.broadcast_to(params["cls_token"] + params["pos_embed"][0], (4, 1, 32))
    x = jnp.concatenate([cls, x], axis=1)
    x = layers.layer_norm(1e-5, jnp.float32, "ln_pre").apply({"params": params["ln_pre"]}, x)
    for i in range(2):
        block = layers.PreNormBlock(2, 64, "quick_gelu", 1e-5)
        x = block.apply({"params": params[f"block_{i}"]}, x)
    x = layers.layer_norm(1e-5, jnp.float32, "ln_post").apply({"params": params["ln_post"]}, x)
    return np.asarray(x[:, 0]), np.asarray(x[:, 1:])


@pytest.mark.parametrize("keep, count", [(0.5, 8), (0.25, 4), (0.01, 1)])
def test_train_pass_is_the_blocks_on_a_random_subset_of_patches(tower_and_params, keep, count):
    images, params = tower_and_params
    rng = jax.random.key(7)
    pooled, tokens = tower(keep).apply({"params": params}, images, train=True,
                                       rngs={"dropout": rng})
    assert tokens.shape == (4, count, 32)
    subset = kept_subset(keep, params, images, rng)
    assert subset.shape == (4, count)
    assert all(len(set(row)) == count for row in subset)          # no patch twice
    if count > 1:
        assert len({tuple(sorted(row)) for row in subset}) > 1    # each example its own draw
    want_pooled, want_tokens = by_hand(params, images, subset)
    np.testing.assert_allclose(pooled, want_pooled, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(tokens, want_tokens, rtol=2e-5, atol=2e-5)


def test_subsets_are_uniform_over_patches(tower_and_params):
    """Over many draws every patch is kept about `keep` of the time."""
    images, params = tower_and_params
    counts = np.zeros(16)
    for seed in range(50):
        counts += np.bincount(kept_subset(0.5, params, images, jax.random.key(seed)).ravel(),
                              minlength=16)
    share = counts / (50 * 4)
    assert np.all(np.abs(share - 0.5) < 0.15), share


def test_evaluation_and_full_keep_see_every_patch(tower_and_params):
    images, params = tower_and_params
    full = tower(1.0).apply({"params": params}, images)
    for keep in (0.5, 1.0):
        pooled, tokens = tower(keep).apply({"params": params}, images, train=False)
        np.testing.assert_array_equal(pooled, full[0])
        assert tokens.shape == (4, 16, 32)
    pooled, _ = tower(1.0).apply({"params": params}, images, train=True,
                                 rngs={"dropout": jax.random.key(3)})
    np.testing.assert_allclose(pooled, full[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(full[0], by_hand(params, images,
                                                np.tile(np.arange(16), (4, 1)))[0],
                               rtol=2e-5, atol=2e-5)


def tower_flops(keep: float, image_size: int = 64) -> float:
    model = VisionTransformer(**{**TOWER, "image_size": image_size}, token_keep_fraction=keep)
    images = jnp.zeros((8, image_size, image_size, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]

    def loss(p, x):
        pooled, tokens = model.apply({"params": p}, x, train=True,
                                     rngs={"dropout": jax.random.key(0)})
        return jnp.sum(pooled) + jnp.sum(tokens)

    cost = jax.jit(jax.grad(loss)).lower(params, images).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_dropping_half_the_patches_halves_the_tower_cost():
    """64 patches: the blocks run on 33 tokens instead of 65 (the patch embedding still sees
    every patch), so the training pass costs about half."""
    ratio = tower_flops(0.5) / tower_flops(1.0)
    assert 0.45 < ratio < 0.6, ratio


def test_a_config_saved_without_the_field_builds_with_every_patch():
    cfg = model_config("tiny")
    del cfg.image["token_keep_fraction"]
    assert build_model(cfg).image.token_keep_fraction == 1.0


@pytest.mark.parametrize("value", [0.0, 1.5, -0.5])
def test_a_bad_fraction_names_the_field(value):
    cfg = model_config("tiny")
    cfg.image.token_keep_fraction = value
    with pytest.raises(UserError, match=r"^config\.model\.image\.token_keep_fraction must be "
                                        r"in \(0, 1\]"):
        build_model(cfg)


def tuning_config(data_dir: str, keep: float, tuning: int) -> ml_collections.ConfigDict:
    from conftest import tiny_config
    return tiny_config(data_dir, max_steps=4, unmasked_tuning_steps=tuning,
                       **{"model.image.token_keep_fraction": keep, "eval.every_steps": 0})


@pytest.mark.parametrize("keep, tuning, message", [
    (1.0, 2, r"config\.unmasked_tuning_steps=2 needs config\.model\.image\.token_keep_fraction"),
    (0.5, 4, r"config\.unmasked_tuning_steps=4 must be fewer than the run's 4 steps"),
    (0.5, -1, r"config\.unmasked_tuning_steps"),
])
def test_tuning_errors_name_the_field(tiny_data_dir, tmp_path, keep, tuning, message):
    from medclip_jax import train
    with pytest.raises(UserError, match=message):
        train.setup(tuning_config(tiny_data_dir, keep, tuning), str(tmp_path))


@pytest.mark.slow
def test_the_last_steps_train_on_whole_images(tiny_data_dir, tmp_path, capsys):
    """Four steps at keep 0.5, the last two unmasked: two train programs, the switch
    announced, and the unmasked step's image tokens are every patch."""
    from medclip_jax import train
    config = tuning_config(tiny_data_dir, 0.5, 2)
    run, checkpointer = train.setup(config, str(tmp_path / "probe"))
    checkpointer.close()
    assert run.step_fn(1) is run.train_step and run.step_fn(2) is run.unmasked_step
    assert run.unmasked_step is not run.train_step
    state = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert int(state.step) == 4
    assert "step 3: unmasked tuning (every patch kept) for the last 2 steps" in \
        capsys.readouterr().out
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
