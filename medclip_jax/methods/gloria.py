"""GLoRIA (Huang et al. 2021, ICCV): global image-report InfoNCE plus word-to-region attention.
Its heads: own linear heads for patch and word features
(`config.model.token_projection="separate"`, see `_tokens`)."""

import ml_collections

from medclip_jax.losses import gloria
from medclip_jax.methods import _tokens
from medclip_jax.methods._base import Method


def configure(config: ml_collections.ConfigDict, preset: str) -> None:
    config.loss = ml_collections.ConfigDict(dict(
        variant="code", attention_temperature=4.0, aggregation_temperature=5.0,
        contrastive_temperature=10.0, global_weight=1.0, local_weight=1.0,
        exclude_special_tokens=True, chunk_size=8))
    config.model.token_projection = "separate"


METHOD = Method(
    name="gloria", title="GLoRIA (Huang et al. 2021): global + local word-region alignment",
    loss=gloria.gloria_loss_from_outputs, configure=configure,
    **_tokens.TOKEN_METHOD)
