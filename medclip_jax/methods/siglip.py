"""SigLIP (Zhai et al. 2023, arXiv 2303.15343): the pairwise sigmoid loss with a learnable
temperature and bias. The bias is its one head: `logit_bias`, a top-level scalar param
initialised at `config.model.init_logit_bias` (-10; None: no bias, and the loss fails naming
the field). `loss.implementation`: "global" or "ring" (the `siglip_ring` variant)."""

import ml_collections

from medclip_jax.losses import siglip
from medclip_jax.methods._base import Method, Variant
from medclip_jax.models import presets
from medclip_jax.models.heads import MethodHeads, ScalarParam

BIAS_HEAD = "bias"  # the head's name; its param is the top-level `logit_bias`


def configure(config: ml_collections.ConfigDict, preset: str) -> None:
    config.loss = ml_collections.ConfigDict({"implementation": "global",
                                             "duplicate_captions": False})
    config.model.init_logit_scale = 10.0
    config.model.max_logit_scale = 1e6
    config.model.init_logit_bias = -10.0
    # Starting from CLIP weights keeps SigLIP's own t' = log 10, b = -10 (CLIP's scale of 100
    # would saturate the sigmoid at the start).
    config.init.logit_scale = False


def check_model(cfg: ml_collections.ConfigDict) -> None:
    bias = cfg.init_logit_bias
    if bias is not None and (isinstance(bias, bool) or not isinstance(bias, (int, float))):
        presets.fail("init_logit_bias", f"must be None or a number, got {bias!r}")


def forward(model, features, inputs, train) -> dict:
    """`logit_bias` [] float32."""
    if BIAS_HEAD not in model.heads.modules:
        return {}
    return {"logit_bias": model.head(BIAS_HEAD)()}


def heads(cfg: ml_collections.ConfigDict) -> MethodHeads:
    if cfg.init_logit_bias is None:
        return MethodHeads()
    return MethodHeads({BIAS_HEAD: ScalarParam("logit_bias", float(cfg.init_logit_bias))},
                       forward)


METHOD = Method(
    name="siglip", title="SigLIP (Zhai et al. 2023): pairwise sigmoid loss",
    loss=siglip.siglip_loss_from_outputs, configure=configure,
    reads=lambda **_: {"logit_bias"},
    produced_by={"logit_bias": "config.model.init_logit_bias"},
    model_fields=("init_logit_bias",), check_model=check_model, heads=heads,
    duplicate_captions=True,
    variants={"siglip_ring": Variant(config="siglip", loss={"implementation": "ring"})})
