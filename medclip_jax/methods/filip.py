"""FILIP (Yao et al. 2022, arXiv 2111.07783): token-wise late interaction. Its head: every patch
and text token through the pooled projections (`config.model.token_projection="shared"`, see
`_tokens`)."""

import ml_collections

from medclip_jax.losses import filip
from medclip_jax.methods import _tokens
from medclip_jax.methods._base import Method


def configure(config: ml_collections.ConfigDict, preset: str) -> None:
    config.loss = ml_collections.ConfigDict(dict(
        chunk_size=8, token_keep_fraction=1.0, exclude_special_tokens=False))
    config.model.token_projection = "shared"


METHOD = Method(
    name="filip", title="FILIP (Yao et al. 2022): token-wise late interaction",
    loss=filip.filip_loss_from_outputs, configure=configure,
    **_tokens.TOKEN_METHOD)
