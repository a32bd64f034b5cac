"""SLIP (Mu et al. 2022, arXiv 2112.12750): CLIP plus SimCLR between two augmented views of each
image. Its head: the 3-layer SimCLR MLP `ssl_head` on the views' pooled features (see
`_views`); the pipeline adds the two views (`config.data.image_views = 2`, SLIP's recipe in
`data.view_augment`)."""

import ml_collections

from medclip_jax.losses import slip
from medclip_jax.methods import _views
from medclip_jax.methods._base import Method


def configure(config: ml_collections.ConfigDict, preset: str) -> None:
    config.loss = ml_collections.ConfigDict({"ssl_temperature": 0.1, "ssl_weight": 1.0,
                                             "duplicate_captions": False})
    config.model.ssl_head = _views.ssl_head_config(config.model.embed_dim, "simclr")
    if preset == "paper":  # SLIP's head: 4096-4096-256.
        config.model.ssl_head.hidden_dim = 4096
        config.model.ssl_head.out_dim = 256
    config.data.image_views = 2


def reads(**loss_kwargs) -> set[str]:
    return slip.required_outputs(**loss_kwargs) - {"image_emb", "text_emb", "logit_scale"}


METHOD = Method(
    name="slip", title="SLIP (Mu et al. 2022): CLIP + SimCLR on image views",
    loss=slip.slip_loss_from_outputs, configure=configure, reads=reads,
    produced_by=_views.PRODUCED_BY, model_fields=("ssl_head",),
    check_model=_views.check_ssl_head, heads=_views.heads, inputs=_views.IMAGE_INPUTS,
    duplicate_captions=True, question="unimodal")
