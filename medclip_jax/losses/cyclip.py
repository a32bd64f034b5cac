"""CyCLIP (Goel et al. 2022, arXiv 2205.14459): CLIP + cyclic consistency regularisers.

With L2-normalised image I and text T embeddings ([N, E]):

    L = L_CLIP + w_in * C_in + w_cross * C_cross
    C_in    = reduce((I I^T - T T^T)^2)      in-modal consistency
    C_cross = reduce((I T^T - T I^T)^2)      cross-modal consistency

``reduction = "mean"`` (default) averages over the N^2 pairs, as the paper writes it;
``reduction = "code"`` multiplies that mean by the batch size N, as the authors' released code
does (N times stronger for the same weights, so it depends on the batch size; the mean is the
default because it does not). Weights default to 0.25 each.

Duplicate captions (``config.loss.duplicate_captions=True``, off by default): L_CLIP takes the
multi-positive targets of `clip.clip_loss` (uniform over the pairs whose captions are
identical, see `medclip_jax.losses.clip`); C_in and C_cross stay as they are.
"""

import jax
import jax.numpy as jnp

from medclip_jax.errors import UserError
from medclip_jax.losses.clip import caption_positives, clip_loss, l2_normalize

REDUCTIONS = ("mean", "code")


def cyclic_terms(image_emb: jax.Array, text_emb: jax.Array, reduction: str = "mean"
                 ) -> tuple[jax.Array, jax.Array]:
    if reduction not in REDUCTIONS:
        raise UserError(f"config.loss.reduction must be one of {REDUCTIONS}, got {reduction!r}")
    image, text = l2_normalize(image_emb), l2_normalize(text_emb)
    cross = image @ text.T
    in_modal = jnp.mean(jnp.square(image @ image.T - text @ text.T))
    cross_modal = jnp.mean(jnp.square(cross - cross.T))
    if reduction == "code":
        n = image.shape[0]
        in_modal, cross_modal = in_modal * n, cross_modal * n
    return in_modal, cross_modal


def cyclip_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                in_modal_weight: float = 0.25, cross_modal_weight: float = 0.25,
                reduction: str = "mean", positives: jax.Array | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`positives`: the contrastive term's same-caption mask (None = the diagonal)."""
    contrastive, metrics = clip_loss(image_emb, text_emb, logit_scale, positives)
    in_modal, cross_modal = cyclic_terms(image_emb, text_emb, reduction)
    loss = contrastive + in_modal_weight * in_modal + cross_modal_weight * cross_modal
    return loss, {**metrics, "clip_loss": contrastive, "in_modal_cyclic": in_modal,
                  "cross_modal_cyclic": cross_modal}


def cyclip_loss_from_outputs(outputs, in_modal_weight: float = 0.25,
                             cross_modal_weight: float = 0.25, reduction: str = "mean",
                             duplicate_captions: bool = False):
    return cyclip_loss(outputs.image_emb, outputs.text_emb, outputs.logit_scale,
                       in_modal_weight, cross_modal_weight, reduction,
                       caption_positives(outputs, duplicate_captions))
