"""CyCLIP (Goel et al. 2022, arXiv 2205.14459): CLIP plus in-modal and cross-modal cyclic
consistency terms."""

import ml_collections

from medclip_jax.losses import cyclip
from medclip_jax.methods._base import Method


def configure(config: ml_collections.ConfigDict, preset: str) -> None:
    config.loss = ml_collections.ConfigDict(
        {"in_modal_weight": 0.25, "cross_modal_weight": 0.25, "reduction": "mean",
         "duplicate_captions": False})


METHOD = Method(
    name="cyclip", title="CyCLIP (Goel et al. 2022): CLIP + cyclic consistency",
    loss=cyclip.cyclip_loss_from_outputs, configure=configure, duplicate_captions=True)
