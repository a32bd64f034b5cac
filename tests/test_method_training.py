"""A short tiny-preset run per method: the loss goes down."""

import importlib
import json

import numpy as np
import pytest

from conftest import tiny_config
from medclip_jax import train


@pytest.mark.parametrize("method", ["convirt", "vse", "cyclip"])
def test_loss_decreases(method, tiny_data_dir, tmp_path):
    config = importlib.import_module(f"configs.{method}").get_config("tiny")
    base = tiny_config(tiny_data_dir)
    config.data.data_dir = base.data.data_dir
    config.num_epochs = 8.0
    config.optim.learning_rate = 3e-3
    config.eval.every_steps = 0
    config.checkpoint.every_steps = 1000
    train.train_and_evaluate(config, str(tmp_path))
    losses = [json.loads(line)["train/loss"] for line in open(tmp_path / "metrics.jsonl")
              if "train/loss" in line]
    assert len(losses) == 48
    assert np.mean(losses[-8:]) < 0.9 * np.mean(losses[:8]), losses
