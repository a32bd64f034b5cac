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
