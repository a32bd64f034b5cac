"""Orbax checkpoints: the only module that talks to Orbax.

One checkpoint step holds four items, so that evaluation can restore the parameters alone:

* ``params``: the model parameters;
* ``train_state``: everything else the train step carries (step, optimizer state, ...);
* ``data``: the grain iterator state, so a resumed run sees exactly the batches it would have;
* ``config``: the run's config as JSON, so eval binaries rebuild the same model.

A step that cannot be read back (a truncated or garbled file, a deleted item or manifest, NaN
or Inf values) raises `DamagedCheckpoint` naming the step and the item. Training then moves
the step folder aside to ``<step>.corrupt`` (never deletes it) and resumes from the newest
readable one (`Checkpointer.restore_newest_readable`); eval binaries stop with that line. A
checkpoint that does not match the config (other tensor shapes, another process count) is
not damage: it stays a plain `UserError` and nothing is moved.
"""

import functools
import gc
import logging
import os
import re
import sys
import time
import traceback
from typing import Any, Callable, Mapping

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from medclip_jax.errors import UserError
from medclip_jax import sharding
from medclip_jax.sharding import path_to_str

#: The items every step holds (`Checkpointer.save` writes `data` only with an iterator).
ITEMS = ("params", "train_state", "data", "config")


class DamagedCheckpoint(UserError):
    """A checkpoint step that cannot be read back: which step, which item, and why."""

    def __init__(self, step: int, item: str, reason: str):
        super().__init__(f"checkpoint step {step} is damaged: {item}: {reason}")
        self.step, self.item, self.reason = step, item, reason


class NonFiniteState(UserError):
    """A state that must not be saved: `tensor` (``params/...``) holds NaN or Inf."""

    def __init__(self, step: int, tensor: str):
        super().__init__(f"step {step}: {tensor} holds NaN or Inf")
        self.step, self.tensor = step, tensor


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


@functools.cache
def _save_replicated_arrays_whole() -> None:
    """With one process, every replica of a replicated array is local, so Orbax's
    replica-parallel save (each replica writes a slice) writes the same bytes as one replica
    writing the whole array, but first compiles a slicing program per leaf shape: about 5 s of
    each fresh process's first save on a tiny model. Multi-process jobs keep it, since there
    the replicas' hosts share the writing. Orbax reads this from its process-wide registry, so
    it is set once per process, without Orbax's warning that an override overrides."""
    if jax.process_count() == 1:
        absl_logger = absl_logging.get_absl_logger()
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            ocp.type_handlers.register_type_handler(
                jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                override=True)
        finally:
            absl_logger.setLevel(level)


def _manager(directory: str, max_to_keep: int | None = None, create: bool = True
             ) -> ocp.CheckpointManager:
    _save_replicated_arrays_whole()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
    handlers = {
        "params": ocp.StandardCheckpointHandler(),
        "train_state": ocp.StandardCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _float_leaves_by_path(tree: Any) -> dict[str, Any]:
    """The float leaves (ids, counters and step numbers cannot be NaN), by path."""
    return {name: leaf for name, leaf in _leaves_by_path(tree).items()
            if jnp.issubdtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype,
                              jnp.inexact)}


def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


_finite_per_leaf = jax.jit(_finite_flags)
_all_finite = jax.jit(lambda leaves: jnp.all(_finite_flags(leaves)))


def all_finite(tree: Any) -> bool:
    """Whether every float leaf is free of NaN and Inf: one jitted reduction to a scalar on
    the devices (no host copy of the tree), cheap enough for every save."""
    leaves = list(_float_leaves_by_path(tree).values())
    return not leaves or bool(_all_finite(leaves))


def first_nonfinite(tree: Any) -> str | None:
    """The path of the first float leaf holding NaN or Inf (tree order), None if none does."""
    named = _float_leaves_by_path(tree)
    if not named:
        return None
    finite = np.asarray(_finite_per_leaf(list(named.values())))
    bad = [name for name, ok in zip(named, finite) if not ok]
    return bad[0] if bad else None


