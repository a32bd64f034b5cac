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

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from medclip_jax import checkpointing, cli, sharding, train
from medclip_jax.errors import UserError
from medclip_jax.pretrained import init as init_lib

config_flags.DEFINE_config_file("config", None, "Training config file (path[:preset]) whose "
                                "config.init names the weights.", lock_config=True)
flags.DEFINE_string("workdir", None, "New workdir for the step-0 checkpoint.")
flags.DEFINE_bool("architecture_from_weights", True, "Take config.model's towers and heads "
                  "from the folder when both towers come from one CLIP / open_clip folder.")
flags.mark_flags_as_required(["config", "workdir"])

FLAGS = flags.FLAGS


ARCHITECTURE_FIELDS = ("image", "text", "embed_dim", "projection", "text_projection",
                       "projection_hidden_dim", "projection_activation")


def with_checkpoint_architecture(config: ml_collections.ConfigDict
                                 ) -> ml_collections.ConfigDict:
    """`config` with the towers and heads of the one CLIP / open_clip folder both towers name
    (unchanged otherwise), at the config's image size and text length."""
    specs = {f: init_lib.parse_spec(config.init[f], f) for f in ("image", "text")
             if config.init.get(f)}
    if len(specs) != 2 or specs["image"] != specs["text"] or \
            specs["image"][0] not in init_lib.DUAL_KINDS:
        return config
    _, ckpt_cfg = init_lib.import_dual(*specs["image"], config.model)
    config = ml_collections.ConfigDict(config.to_dict())
    for name in ARCHITECTURE_FIELDS:
        config.model[name] = ckpt_cfg[name]
    return config


def write_step0(config: ml_collections.ConfigDict, workdir: str,
                architecture_from_weights: bool = True) -> dict:
    """Saves the config's model with its ``config.init`` weights at step 0; returns the
    resolved config that was saved."""
    if not any((config.get("init") or {}).get(f) for f in ("image", "text")):
        raise UserError("config.init names no weights (config.init.image / config.init.text / "
                        "config.init.clip): there is nothing to import")
    train.validate_config(config)
    if architecture_from_weights:
        config = with_checkpoint_architecture(config)
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=None)
    if checkpointer.latest_step() is not None:
        checkpointer.close()
        raise UserError(f"--workdir: {workdir} already has checkpoints; give a new workdir")
    config, _, model = train.resolve_model(config)
    mesh = sharding.make_mesh(dict(config.mesh))
    params = train.init_params(model, config.model, jax.random.key(config.seed),
                               train.param_shardings(model, config, mesh))
    params = init_lib.apply_init(params, config)
    saved = config.to_dict()
    checkpointer.save(0, params, {"step": 0}, saved)
    checkpointer.close()
    return saved


def main(argv):
    del argv
    cli.maybe_initialize_distributed()

    def run():
        write_step0(FLAGS.config, FLAGS.workdir, FLAGS.architecture_from_weights)
        print(f"wrote step 0 of {FLAGS.workdir}: evaluate it with evals.zero_shot / "
              f"evals.retrieval / evals.linear_probe / evals.run_suite --workdir {FLAGS.workdir}")

    cli.run_user_main(run)


if __name__ == "__main__":
    app.run(main)
