"""Damaged checkpoints, NaN steps and impossible optimizer values.

Every case starts from one trained workdir (the tiny preset, checkpoints at steps 2 and 4),
copied per case, and damages it the way disks and jobs do: a truncated or garbled params
file, a deleted ``manifest.ocdbt`` or ``train_state`` item, an empty newest step folder, a
params item that holds NaN. Training must move the damaged step aside and resume from the
older one; eval binaries must stop with one line naming the step and the item.
"""

import functools
import glob
import os
import re
import shutil
import sys
from typing import Callable

from faults import Case
from faults.common import NotHeld, Scratch, checkpoint_steps, expect_one_line_error, \
    expect_success, run

#: The trained workdir's checkpoint steps (max_steps=4, the tiny preset saves every 2).
OLDER, NEWEST = 2, 4


@functools.lru_cache(maxsize=None)
def trained_workdir(root: str, data_dir: str) -> str:
    """A 4-step tiny run, trained once per process; cases copy it."""
    workdir = os.path.join(root, "checkpoints_trained")
    if checkpoint_steps(workdir) != [OLDER, NEWEST]:
        shutil.rmtree(workdir, ignore_errors=True)
        result = Scratch(root, "checkpoints_trained").train(
            workdir, "--config.max_steps=4", "--config.checkpoint.every_steps=2",
            "--config.eval.every_steps=0")
        expect_success(result)
    return workdir


def copy_of_trained(scratch: Scratch, name: str = "run") -> str:
    workdir = scratch.path(name)
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(trained_workdir(scratch.root, scratch.data_dir), workdir)
    return workdir


def step_dir(workdir: str, step: int) -> str:
    return os.path.join(workdir, "checkpoints", str(step))


