"""VSE++ (Faghri et al. 2018, arXiv 1707.05612): hinge triplet loss with the hardest negative of
the global batch."""

import ml_collections

from medclip_jax.losses import vse
from medclip_jax.methods._base import Method


def configure(config: ml_collections.ConfigDict, preset: str) -> None:
    config.loss = ml_collections.ConfigDict({"margin": 0.2, "max_violation": True,
                                             "reduction": "mean", "duplicate_captions": False})


METHOD = Method(
    name="vse", title="VSE++ (Faghri et al. 2018): hardest-negative triplet loss",
    loss=vse.vse_loss_from_outputs, configure=configure, duplicate_captions=True)
