"""Damaged and non-finite checkpoints (`medclip_jax.checkpointing`), on small trees.

The end-to-end versions, through the trainer and the eval binaries, are the fault cases of
`scripts/faults/checkpoints.py`."""

import gc
import glob
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from medclip_jax import checkpointing, sharding
from medclip_jax.errors import UserError


def _tree(scale: float = 1.0) -> tuple[dict, dict]:
    params = {"image": {"kernel": jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32)
                        * scale},
              "text": {"embed": jnp.ones((300, 16), jnp.float32) * scale,
                       "ids": jnp.arange(5, dtype=jnp.int32)}}
    train_state = {"step": jnp.asarray(3, jnp.int32),
                   "opt_state": {"mu": jnp.full((64, 32), 0.5 * scale, jnp.float32)}}
    return params, train_state


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


def _saved_workdir(tmp_path, steps=(1, 2)) -> str:
    workdir = str(tmp_path / "run")
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=None)
    for step in steps:
        params, train_state = _tree(step)
        checkpointer.save(step, params, train_state, {"step": step})
    checkpointer.close()
    return workdir


def _step_dir(workdir: str, step: int) -> str:
    return os.path.join(workdir, "checkpoints", str(step))


def _largest_params_file(workdir: str, step: int) -> str:
    files = [f for f in glob.glob(os.path.join(_step_dir(workdir, step), "params", "**"),
                                  recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def _truncate(workdir, step):
    path = _largest_params_file(workdir, step)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garble(workdir, step):
    path = _largest_params_file(workdir, step)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(bytes((i * 37 + 11) % 256 for i in range(size // 3)))


def _delete_manifest(workdir, step):
    os.remove(os.path.join(_step_dir(workdir, step), "params", "manifest.ocdbt"))


def _delete_train_state(workdir, step):
    shutil.rmtree(os.path.join(_step_dir(workdir, step), "train_state"))


def _empty(workdir, step):
    shutil.rmtree(_step_dir(workdir, step))
    os.mkdir(_step_dir(workdir, step))


DAMAGES = {"truncated": (_truncate, "params"), "garbled": (_garble, "params"),
           "no_manifest": (_delete_manifest, "params"),
           "no_train_state": (_delete_train_state, "train_state"),
           "empty_step": (_empty, "params")}


def _restore_newest(workdir: str, lines: list[str]):
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=None)
    params, train_state = _tree()
    try:
        return checkpointer.restore_newest_readable(_abstract(params), _abstract(train_state),
                                                    report=lines.append)
    finally:
        checkpointer.close()


def test_finite_checks_match_numpy_and_name_the_first_bad_leaf():
    mesh = sharding.make_mesh({"data": 8, "fsdp": 1})
    sharded = jax.device_put(np.ones((16, 4), np.float32), NamedSharding(mesh, P("data")))
    tree = {"a": sharded, "b": {"c": np.zeros(3, np.float32), "n": np.arange(3)}, "s": 1}
    assert checkpointing.all_finite(tree) and checkpointing.first_nonfinite(tree) is None
    for bad in (np.nan, np.inf, -np.inf):
        poisoned = {**tree, "a": sharded.at[13, 2].set(bad),
                    "b": {"c": np.array([0, bad, 0], np.float32), "n": np.arange(3)}}
        reference = all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(poisoned))
        assert checkpointing.all_finite(poisoned) is bool(reference) is False
        assert checkpointing.first_nonfinite(poisoned) == "a"
        assert checkpointing.first_nonfinite({**tree, "b": poisoned["b"]}) == "b/c"


def test_save_refuses_a_non_finite_state_and_writes_nothing(tmp_path):
    workdir = _saved_workdir(tmp_path, steps=(1,))
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=1)
    params, train_state = _tree(2)
    train_state["opt_state"]["mu"] = train_state["opt_state"]["mu"].at[0, 0].set(jnp.inf)
    with pytest.raises(checkpointing.NonFiniteState, match="train_state/opt_state/mu") as e:
        checkpointer.save(2, params, train_state, {})
    assert e.value.step == 2
    checkpointer.close()
    # max_to_keep=1: a saved bad step would have rotated the good step 1 out.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_training_restore_moves_a_damaged_step_aside(damage, tmp_path):
    workdir = _saved_workdir(tmp_path)
    apply, item = DAMAGES[damage]
    apply(workdir, 2)
    lines = []
    step, params, train_state = _restore_newest(workdir, lines)
    assert step == 1
    expected_params, expected_state = _tree(1)
    for a, b in zip(jax.tree.leaves((params, train_state)),
                    jax.tree.leaves((expected_params, expected_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint step 2 is damaged: {item}: ")
    assert "2.corrupt" in lines[0]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2.corrupt"]


def test_a_failed_array_read_leaves_no_tracebacks_behind(tmp_path, capfd):
    workdir = _saved_workdir(tmp_path)
    _truncate(workdir, 2)
    assert _restore_newest(workdir, [])[0] == 1
    time.sleep(1)  # the item's other reads were still in flight when the first one failed
    gc.collect()
    assert "Traceback" not in capfd.readouterr().err


def test_a_step_holding_nan_is_moved_aside_and_never_deleted(tmp_path):
    workdir = _saved_workdir(tmp_path, steps=(1,))
    os.makedirs(os.path.join(workdir, "checkpoints", "2.corrupt"))  # an earlier damage
    # A NaN step written as the code before this check wrote them (Orbax directly).
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=None)
    params, train_state = _tree(2)
    params["text"]["embed"] = params["text"]["embed"].at[3, 3].set(jnp.nan)
    checkpointer._manager.save(2, args=checkpointing.ocp.args.Composite(
        params=checkpointing.ocp.args.StandardSave(params),
        train_state=checkpointing.ocp.args.StandardSave(train_state),
        config=checkpointing.ocp.args.JsonSave({})))
    checkpointer.close()
    lines = []
    assert _restore_newest(workdir, lines)[0] == 1
    assert lines == [f"checkpoint step 2 is damaged: params: text/embed holds NaN or Inf; "
                     f"moved it aside to {os.path.join(workdir, 'checkpoints', '2.corrupt.1')}"]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
        "1", "2.corrupt", "2.corrupt.1"]


def test_nothing_readable_gives_none_and_keeps_every_folder(tmp_path):
    workdir = _saved_workdir(tmp_path)
    _empty(workdir, 2)
    _delete_manifest(workdir, 1)
    lines = []
    assert _restore_newest(workdir, lines) is None
    assert len(lines) == 2
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1.corrupt",
                                                                        "2.corrupt"]


def test_a_config_mismatch_is_not_damage_and_moves_nothing(tmp_path):
    workdir = _saved_workdir(tmp_path)
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=None)
    params, train_state = _tree()
    params["image"]["kernel"] = jnp.zeros((64, 48), jnp.float32)
    with pytest.raises(UserError, match="tensor params/image/kernel has shape") as e:
        checkpointer.restore_newest_readable(_abstract(params), _abstract(train_state))
    assert not isinstance(e.value, checkpointing.DamagedCheckpoint)
    checkpointer.close()
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


def test_another_process_count_is_a_mismatch_not_damage(tmp_path):
    workdir = _saved_workdir(tmp_path)
    data = os.path.join(_step_dir(workdir, 2), "data")
    os.makedirs(data)
    for index in range(2):
        open(os.path.join(data, f"process_{index}-of-2.json"), "w").write("{}")
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=None)
    params, train_state = _tree()
    with pytest.raises(UserError, match="saved by 2 process.*this run has 1") as e:
        checkpointer.restore_newest_readable(_abstract(params), _abstract(train_state),
                                             data_iterator=object())
    assert not isinstance(e.value, checkpointing.DamagedCheckpoint)
    checkpointer.close()
    assert "2" in os.listdir(os.path.join(workdir, "checkpoints"))