def _short_reason(error: BaseException) -> str:
    """The innermost cause's first line, without TensorStore's multi-line spec dump."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.split(r" \[tensorstore_spec=| See full TensorStore details", text)[0]
    return text if len(text) <= 300 else text[:297] + "..."


def _raised_in_orbax(error: BaseException | None) -> bool:
    frames = traceback.extract_tb(error.__traceback__) if error is not None else []
    return any(f"{os.sep}orbax{os.sep}" in f.filename for f in frames)


def _is_failed_read_aftermath(error: BaseException | None) -> bool:
    """When one array read fails, Orbax closes its event loop while the item's other reads
    are in flight: each then reports "Event loop is closed" or its own read error (as an
    unraisable exception, or an asyncio "exception was never retrieved" log record), dozens
    of tracebacks after the one line already printed."""
    if not (_READS_IN_PROGRESS[0] or _FAILED_READS):
        return False
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    return _raised_in_orbax(error) or any(path in str(error) for path in _FAILED_READS)


class _DropFailedReadAftermath(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        drop = bool(record.exc_info) and _is_failed_read_aftermath(record.exc_info[1])
        _AFTERMATH_REPORTS[0] += drop
        return not drop


def _wait_for_failed_read_to_settle(quiet_s: float = 0.3, limit_s: float = 5.0) -> None:
    """Waits (at most `limit_s`) until the failed item's in-flight reads have reported: one
    reporting after the interpreter began to exit would bypass the hook and print."""
    start = last_change = time.monotonic()
    seen = -1
    while time.monotonic() - start < limit_s:
        gc.collect()
        if _AFTERMATH_REPORTS[0] != seen:
            seen, last_change = _AFTERMATH_REPORTS[0], time.monotonic()
        elif time.monotonic() - last_change >= quiet_s:
            return
        time.sleep(0.05)


#: The item folders whose read failed in this process (their late reports are dropped),
#: whether a read is under way (a report may come before its exception reaches `_read`),
#: and how many reports were dropped.
_FAILED_READS: set[str] = set()
_READS_IN_PROGRESS = [0]
_AFTERMATH_REPORTS = [0]


def _drop_failed_read_aftermath() -> None:
    """Drops those reports while a read is under way and once one has failed; anything else
    still reaches the previous hook and the asyncio log."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_failed_read_aftermath", False):
        return

    def hook(unraisable: Any) -> None:
        if _is_failed_read_aftermath(unraisable.exc_value):
            _AFTERMATH_REPORTS[0] += 1
        else:
            previous(unraisable)

    hook.drops_failed_read_aftermath = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_DropFailedReadAftermath())


def _read(manager: ocp.CheckpointManager, step: int, item: str, read: Callable[[], Any]
          ) -> Any:
    """`read()`, an Orbax read of one item; whatever it raises (Orbax and TensorStore raise
    plain Exception, ValueError, KeyError for damaged files) becomes `DamagedCheckpoint`."""
    _drop_failed_read_aftermath()
    _READS_IN_PROGRESS[0] += 1
    try:
        return read()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- only around the read itself
        _FAILED_READS.add(os.path.join(_step_dir(manager, step), item))
        _wait_for_failed_read_to_settle()
        raise DamagedCheckpoint(step, item, _short_reason(e)) from None
    finally:
        _READS_IN_PROGRESS[0] -= 1


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(str(manager.directory), str(step))


def _check_item_present(manager: ocp.CheckpointManager, step: int, item: str) -> None:
    folder = _step_dir(manager, step)
    present = sorted(set(ITEMS) & set(os.listdir(folder))) if os.path.isdir(folder) else []
    if not present:
        raise DamagedCheckpoint(step, item, "the step folder holds no items")
    if item not in present:
        raise DamagedCheckpoint(step, item, f"the item folder is missing (present: "
                                            f"{', '.join(present)})")


def _item_metadata(manager: ocp.CheckpointManager, step: int, item: str) -> Any:
    """The saved tree's metadata of one item; a missing item or metadata file is damage."""
    _check_item_present(manager, step, item)
    metadata = _read(manager, step, item, lambda: manager.item_metadata(step))
    if item not in metadata.keys() or metadata[item] is None:
        raise DamagedCheckpoint(step, item, "its metadata (_METADATA) is missing or unreadable")
    return metadata[item]


def _restore_item(manager: ocp.CheckpointManager, step: int, item: str, args: Any) -> Any:
    _check_item_present(manager, step, item)
    return _read(manager, step, item, lambda: manager.restore(
        step, args=ocp.args.Composite(**{item: args}))[item])


def _check_finite(step: int, item: str, tree: Any) -> None:
    bad = first_nonfinite(tree)
    if bad is not None:
        raise DamagedCheckpoint(step, item, f"{bad} holds NaN or Inf")


def _check_data_process_count(manager: ocp.CheckpointManager, step: int) -> None:
    """The grain state is saved per process: another process count is a mismatch with this
    run, not damage (the files are there, for other processes)."""
    _check_item_present(manager, step, "data")
    data_dir = os.path.join(_step_dir(manager, step), "data")
    counts = {m.group(1) for m in (re.fullmatch(r"process_\d+-of-(\d+)\.json", name)
                                   for name in os.listdir(data_dir)) if m}
    if counts and str(jax.process_count()) not in counts:
        raise UserError(f"checkpoint step {step} was saved by {', '.join(sorted(counts))} "
                        f"process(es) but this run has {jax.process_count()}: the input "
                        f"pipeline's position cannot be resumed with another process count")


def aside_name(directory: str, step: int) -> str:
    """``<step>.corrupt``, or ``<step>.corrupt.<n>`` with the first n not taken."""
    path = os.path.join(directory, f"{step}.corrupt")
    n = 0
    while os.path.exists(path if n == 0 else f"{path}.{n}"):
        n += 1
    return path if n == 0 else f"{path}.{n}"


