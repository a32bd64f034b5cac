"""A step-0 workdir from published weights, so every evaluation binary can score them untrained.

The benchmark's first question starts from how well general-domain (OpenAI CLIP) or
domain-pretrained (BiomedCLIP) weights do before any training on the medical corpora. This
builds the model of a training config, loads the weights that ``config.init`` names (exactly as
training would at its first step: same checks, same tokenizer), and saves them with the config
as an Orbax checkpoint at step 0. No data is read.

    python -m evals.import_weights --config configs/clip.py:paper \\
        --config.init.clip=/models/clip-vit-base-patch16 --workdir runs/clip_vitb16_step0
    python -m evals.zero_shot --workdir runs/clip_vitb16_step0 --config configs/eval.py:paper

When both towers come from one CLIP / open_clip folder, the towers' and heads' architecture is
taken from it (``--noarchitecture_from_weights`` keeps the config's and lets a mismatch fail),
at the config's image size and text length. BiomedCLIP (an open_clip folder; the BiomedBERT
folder gives the tokenizer):

    python -m evals.import_weights --config configs/clip.py:paper \\
        --config.init.image=open_clip:/models/BiomedCLIP \\
        --config.init.text=open_clip:/models/BiomedCLIP \\
        --config.data.tokenizer=hf:/models/BiomedBERT --workdir runs/biomedclip_step0
"""

from absl import flags
from ml_collections import config_flags

from medclip_jax import cli
from medclip_jax.pretrained import step0

config_flags.DEFINE_config_file("config", None, "Training config file (path[:preset]) whose "
                                "config.init names the weights.", lock_config=True)
flags.DEFINE_string("workdir", None, "New workdir for the step-0 checkpoint.")
flags.DEFINE_bool("architecture_from_weights", True, "Take config.model's towers and heads "
                  "from the folder when both towers come from one CLIP / open_clip folder.")
flags.mark_flags_as_required(["config", "workdir"])

FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.maybe_initialize_distributed()

    def run():
        step0.write_step0(FLAGS.config, FLAGS.workdir, FLAGS.architecture_from_weights)
        print(f"wrote step 0 of {FLAGS.workdir}: evaluate it with evals.zero_shot / "
              f"evals.retrieval / evals.linear_probe / evals.run_suite --workdir {FLAGS.workdir}")

    cli.run_user_main(run)


if __name__ == "__main__":
    cli.run_app(main)
