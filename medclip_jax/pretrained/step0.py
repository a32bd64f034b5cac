"""Published weights as a step-0 workdir (``evals/import_weights.py`` is its command line).

The model of a training config gets the weights its ``config.init`` names, exactly as training
would load them at its first step (same checks, same tokenizer), and is saved with the config as
an Orbax checkpoint at step 0, so every evaluation binary can score the weights untrained. No
data is read.
"""

import jax
import ml_collections

from medclip_jax import checkpointing, sharding, train
from medclip_jax.models import params as model_params
from medclip_jax.errors import UserError
from medclip_jax.pretrained import init as init_lib

ARCHITECTURE_FIELDS = ("image", "text", "embed_dim", "projection", "text_projection",
                       "projection_hidden_dim", "projection_activation")


def with_checkpoint_architecture(config: ml_collections.ConfigDict
                                 ) -> tuple[ml_collections.ConfigDict, init_lib.DualCache]:
    """(`config` with the towers and heads of the one CLIP / open_clip folder both towers name,
    at the config's image size and text length; that import, for `apply_init`), or (`config`,
    {}) when the towers do not come from one such folder."""
    specs = {f: init_lib.parse_spec(config.init[f], f) for f in ("image", "text")
             if config.init.get(f)}
    if len(specs) != 2 or specs["image"] != specs["text"] or \
            specs["image"][0] not in init_lib.DUAL_KINDS:
        return config, {}
    imported = init_lib.import_dual(*specs["image"], config.model)
    config = ml_collections.ConfigDict(config.to_dict())
    for name in ARCHITECTURE_FIELDS:
        config.model[name] = imported[1][name]
    return config, {specs["image"]: imported}


def write_step0(config: ml_collections.ConfigDict, workdir: str,
                architecture_from_weights: bool = True) -> dict:
    """Saves the config's model with its ``config.init`` weights at step 0; returns the
    resolved config that was saved."""
    if not any((config.get("init") or {}).get(f) for f in ("image", "text")):
        raise UserError("config.init names no weights (config.init.image / config.init.text / "
                        "config.init.clip): there is nothing to import")
    train.validate_config(config)
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=None)
    if checkpointer.latest_step() is not None:
        checkpointer.close()
        raise UserError(f"--workdir: {workdir} already has checkpoints; give a new workdir")
    dual_cache: init_lib.DualCache = {}
    if architecture_from_weights:
        config, dual_cache = with_checkpoint_architecture(config)
    config, _, model = train.resolve_model(config)
    mesh = sharding.make_mesh(dict(config.mesh))
    params = train.init_params(model, config.model, jax.random.key(config.seed),
                               model_params.param_shardings(model, config, mesh))
    params = init_lib.apply_init(params, config, dual_cache)
    saved = config.to_dict()
    checkpointer.save(0, params, {"step": 0}, saved)
    checkpointer.close()
    return saved