class Checkpointer:
    """Periodic saves and automatic resume for one training workdir."""

    def __init__(self, workdir: str, max_to_keep: int | None = 3):
        self.directory = checkpoint_dir(workdir)
        self._manager = _manager(self.directory, max_to_keep)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params: Any, train_state: Any, config: Mapping[str, Any],
             data_iterator: Any | None = None) -> None:
        """Saves a step; raises `NonFiniteState` (saving nothing) when the params or train
        state hold NaN or Inf, so that every checkpoint on disk is a good one and
        ``max_to_keep`` never rotates good ones out for bad ones."""
        state = {"params": params, "train_state": train_state}
        if not all_finite(state):
            raise NonFiniteState(step, first_nonfinite(state) or "the state")
        items = {
            "params": ocp.args.StandardSave(params),
            "train_state": ocp.args.StandardSave(train_state),
            "config": ocp.args.JsonSave(dict(config)),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def _read_state(self, step: int, abstract_params: Any, abstract_train_state: Any,
                    data_iterator: Any | None) -> tuple[Any, Any]:
        check_shapes(self._manager, step, "params", abstract_params)
        check_shapes(self._manager, step, "train_state", abstract_train_state)
        _restore_item(self._manager, step, "config", ocp.args.JsonRestore())
        params = _restore_item(self._manager, step, "params",
                               ocp.args.StandardRestore(abstract_params))
        train_state = _restore_item(self._manager, step, "train_state",
                                    ocp.args.StandardRestore(abstract_train_state))
        if data_iterator is not None:
            _check_data_process_count(self._manager, step)
            _restore_item(self._manager, step, "data",
                          grain.checkpoint.CheckpointRestore(data_iterator))
        return params, train_state

    @staticmethod
    def _check_state_finite(step: int, params: Any, train_state: Any) -> None:
        _check_finite(step, "params", params)
        _check_finite(step, "train_state", train_state)

    def restore_newest_readable(self, abstract_params: Any, abstract_train_state: Any,
                                data_iterator: Any | None = None,
                                report: Callable[[str], None] = print
                                ) -> tuple[int, Any, Any] | None:
        """(step, params, train state) of the newest step that reads back whole and finite,
        or None when there is none. Each damaged step newer than it is moved aside to
        ``<step>.corrupt`` (by process 0; never deleted) and reported in one line. A
        mismatch with the config raises `UserError` and moves nothing.

        When None is returned after a damaged step was tried, the data iterator may hold
        that step's position: the caller starts a fresh one."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            damage = None
            try:
                params, train_state = self._read_state(step, abstract_params,
                                                       abstract_train_state, data_iterator)
            except DamagedCheckpoint as e:
                damage = e
            if sharding.all_processes(damage is None):
                try:  # A global computation: every process takes part, with the same answer.
                    self._check_state_finite(step, params, train_state)
                    return step, params, train_state
                except DamagedCheckpoint as e:
                    damage = e
            damage = damage or DamagedCheckpoint(step, "?", "unreadable on another process")
            report(f"{damage}; moved it aside to {self._move_aside(step)}")
        return None

    def _move_aside(self, step: int) -> str:
        """Renames the step folder to ``<step>.corrupt[.n]`` (process 0; the others wait)."""
        target = aside_name(self.directory, step)
        if jax.process_index() == 0:
            os.rename(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"checkpoint step {step} moved aside")
        self._manager.reload()
        return target

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


def _with_step_hint(manager: ocp.CheckpointManager, read: Callable[[], Any]) -> Any:
    """`read()`; a damaged step's line also says how to pick another one."""
    try:
        return read()
    except DamagedCheckpoint as e:
        others = sorted(s for s in manager.all_steps() if s != e.step)
        hint = f"--step picks another one: {others}" if others else "no other step to pick"
        raise UserError(f"{e} ({hint})") from None


def restore_config(workdir: str, step: int | None = None) -> tuple[dict[str, Any], int]:
    """The training config saved with a checkpoint (latest when `step` is None), and its step."""
    manager = _open_existing(workdir)
    step = _resolve_step(manager, step, workdir)
    config = _with_step_hint(manager, lambda: _restore_item(manager, step, "config",
                                                           ocp.args.JsonRestore()))
    manager.close()
    return config, step


def restore_params(workdir: str, abstract_params: Any, step: int | None = None
                   ) -> tuple[Any, int]:
    """Only the parameters of a checkpoint, placed by the abstract tree's shardings; damaged
    or non-finite params raise `UserError` naming the step and the item (or tensor)."""
    manager = _open_existing(workdir)
    step = _resolve_step(manager, step, workdir)

    def read() -> Any:
        check_shapes(manager, step, "params", abstract_params)
        params = _restore_item(manager, step, "params",
                               ocp.args.StandardRestore(abstract_params))
        _check_finite(step, "params", params)
        return params

    params = _with_step_hint(manager, read)
    manager.close()
    return params, step


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    return {path_to_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_shapes(manager: ocp.CheckpointManager, step: int, item: str, abstract: Any) -> None:
    """Fails with one line naming the first tensor whose saved shape differs from the config's
    (`UserError`); an item whose metadata cannot be read raises `DamagedCheckpoint`."""
    saved = _leaves_by_path(_item_metadata(manager, step, item))
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
