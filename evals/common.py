"""Flags and set-up shared by the evaluation binaries."""

import os

from absl import flags
from ml_collections import config_flags

from medclip_jax.evaluation import runner

config_flags.DEFINE_config_file("config", "configs/eval.py:demo",
                                "Evaluation config file (path[:preset]).")
flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")

FLAGS = flags.FLAGS


def load() -> tuple[runner.LoadedModel, str, str]:
    """The restored model, the data_dir to read and the output dir to write."""
    config = FLAGS.config
    loaded = runner.load_model(FLAGS.workdir, FLAGS.step, dict(config.mesh) or None)
    data_dir = config.data_dir or loaded.train_config.data.data_dir
    output_dir = config.output_dir or os.path.join(FLAGS.workdir, "eval")
    return loaded, data_dir, output_dir
