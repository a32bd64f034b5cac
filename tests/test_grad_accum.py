"""Gradient accumulation keeps every negative: same update as the full batch at once."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from medclip_jax.models import params as model_params
from medclip_jax import methods, sharding, train
from medclip_jax.errors import UserError
from medclip_jax.models import build_model


# The trainer-level check (three steps with 4 micro-batches reach the params of the full
# batch, on a data x fsdp mesh) is `test_train.py`'s data-parallel / FSDP / accumulation test.


def test_micro_batches_must_split_over_devices(tiny_data_dir, tmp_path):
    with pytest.raises(UserError, match="config.grad_accum_steps=4"):
        train.setup(tiny_config(tiny_data_dir, batch_size=16, grad_accum_steps=4),
                    str(tmp_path))


def test_split_and_merge_are_inverse():
    batch = {"x": np.arange(24).reshape(12, 2)}
    micro = train.split_microbatches(batch, 3)
    assert micro["x"].shape == (3, 4, 2)
    np.testing.assert_array_equal(micro["x"][1, :, 0], [2, 8, 14, 20])
    merged = train.merge_microbatches({"x": micro["x"], "s": np.ones(3)}, 3)
    np.testing.assert_array_equal(merged["x"], batch["x"])
    assert merged["s"].shape == ()


@pytest.mark.slow
@pytest.mark.parametrize("method", [m.name for m in methods.registry().values() if m.inputs])
def test_accumulated_grads_equal_full_batch_grads_with_views_heads_and_state(method):
    import importlib
    from medclip_jax.data import synthetic_batch
    config = importlib.import_module(f"configs.{method}").get_config("tiny")
    config.model.text.vocab_size = 100
    config.data.mlm.max_predictions = 3
    model = build_model(config.model, method)
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    batch = sharding.to_global_batch(synthetic_batch.random_batch(config, 16, seed=3), mesh)
    params = train.init_params(model, config.model, jax.random.key(0),
                               sharding.tree_shardings(
                                   model_params.abstract_params(model, config.model),
                                   ((".*", "fsdp"),), mesh))
    state = methods.init_method_state(method, config.loss, config.model.embed_dim)
    if state:  # A partly filled queue, so the nearest-neighbour term takes part.
        rng = np.random.default_rng(1)
        state = dict(state, text_queue=rng.normal(size=state["text_queue"].shape).astype(
            np.float32), queue_valid=np.arange(len(state["queue_valid"])) < 20)
    results = {}
    for accum in (1, 2):
        grad_fn = jax.jit(train.make_grad_fn(model, methods.bind_loss(method, config.loss, mesh),
                                             accum, mesh))
        results[accum] = grad_fn(params, state, batch, jax.random.key(1))
    (loss_1, (metrics_1, _)), grads_1 = results[1]
    (loss_2, (metrics_2, _)), grads_2 = results[2]
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(grads_1)[0],
                            jax.tree.leaves(grads_2)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-6,
                                   err_msg=jax.tree_util.keystr(path))
