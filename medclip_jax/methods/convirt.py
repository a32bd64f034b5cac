"""ConVIRT (Zhang et al. 2020, arXiv 2010.00747): asymmetric InfoNCE at a fixed temperature,
with 2-layer MLP projection heads (the base model's `projection="mlp"`)."""

import ml_collections

from medclip_jax.losses import convirt
from medclip_jax.methods._base import Method


def configure(config: ml_collections.ConfigDict, preset: str) -> None:
    config.loss = ml_collections.ConfigDict({"temperature": 0.1, "image_to_text_weight": 0.75,
                                             "duplicate_captions": False})
    config.model.projection = "mlp"
    config.model.projection_hidden_dim = 2 * config.model.embed_dim


METHOD = Method(
    name="convirt", title="ConVIRT (Zhang et al. 2020): asymmetric InfoNCE, MLP heads",
    loss=convirt.convirt_loss_from_outputs, configure=configure, duplicate_captions=True)