@pytest.mark.parametrize("damage", ["truncated", "no_manifest", "empty_step"])
def test_eval_restore_names_the_step_and_item_and_older_steps_still_work(damage, tmp_path):
    workdir = _saved_workdir(tmp_path)
    DAMAGES[damage][0](workdir, 2)
    params, _ = _tree()
    with pytest.raises(UserError, match=r"checkpoint step 2 is damaged: \w+: .*"
                                        r"\(--step picks another one: \[1\]\)"):
        checkpointing.restore_config(workdir)
        checkpointing.restore_params(workdir, _abstract(params))
    restored, step = checkpointing.restore_params(workdir, _abstract(params), step=1)
    assert step == 1
    np.testing.assert_array_equal(np.asarray(restored["text"]["embed"]), np.ones((300, 16)))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


def test_eval_restore_names_the_first_non_finite_tensor(tmp_path):
    workdir = str(tmp_path / "run")
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=None)
    params, train_state = _tree()
    params["image"]["kernel"] = params["image"]["kernel"].at[1, 1].set(jnp.inf)
    checkpointer._manager.save(5, args=checkpointing.ocp.args.Composite(
        params=checkpointing.ocp.args.StandardSave(params),
        config=checkpointing.ocp.args.JsonSave({})))
    checkpointer.close()
    with pytest.raises(UserError, match=r"checkpoint step 5 is damaged: params: image/kernel "
                                        r"holds NaN or Inf \(no other step to pick\)"):
        checkpointing.restore_params(workdir, _abstract(params))
