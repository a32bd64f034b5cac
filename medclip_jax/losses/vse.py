"""VSE++ (Faghri et al. 2018, arXiv 1707.05612): hinge triplet ranking on cosine similarity.

With s(i, t) the cosine similarity, margin alpha and the positive pairs on the diagonal:

    VSE++ (max_violation):  l_i = [alpha - s(i_i, t_i) + max_{j != i} s(i_i, t_j)]_+
                                + [alpha - s(i_i, t_i) + max_{j != i} s(i_j, t_i)]_+
    VSE0 (sum of hinges):   l_i = sum_{j != i} [alpha - s(i_i, t_i) + s(i_i, t_j)]_+
                                + sum_{j != i} [alpha - s(i_i, t_i) + s(i_j, t_i)]_+
    L = 1/N sum_i l_i

The hardest negative is taken over the whole global batch. ``reduction = "mean"`` (default)
averages l_i over the batch, which keeps the loss scale independent of the batch size;
``reduction = "sum"`` sums it, as the authors' released code does. The model's logit scale is
not used.

Duplicate captions (``config.loss.duplicate_captions=True``, off by default): a pair whose
captions are identical (equal caption hashes, `clip.same_caption`) is not a negative, so the
max / sum above runs over j with h_j != h_i instead of j != i; the positive stays s(i_i, t_i).
Without duplicates that is the plain loss.
"""

import jax
import jax.numpy as jnp

from medclip_jax.errors import UserError
from medclip_jax.losses.clip import caption_positives, l2_normalize


REDUCTIONS = ("mean", "sum")


def vse_loss(image_emb: jax.Array, text_emb: jax.Array, margin: float = 0.2,
             max_violation: bool = True, reduction: str = "mean",
             positives: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`positives`: [N, N] bool same-caption mask, excluded from the negatives (None: the
    diagonal)."""
    if reduction not in REDUCTIONS:
        raise UserError(f"config.loss.reduction must be one of {REDUCTIONS}, got {reduction!r}")
    scores = l2_normalize(image_emb) @ l2_normalize(text_emb).T
    positive = jnp.diagonal(scores)
    if positives is None:
        positives = jnp.eye(scores.shape[0], dtype=bool)
    cost_text = jnp.where(positives, 0.0, jnp.maximum(0.0, margin - positive[:, None] + scores))
    cost_image = jnp.where(positives, 0.0, jnp.maximum(0.0, margin - positive[None, :] + scores))
    if max_violation:
        per_image, per_text = cost_text.max(axis=1), cost_image.max(axis=0)
    else:
        per_image, per_text = cost_text.sum(axis=1), cost_image.sum(axis=0)
    reduce = jnp.mean if reduction == "mean" else jnp.sum
    loss_i2t, loss_t2i = reduce(per_image), reduce(per_text)
    return loss_i2t + loss_t2i, {"loss_i2t": loss_i2t, "loss_t2i": loss_t2i}


def vse_loss_from_outputs(outputs, margin: float = 0.2, max_violation: bool = True,
                          reduction: str = "mean", duplicate_captions: bool = False):
    return vse_loss(outputs.image_emb, outputs.text_emb, margin, max_violation, reduction,
                    caption_positives(outputs, duplicate_captions))