def largest_params_file(workdir: str, step: int) -> str:
    files = [f for f in glob.glob(os.path.join(step_dir(workdir, step), "params", "**"),
                                  recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def truncate_params_file(workdir: str) -> None:
    path = largest_params_file(workdir, NEWEST)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def garble_params_file(workdir: str) -> None:
    path = largest_params_file(workdir, NEWEST)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(bytes((i * 37 + 11) % 256 for i in range(size // 3)))


def delete_params_manifest(workdir: str) -> None:
    os.remove(os.path.join(step_dir(workdir, NEWEST), "params", "manifest.ocdbt"))


def delete_train_state_item(workdir: str) -> None:
    shutil.rmtree(os.path.join(step_dir(workdir, NEWEST), "train_state"))


def empty_newest_step_folder(workdir: str) -> None:
    shutil.rmtree(step_dir(workdir, NEWEST))
    os.mkdir(step_dir(workdir, NEWEST))


#: Damage -> what the one line must say after the step (the item, or that there is none).
DAMAGES: dict[str, tuple[Callable[[str], None], str]] = {
    "truncated_params_file": (truncate_params_file, "params: "),
    "garbled_params_file": (garble_params_file, "params: "),
    "deleted_params_manifest": (delete_params_manifest, "params: "),
    "deleted_train_state_item": (delete_train_state_item, "train_state: "),
    "empty_newest_step_folder": (empty_newest_step_folder, "the step folder holds no items"),
}

#: Writes step `new` of a workdir: step `old`'s items, with one params tensor set to NaN (with
#: Orbax itself, as a garbled-but-readable file would decode). Prints the tensor's path.
POISON_SNIPPET = r"""
import os, shutil, sys
import jax, numpy as np, orbax.checkpoint as ocp
directory, old, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
manager = ocp.CheckpointManager(directory, item_handlers={
    "params": ocp.StandardCheckpointHandler()})
device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                      manager.item_metadata(old)["params"])
params = manager.restore(old, args=ocp.args.Composite(
    params=ocp.args.StandardRestore(target)))["params"]
leaves = jax.tree_util.tree_flatten_with_path(params)[0]
path, leaf = leaves[len(leaves) // 2]
poisoned = jax.tree_util.tree_map_with_path(
    lambda p, x: np.full(x.shape, np.nan, x.dtype) if p == path else np.asarray(x), params)
manager.save(new, args=ocp.args.Composite(params=ocp.args.StandardSave(poisoned)))
manager.wait_until_finished()
for item in ("train_state", "data", "config"):
    shutil.copytree(os.path.join(directory, str(old), item), os.path.join(directory, str(new), item))
print("/".join(str(getattr(k, "key", k)) for k in path))
"""

#: Exit 0 when every params tensor of a step is finite (read with Orbax, not the library).
FINITE_SNIPPET = r"""
import sys
import jax, numpy as np, orbax.checkpoint as ocp
directory, step = sys.argv[1], int(sys.argv[2])
manager = ocp.CheckpointManager(directory, item_handlers={
    "params": ocp.StandardCheckpointHandler()})
device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                      manager.item_metadata(step)["params"])
params = manager.restore(step, args=ocp.args.Composite(
    params=ocp.args.StandardRestore(target)))["params"]
sys.exit(0 if all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params)) else 1)
"""


def poison_step(workdir: str, old: int, new: int) -> str:
    """Adds step `new` with NaN in one params tensor; returns that tensor's path."""
    result = run([sys.executable, "-c", POISON_SNIPPET, os.path.join(workdir, "checkpoints"),
                  str(old), str(new)], check=True)
    return result.stdout.strip().splitlines()[-1]


def expect_moved_aside(workdir: str, step: int) -> None:
    folder = os.path.join(workdir, "checkpoints", f"{step}.corrupt")
    if not os.path.isdir(folder):
        raise NotHeld(f"step {step} was not moved aside to {folder}: "
                      f"{sorted(os.listdir(os.path.join(workdir, 'checkpoints')))}")


def resumes_past_damage(damage: str) -> Callable[[Scratch], None]:
    """Training on the damaged workdir: one line naming step and item, the step moved aside
    to ``<step>.corrupt``, resumed from the older step and trained on to the end."""
    apply, item = DAMAGES[damage]

    def case(scratch: Scratch) -> None:
        workdir = copy_of_trained(scratch)
        apply(workdir)
        result = scratch.train(workdir, "--config.max_steps=6", "--config.eval.every_steps=0")
        expect_success(result, f"checkpoint step {NEWEST} is damaged: ", item,
                       f"Resumed from checkpoint at step {OLDER}")
        expect_moved_aside(workdir, NEWEST)
        if checkpoint_steps(workdir)[-1] != 6:
            raise NotHeld(f"training did not reach step 6: {checkpoint_steps(workdir)}")

    return case


def damaged_checkpoint_on_two_processes(scratch: Scratch) -> None:
    """A 2-process job whose newest step has a truncated params file: both processes agree
    it is damaged, process 0 moves it aside (once), both resume from the older step."""
    from faults.processes import run_pair
    workdir = scratch.path("run")
    steps = ("--config.eval.every_steps=0", f"--config.checkpoint.every_steps={OLDER}")
    for result in run_pair(scratch, workdir, f"--config.max_steps={NEWEST}", *steps):
        expect_success(result)
    truncate_params_file(workdir)
    results = run_pair(scratch, workdir, "--config.max_steps=6", *steps)
    for result in results:
        expect_success(result, f"Resumed from checkpoint at step {OLDER}")
    expect_success(results[0], f"checkpoint step {NEWEST} is damaged: ", "params")
    expect_moved_aside(workdir, NEWEST)
    if checkpoint_steps(workdir)[-1] != 6 or os.path.isdir(step_dir(workdir, NEWEST) +
                                                           ".corrupt.1"):
        raise NotHeld(f"expected one move aside and a run to step 6: "
                      f"{sorted(os.listdir(os.path.join(workdir, 'checkpoints')))}")


def damaged_checkpoints_through_eval(scratch: Scratch) -> None:
    """Each damage through evals.zero_shot: one line, exit 2, naming the step and the item
    (train_state is not read by evals: that step still evaluates); --step OLDER works."""
    for damage, (apply, item) in DAMAGES.items():
        workdir = copy_of_trained(scratch, damage)
        apply(workdir)
        result = scratch.eval_binary("evals.zero_shot", workdir)
        if item.startswith("train_state"):
            expect_success(result, f"checkpoint step {NEWEST}")
            continue
        try:
            expect_one_line_error(result, f"checkpoint step {NEWEST}", item, "--step")
        except NotHeld as e:
            raise NotHeld(f"{damage}: {e}") from None
    expect_success(scratch.eval_binary("evals.zero_shot", workdir, f"--step={OLDER}"),
                   f"checkpoint step {OLDER}")


def nan_checkpoint_through_eval(scratch: Scratch) -> None:
    workdir = copy_of_trained(scratch)
    tensor = poison_step(workdir, NEWEST, 6)
    expect_one_line_error(scratch.eval_binary("evals.zero_shot", workdir),
                          "checkpoint step 6", tensor, "NaN")
    expect_success(scratch.eval_binary("evals.zero_shot", workdir, f"--step={NEWEST}"),
                   f"checkpoint step {NEWEST}")


def nan_checkpoint_resume(scratch: Scratch) -> None:
    """A readable step whose params hold NaN is not trained on: moved aside like damage."""
    workdir = copy_of_trained(scratch)
    tensor = poison_step(workdir, NEWEST, 6)
    result = scratch.train(workdir, "--config.max_steps=8", "--config.eval.every_steps=0")
    expect_success(result, f"checkpoint step 6 is damaged: params: {tensor} holds NaN",
                   f"Resumed from checkpoint at step {NEWEST}")
    expect_moved_aside(workdir, 6)


def nan_step_between_saves(scratch: Scratch) -> None:
    """lr 1e30 makes the state NaN at step 2; checkpoints every step, metrics every 4,
    keeping 2: no NaN step is saved, and the named last good step is on disk and finite."""
    workdir = scratch.path("run")
    shutil.rmtree(workdir, ignore_errors=True)
    result = scratch.train(workdir, "--config.max_steps=8", "--config.log_every_steps=4",
                           "--config.checkpoint.every_steps=1",
                           "--config.checkpoint.max_to_keep=2",
                           "--config.optim.learning_rate=1e30", "--config.eval.every_steps=0")
    line = expect_one_line_error(result, "training diverged", "last good checkpoint is step")
    good = int(re.search(r"last good checkpoint is step (\d+)", line).group(1))
    if good not in checkpoint_steps(workdir):
        raise NotHeld(f"the named step {good} is not on disk: {checkpoint_steps(workdir)}")
    for step in checkpoint_steps(workdir):
        finite = run([sys.executable, "-c", FINITE_SNIPPET,
                      os.path.join(workdir, "checkpoints"), str(step)])
        if finite.returncode != 0:
            raise NotHeld(f"checkpoint step {step} holds NaN/Inf ({line!r}): "
                          f"{finite.stderr[-500:]}")


def negative_learning_rate(scratch: Scratch) -> None:
    workdir = scratch.path("run")
    result = scratch.train(workdir, "--config.optim.learning_rate=-1")
    expect_one_line_error(result, "config.optim.learning_rate must be a finite number > 0")
    if checkpoint_steps(workdir):
        raise NotHeld(f"a checkpoint was written: {checkpoint_steps(workdir)}")


CASES = [
    *(Case(damage, damage == "truncated_params_file", resumes_past_damage(damage),
           f"training prints 'checkpoint step N is damaged: {item.strip()}...', moves the "
           f"step to checkpoints/N.corrupt and resumes from the newest readable step")
      for damage, (_, item) in DAMAGES.items()),
    Case("damaged_checkpoint_on_two_processes", False, damaged_checkpoint_on_two_processes,
         "in a 2-process job the damaged newest step is moved aside once and every process "
         "resumes from the same older step"),
    Case("damaged_checkpoints_through_eval", False, damaged_checkpoints_through_eval,
         "eval binaries: one line 'checkpoint step N is damaged: <item>: ... (--step picks "
         "another one: [...])', exit 2; --step=<older> evaluates that step"),
    Case("nan_checkpoint_through_eval", True, nan_checkpoint_through_eval,
         "eval binaries: one line naming the step and the first tensor holding NaN or Inf, "
         "exit 2"),
    Case("nan_checkpoint_resume", False, nan_checkpoint_resume,
         "training moves a step whose params hold NaN/Inf aside like a damaged one and "
         "resumes from the step before"),
    Case("nan_step_between_saves", False, nan_step_between_saves,
         "a NaN/Inf state is never saved: 'training diverged: <tensor> holds NaN or Inf (not "
         "saved) at step N; the last good checkpoint is step M', exit 2"),
    Case("negative_learning_rate", True, negative_learning_rate,
         "'error: config.optim.learning_rate must be a finite number > 0, got -1.0' at "
         "start-up, exit 2 (as for every impossible config.optim value)"),
]
