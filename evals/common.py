"""Flags and set-up shared by the evaluation binaries."""

import os
from typing import Any, Callable

from absl import flags
from ml_collections import config_flags

from medclip_jax import cli
from medclip_jax.evaluation import model_view, runner
from medclip_jax.settings import EvalSettings

#: The evaluation config when ``--config`` is not given.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "eval.py") + ":demo"
config_flags.DEFINE_config_file("config", None, "Evaluation config file (path[:preset]); "
                                "default: configs/eval.py:demo.")
flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")

FLAGS = flags.FLAGS


def settings(config: Any) -> EvalSettings:
    """The eval config parsed (`settings.EvalSettings`: its defaults and checks); a parsed one
    as it is; None = every default."""
    return EvalSettings.from_config(config)


def load() -> tuple[model_view.ModelView, str, str]:
    """The restored model, the data_dir to read and the output dir to write; the eval config
    is checked first, so a mistake in it fails before the checkpoint is read."""
    config = settings(FLAGS.config)
    loaded = model_view.from_checkpoint(FLAGS.workdir, FLAGS.step, dict(config.mesh or {}) or None)
    data_dir = config.data_dir or loaded.train_config.data.data_dir
    output_dir = config.output_dir or os.path.join(FLAGS.workdir, "eval")
    return loaded, data_dir, output_dir


def publish(output_dir: str, name: str, title: str, step: int, results: dict[str, Any],
            table: str) -> None:
    """Writes `<name>_step<N>.json/.md` and prints the table."""
    path = runner.write_results(output_dir, f"{name}_step{step}",
                                {"step": step, "workdir": FLAGS.workdir, "results": results},
                                table)
    print(f"{title}, checkpoint step {step}:\n{table}\n(written to {path})", flush=True)


def run_binary(run: Callable[[], None]) -> None:
    """absl entry point of an eval binary: distributed start-up, one-line user errors."""

    def main(argv):
        del argv
        cli.maybe_initialize_distributed()
        cli.run_user_main(run)

    flags.mark_flag_as_required("workdir")
    cli.run_app(main, default_config=DEFAULT_CONFIG)
