"""Orbax checkpoints: the only module that talks to Orbax.

One checkpoint step holds four items, so that evaluation can restore the parameters alone:

* ``params``: the model parameters;
* ``train_state``: everything else the train step carries (step, optimizer state, ...);
* ``data``: the grain iterator state, so a resumed run sees exactly the batches it would have;
* ``config``: the run's config as JSON, so eval binaries rebuild the same model.
"""

import os
from typing import Any, Mapping

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from medclip_jax.errors import UserError
from medclip_jax.sharding import path_to_str


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _manager(directory: str, max_to_keep: int | None = None, create: bool = True
             ) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
    handlers = {
        "params": ocp.StandardCheckpointHandler(),
        "train_state": ocp.StandardCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


class Checkpointer:
    """Periodic saves and automatic resume for one training workdir."""

    def __init__(self, workdir: str, max_to_keep: int | None = 3):
        self.directory = checkpoint_dir(workdir)
        self._manager = _manager(self.directory, max_to_keep)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params: Any, train_state: Any, config: Mapping[str, Any],
             data_iterator: Any | None = None) -> None:
        items = {
            "params": ocp.args.StandardSave(params),
            "train_state": ocp.args.StandardSave(train_state),
            "config": ocp.args.JsonSave(dict(config)),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_params: Any, abstract_train_state: Any,
                data_iterator: Any | None = None) -> tuple[Any, Any]:
        """Restores params and train state onto the shardings of the abstract trees.

        The data iterator, when given, is restored in place.
        """
        check_shapes(self._manager, step, "params", abstract_params)
        check_shapes(self._manager, step, "train_state", abstract_train_state)
        items = {
            "params": ocp.args.StandardRestore(abstract_params),
            "train_state": ocp.args.StandardRestore(abstract_train_state),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["params"], restored["train_state"]

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _open_existing(workdir: str) -> ocp.CheckpointManager:
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise UserError(f"--workdir: no checkpoints folder at {directory}")
    return _manager(directory, create=False)


def _resolve_step(manager: ocp.CheckpointManager, step: int | None, workdir: str) -> int:
    steps = manager.all_steps()
    if not steps:
        raise UserError(f"--workdir: no checkpoint in {checkpoint_dir(workdir)}")
    if step is None or step < 0:
        return max(steps)
    if step not in steps:
        raise UserError(f"--step: no checkpoint at step {step} in {checkpoint_dir(workdir)}; "
                        f"available: {sorted(steps)}")
    return step


def restore_config(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
    """The training config saved with a checkpoint (latest when `step` is None), and its step."""
    manager = _open_existing(workdir)
    step = _resolve_step(manager, step, workdir)
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    manager.close()
    return restored["config"], step


def restore_params(workdir: str, abstract_params: Any, step: int | None = None
                   ) -> tuple[Any, int]:
    """Only the parameters of a checkpoint, placed by the abstract tree's shardings."""
    manager = _open_existing(workdir)
    step = _resolve_step(manager, step, workdir)
    check_shapes(manager, step, "params", abstract_params)
    restored = manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    manager.close()
    return restored["params"], step


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    return {path_to_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_shapes(manager: ocp.CheckpointManager, step: int, item: str, abstract: Any) -> None:
    """Fails with one line naming the first tensor whose saved shape differs from the config's."""
    metadata = manager.item_metadata(step)[item]
    saved = _leaves_by_path(metadata)
    expected = _leaves_by_path(abstract)
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        raise UserError(
            f"checkpoint step {step} ({item}) does not match the config: missing "
            f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
            f"{extra[:3]}{'...' if len(extra) > 3 else ''}")
    for name, leaf in expected.items():
        saved_shape = tuple(getattr(saved[name], "shape", ()) or ())
        if saved_shape != tuple(np.shape(leaf)):
            raise UserError(f"checkpoint step {step}: tensor {item}/{name} has shape "
                            f"{saved_shape} in the checkpoint but {tuple(np.shape(leaf))} "
                            f"in the config")
