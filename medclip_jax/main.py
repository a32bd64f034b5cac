"""Training entry point.

    python -m medclip_jax.main --config configs/clip.py:demo --workdir runs/clip_demo \
        [--config.batch_size=256 ...]

Re-running the same command resumes from the latest checkpoint in the workdir.
"""

from absl import flags
from ml_collections import config_flags

from medclip_jax import cli, train

config_flags.DEFINE_config_file("config", None, "Training config file (path[:preset]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and logs go.")
flags.mark_flags_as_required(["config", "workdir"])

FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.maybe_initialize_distributed()
    cli.run_user_main(lambda: train.train_and_evaluate(FLAGS.config, FLAGS.workdir))


if __name__ == "__main__":
    cli.run_app(main)
