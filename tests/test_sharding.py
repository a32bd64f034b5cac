"""Mesh construction, regex partition rules and host-local -> global batches (8 fake devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from medclip_jax import sharding
from medclip_jax.errors import UserError


def test_mesh_fills_minus_one_axis():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    assert sharding.data_parallel_size(mesh) == 8


@pytest.mark.parametrize("sizes", [{"data": 3, "fsdp": 1}, {"data": -1, "fsdp": -1},
                                   {"data": 2, "fsdp": 2}, {"model": 2}])
def test_bad_mesh_names_the_field(sizes):
    with pytest.raises(UserError, match="config.mesh"):
        sharding.make_mesh(sizes)


def test_batch_size_must_divide():
    mesh = sharding.make_mesh({"data": -1})
    sharding.check_batch_size(16, mesh)
    with pytest.raises(UserError, match="config.batch_size=12"):
        sharding.check_batch_size(12, mesh)


def test_rules_first_match_wins_and_fsdp_picks_largest_divisible_dim():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    tree = {"image": {"block_0": {"kernel": jnp.zeros((8, 12)), "bias": jnp.zeros(12)}},
            "text": {"embed": jnp.zeros((32, 8))}, "logit_scale": jnp.zeros(()),
            "odd": jnp.zeros((3, 5))}
    rules = (("bias$", "replicate"), ("text/embed", "fsdp,None"), (".*", "fsdp"))
    specs = sharding.tree_partition_specs(tree, rules, mesh)
    assert specs["image"]["block_0"]["kernel"] == P(None, "fsdp")
    assert specs["image"]["block_0"]["bias"] == P()
    assert specs["text"]["embed"] == P("fsdp", None)
    assert specs["logit_scale"] == P()
    assert specs["odd"] == P()
    with pytest.raises(UserError, match="text/embed"):
        sharding.tree_partition_specs({"text": {"embed": jnp.zeros((30, 7))}},
                                      (("text/embed", "None,fsdp"),), mesh)


def test_small_leaves_stay_replicated_and_a_rule_that_decides_nothing_is_logged(caplog):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    tree = {"kernel": jnp.zeros((64, 16)), "bias": jnp.zeros(16), "small": jnp.zeros((4, 8))}
    rules = ((".*", "fsdp"), ("^never/", "replicate"))
    with caplog.at_level("WARNING"):
        specs = sharding.tree_partition_specs(tree, rules, mesh, fsdp_min_size=1024)
    assert specs == {"kernel": P("fsdp", None), "bias": P(), "small": P()}
    assert "'^never/'" in caplog.text and "decides no parameter" in caplog.text
    assert sharding.tree_partition_specs(tree, rules[:1], mesh)["small"] == P(None, "fsdp")


def test_optimizer_state_takes_its_params_shardings_whatever_the_rules_say():
    """An anchored rule leaves `text` replicated: its Adam moments too (matching the rules
    against optimizer paths, ``0/mu/text/...``, would have sharded them by ``.*``); frozen
    leaves have no moments; counts are replicated."""
    from medclip_jax import optim
    from medclip_jax.settings import OptimSettings
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    params = {"image": {"kernel": jnp.zeros((8, 12)), "frozen": jnp.zeros((8, 4))},
              "text": {"kernel": jnp.zeros((16, 8))}, "logit_scale": jnp.zeros(())}
    rules = (("^text/", "replicate"), (".*", "fsdp"))
    param_shardings = sharding.tree_shardings(params, rules, mesh)
    settings = OptimSettings(lr_multipliers=(("image/frozen", 0.0),))
    tx, _ = optim.make_optimizer(settings, params, 10)
    state = jax.eval_shape(tx.init, params)
    shardings = sharding.mirrored_shardings(state, params, param_shardings, mesh)
    moments, others = {}, []
    for path, leaf in jax.tree_util.tree_flatten_with_path(shardings)[0]:
        name = sharding.path_to_str(path)
        moment = next((m for m in ("/mu/", "/nu/") if m in name), None)
        if moment:
            moments.setdefault(name.split(moment, 1)[1], []).append(leaf.spec)
        else:
            others.append((name, leaf.spec))
    assert moments == {"image/kernel": [P(None, "fsdp")] * 2, "text/kernel": [P()] * 2,
                       "logit_scale": [P()] * 2}
    assert others and all(spec == P() for _, spec in others), others
    assert param_shardings["text"]["kernel"].spec == P()
    assert sharding.tree_partition_specs(state, rules, mesh) != jax.tree.map(
        lambda s: s.spec, shardings, is_leaf=lambda x: hasattr(x, "spec"))


def test_path_to_str_handles_dicts_and_sequences():
    tree = {"a": [{"b": 1}], "c": (2,)}
    names = [sharding.path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert names == ["a/0/b", "c/0"]


def test_global_batch_is_split_over_all_devices():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    local = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
             "text_ids": np.ones((16, 4), np.int32), "caption": np.array(["x"] * 16)}
    batch = sharding.to_global_batch(local, mesh)
    assert set(batch) == {"image", "text_ids"}
    assert batch["image"].shape == (16, 3)
    assert len(batch["image"].sharding.device_set) == 8
    shard_rows = sorted(s.data.shape[0] for s in batch["image"].addressable_shards)
    assert shard_rows == [2] * 8
    np.testing.assert_array_equal(sharding.to_host(batch["image"]), local["image"])
