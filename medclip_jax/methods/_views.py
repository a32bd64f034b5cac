"""The heads that SLIP and DeCLIP share: extra image views through the image tower and an SSL
head, token-dropout text views through the text tower, and BERT's MLM head.

config.model fields (owned by the methods that use them):

  ssl_head.{kind ('none' | 'simclr' | 'simsiam'), hidden_dim, out_dim, predictor_hidden_dim,
            activation}
      SLIP's 3-layer SimCLR head (`ssl_head`), or DeCLIP's SimSiam 3-layer projector + 2-layer
      predictor (`simsiam_projector`, `simsiam_predictor`), LayerNorm between layers, on the
      pooled features of the extra image views.
  mlm_head   True: a BERT prediction head on the text tower (`mlm_head`, DeCLIP).

Output extras (V image views, T text views, D SSL head dim, P MLM predictions, K vocabulary):
`view_image_emb` [B, V, E] and `view_text_emb` [B, T, E] (projected views), `ssl_emb`
[B, V, D], `simsiam_z` / `simsiam_p` [B, 2, D] (projector on the CLIP view and the first extra
view, predictor on those), `mlm_logits` [B, P, K] at the masked positions, with the batch's
`mlm_labels` / `mlm_weights` [B, P] int32.
"""

import jax.numpy as jnp
import ml_collections

from medclip_jax.models import layers, presets
from medclip_jax.models.heads import MethodHeads, MlmHead, NormMlp

SSL_HEADS = ("none", "simclr", "simsiam")
SSL_FIELDS = {"kind", "hidden_dim", "out_dim", "predictor_hidden_dim", "activation"}
IMAGE_INPUTS = ("image_views",)
TEXT_INPUTS = ("text_view_ids", "text_view_mask", "mlm_ids", "mlm_positions", "mlm_labels",
               "mlm_weights")
PRODUCED_BY = {
    "view_image_emb": "config.data.image_views > 0",
    "view_text_emb": "config.data.text_views > 0",
    "ssl_emb": "config.model.ssl_head.kind='simclr' and config.data.image_views > 0",
    "simsiam_z": "config.model.ssl_head.kind='simsiam' and config.data.image_views > 0",
    "simsiam_p": "config.model.ssl_head.kind='simsiam' and config.data.image_views > 0",
    "mlm_logits": "config.model.mlm_head and config.data.mlm.enabled",
    "mlm_labels": "config.data.mlm.enabled",
    "mlm_weights": "config.data.mlm.enabled",
}


def ssl_head_config(embed_dim: int, kind: str) -> ml_collections.ConfigDict:
    """`config.model.ssl_head` of `kind`, with the widths every preset starts from."""
    return ml_collections.ConfigDict(dict(
        kind=kind, hidden_dim=4 * embed_dim, out_dim=embed_dim, predictor_hidden_dim=embed_dim,
        activation="relu"))


def check_ssl_head(cfg: ml_collections.ConfigDict) -> None:
    presets.check_fields(cfg.ssl_head, SSL_FIELDS, "ssl_head.")
    presets.check_choice(cfg.ssl_head, "kind", SSL_HEADS, "ssl_head.")
    if cfg.ssl_head.kind != "none":
        for name in ("hidden_dim", "out_dim", "predictor_hidden_dim"):
            presets.check_positive_int(cfg.ssl_head, name, "ssl_head.")
        presets.check_choice(cfg.ssl_head, "activation", layers.ACTIVATIONS, "ssl_head.")


def check_mlm_head(cfg: ml_collections.ConfigDict) -> None:
    if not isinstance(cfg.mlm_head, bool):
        presets.fail("mlm_head", f"must be True or False, got {cfg.mlm_head!r}")


def image_view_extras(model, features, views, train) -> dict:
    """The projected views and, for the heads the model has, their SSL outputs."""
    pooled = model.pool_image_views(views, train=train)
    out = {"view_image_emb": model.image_proj(pooled).astype(jnp.float32)}
    modules = model.heads.modules
    if "ssl_head" in modules:
        out["ssl_emb"] = model.head("ssl_head")(pooled).astype(jnp.float32)
    if "simsiam_projector" in modules:
        both = jnp.concatenate([features["image_pooled"][:, None], pooled[:, :1]], axis=1)
        z = model.head("simsiam_projector")(both)
        out["simsiam_z"] = z.astype(jnp.float32)
        out["simsiam_p"] = model.head("simsiam_predictor")(z).astype(jnp.float32)
    return out


def mlm_extras(model, features, inputs, train) -> dict:
    """Vocabulary logits at the masked positions of the corrupted text, and their targets."""
    _, tokens = model.text(inputs["mlm_ids"], features["text_mask"], train=train)
    positions = inputs["mlm_positions"][..., None].astype(jnp.int32)
    picked = jnp.take_along_axis(tokens, positions, axis=1)
    return {"mlm_logits": model.head("mlm_head")(picked).astype(jnp.float32),
            "mlm_labels": inputs["mlm_labels"].astype(jnp.int32),
            "mlm_weights": inputs["mlm_weights"].astype(jnp.int32)}


def forward(model, features, inputs, train) -> dict:
    """Every extra the batch's inputs and the model's heads allow (see the module doc)."""
    out = {}
    if "image_views" in inputs:
        out.update(image_view_extras(model, features, inputs["image_views"], train))
    if "text_view_ids" in inputs:
        out["view_text_emb"] = model.encode_text_views(inputs["text_view_ids"],
                                                       inputs["text_view_mask"], train=train)
    if "mlm_ids" in inputs and "mlm_head" in model.heads.modules:
        out.update(mlm_extras(model, features, inputs, train))
    return out


def ssl_modules(cfg: ml_collections.ConfigDict) -> dict:
    ssl, dtype = cfg.ssl_head, layers.DTYPES[cfg.dtype]
    if ssl.kind == "simclr":
        return {"ssl_head": NormMlp((ssl.hidden_dim, ssl.hidden_dim), ssl.out_dim,
                                    ssl.activation, dtype)}
    if ssl.kind == "simsiam":
        return {"simsiam_projector": NormMlp((ssl.hidden_dim, ssl.hidden_dim), ssl.out_dim,
                                             ssl.activation, dtype),
                "simsiam_predictor": NormMlp((ssl.predictor_hidden_dim,), ssl.out_dim,
                                             ssl.activation, dtype)}
    return {}


def heads(cfg: ml_collections.ConfigDict) -> MethodHeads:
    """The SSL heads of `cfg.ssl_head`, and the MLM head when `cfg` has `mlm_head` on."""
    modules = ssl_modules(cfg)
    if cfg.get("mlm_head", False):
        modules["mlm_head"] = MlmHead(cfg.text.vocab_size, cfg.text.width,
                                      layers.DTYPES[cfg.dtype])
    has_ssl, has_mlm = bool(ssl_modules(cfg)), "mlm_head" in modules

    def dummy_inputs(image_size: int, max_len: int) -> dict:
        """Dummy views / MLM inputs, only for the heads there are (so they get params)."""
        extra = {}
        if has_ssl:
            extra["image_views"] = jnp.zeros((1, 1, image_size, image_size, 3), jnp.float32)
        if has_mlm:
            extra.update(mlm_ids=jnp.zeros((1, max_len), jnp.int32),
                         mlm_positions=jnp.zeros((1, 1), jnp.int32),
                         mlm_labels=jnp.zeros((1, 1), jnp.int32),
                         mlm_weights=jnp.zeros((1, 1), jnp.int32))
        return extra

    return MethodHeads(modules, forward, dummy_inputs)
