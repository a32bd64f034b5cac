"""A short tiny-preset run per method: the loss goes down; DeCLIP's queue survives a restart."""

import importlib
import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from helpers import set_dotted
from medclip_jax import methods, train

# Trains every method for 48 steps: the slow tier.
pytestmark = pytest.mark.slow


def run_rows() -> dict[str, tuple[str, str, dict]]:
    """label -> (config file, config argument, overrides): every method and variant of the
    registry but CLIP (`test_train.py` trains it), LiT with one block locked (a random tower
    locked whole need not learn in 48 steps)."""
    rows = {}
    for label, (config, suffix, loss) in methods.runs().items():
        if label == "clip":
            continue
        if label == "lit":
            label, suffix = "lit_1_block", ",lock=1"
        rows[label] = (config, "tiny" + suffix, {f"loss.{k}": v for k, v in loss.items()})
    return rows


RUNS = run_rows()


def method_config(name: str, data_dir: str, **extra):
    module, arg, overrides = RUNS[name]
    config = importlib.import_module(f"configs.{module}").get_config(arg)
    config.data.data_dir = tiny_config(data_dir).data.data_dir
    for key, value in {**overrides, **extra}.items():
        set_dotted(config, key, value)
    return config


def train_losses(workdir) -> list[float]:
    return [json.loads(line)["train/loss"] for line in open(workdir / "metrics.jsonl")
            if "train/loss" in line]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_loss_decreases(name, tiny_data_dir, tmp_path):
    config = method_config(name, tiny_data_dir, num_epochs=8.0,
                           **{"optim.learning_rate": 3e-3, "eval.every_steps": 0,
                              "checkpoint.every_steps": 1000})
    final = train.train_and_evaluate(config, str(tmp_path))
    losses = train_losses(tmp_path)
    assert len(losses) == 48
    assert np.mean(losses[-8:]) < 0.9 * np.mean(losses[:8]), losses
    if name == "declip":
        check_queue_restored(config, tmp_path, final.method_state)


def check_queue_restored(config, workdir, queue) -> None:
    """DeCLIP's queue: 48 steps x 16 examples x 2 text views went through a FIFO of 128 (full,
    pointer back at 0), and the final checkpoint restores it exactly."""
    assert int(np.sum(np.asarray(queue["queue_valid"]))) == 128
    assert int(queue["queue_ptr"]) == (48 * 16 * 2) % 128
    run, checkpointer = train.setup(config, str(workdir))
    checkpointer.close()
    assert int(run.state.step) == 48
    for key in queue:
        np.testing.assert_array_equal(np.asarray(jax.device_get(run.state.method_state[key])),
                                      np.asarray(jax.device_get(queue[key])), err_msg=key)
