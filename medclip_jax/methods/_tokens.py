"""Token embeddings in the joint space, the head that FILIP and GLoRIA share.

`config.model.token_projection`: "none" (no token embeddings: the token losses fail naming the
field), "shared" (patch and text tokens through the pooled projections `image_proj` /
`text_proj`: FILIP), "separate" (own bias-free linear heads `image_token_proj` /
`text_token_proj`: GLoRIA's local features).
"""

import jax.numpy as jnp
import ml_collections

from medclip_jax.models import layers, presets
from medclip_jax.models.dual_encoder import linear_head
from medclip_jax.models.heads import MethodHeads

TOKEN_PROJECTIONS = ("none", "shared", "separate")
PRODUCED_BY = {"image_token_emb": "config.model.token_projection",
               "text_token_emb": "config.model.token_projection"}


def check_model(cfg: ml_collections.ConfigDict) -> None:
    presets.check_choice(cfg, "token_projection", TOKEN_PROJECTIONS, "")


def forward(model, features, inputs, train) -> dict:
    """`image_token_emb` [B, N, E], `text_token_emb` [B, L, E], float32."""
    if "image_token_proj" in model.heads.modules:
        image_head, text_head = model.head("image_token_proj"), model.head("text_token_proj")
    else:
        image_head, text_head = model.image_proj, model.text_proj
    return {"image_token_emb": image_head(features["image_tokens"]).astype(jnp.float32),
            "text_token_emb": text_head(features["text_tokens"]).astype(jnp.float32)}


def heads(cfg: ml_collections.ConfigDict) -> MethodHeads:
    if cfg.token_projection == "none":
        return MethodHeads()
    if cfg.token_projection == "shared":
        return MethodHeads({}, forward)
    dtype = layers.DTYPES[cfg.dtype]
    return MethodHeads({"image_token_proj": linear_head(cfg.embed_dim, cfg.image.width, dtype),
                        "text_token_proj": linear_head(cfg.embed_dim, cfg.text.width, dtype)},
                       forward)


#: The `Method` fields FILIP and GLoRIA share: both read the projected patch and word tokens.
TOKEN_METHOD = dict(
    reads=lambda **_: {"image_token_emb", "text_token_emb"}, produced_by=PRODUCED_BY,
    model_fields=("token_projection",), check_model=check_model, heads=heads,
    question="fine_grained")
