"""CLIP: symmetric InfoNCE over the global batch (Radford et al. 2021, arXiv 2103.00020).

With L2-normalised embeddings u_i (image) and v_j (text) and logit scale s = exp(t):

    logits_ij = s * <u_i, v_j>
    L = 1/2 * [ -1/N sum_i log softmax_j(logits)_ii  -  1/N sum_j log softmax_i(logits)_jj ]

The batch here is the *global* batch: under `jax.jit` with batch-sharded inputs XLA gathers the
other shard's embeddings, so every sample sees all N-1 negatives whatever the device count.

Duplicate captions (``config.loss.duplicate_captions=True``, off by default). Many reports are
identical ("No acute cardiopulmonary process."), and plain InfoNCE pushes such true matches
apart as negatives. With h_i the caption hash of pair i (`outputs.caption_hash`, the normalised
caption's digest from the input pipeline, `data.text_ops.caption_hashes`) and the positives
P_ij = [h_i == h_j] (P_ii = 1), the targets are uniform over each row's / column's positives:

    L = 1/2 * [ -1/N sum_i sum_j P_ij / r_i log softmax_j(logits)_ij
                -1/N sum_j sum_i P_ij / r_j log softmax_i(logits)_ij ],   r_i = sum_k P_ik

(P is symmetric, so a column's count is r_j). Without duplicates P = I and L is the plain loss,
bit for bit. The batch accuracies count a hit on any positive. `multi_positive_nll` and
`same_caption` are the one home of these targets; the other InfoNCE-family losses use them.
"""

from typing import Any

import jax
import jax.numpy as jnp

from medclip_jax.errors import UserError


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Unit-norm rows, computed in float32 so bfloat16 towers still give exact cosines."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def same_caption(row_hash: jax.Array, col_hash: jax.Array) -> jax.Array:
    """[N, M] bool: pair (i, j) shares a caption. Hashes [N, W], [M, W] int (all W equal)."""
    return jnp.all(row_hash[:, None, :] == col_hash[None, :, :], axis=-1)


def read_caption_hash(outputs: Any, duplicate_captions: bool) -> jax.Array | None:
    """`outputs.caption_hash` [N, 2] when the option is on (it must be there), else None."""
    if not duplicate_captions:
        return None
    if getattr(outputs, "caption_hash", None) is None:
        raise UserError("config.loss.duplicate_captions=True needs the batch's caption_hash, "
                        "which the train input pipeline makes (data.pipeline.BatchLoader)")
    return outputs.caption_hash


def caption_positives(outputs: Any, duplicate_captions: bool) -> jax.Array | None:
    """The [N, N] same-caption mask of the batch when the option is on, else None (diagonal)."""
    hashes = read_caption_hash(outputs, duplicate_captions)
    return None if hashes is None else same_caption(hashes, hashes)


def caption_outputs(duplicate_captions: bool) -> set[str]:
    """The `EncoderOutputs` field the duplicate-caption targets read, when they are on."""
    return {"caption_hash"} if duplicate_captions else set()


def multi_positive_nll(logits: jax.Array, positives: jax.Array | None, axis: int
                       ) -> jax.Array:
    """Mean cross-entropy of softmax over `axis` (1: rows, image->text; 0: columns) against
    targets uniform over each row's / column's positives ([N, N] bool; None: the diagonal)."""
    log_p = jax.nn.log_softmax(logits, axis=axis)
    if positives is None:
        diagonal = jnp.arange(logits.shape[0])
        return -jnp.mean(log_p[diagonal, diagonal])
    other = 1 - axis
    picked = jnp.sum(jnp.where(positives, log_p, 0.0), axis=other)
    return -jnp.mean(picked / jnp.sum(positives, axis=other))


def batch_accuracy(logits: jax.Array, positives: jax.Array | None, axis: int) -> jax.Array:
    """Fraction of rows (axis=1) / columns (axis=0) whose top logit is one of their positives."""
    best = jnp.argmax(logits, axis=axis)
    if positives is None:
        return jnp.mean(best == jnp.arange(logits.shape[0]))
    return jnp.mean(jnp.take_along_axis(positives, jnp.expand_dims(best, axis), axis=axis))


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
              positives: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE. `image_emb`, `text_emb`: [N, E] (normalised here); scale: scalar;
    `positives`: [N, N] bool same-caption mask (`caption_positives`), None = the diagonal."""
    image_emb = l2_normalize(image_emb)
    text_emb = l2_normalize(text_emb)
    logits = logit_scale.astype(jnp.float32) * image_emb @ text_emb.T
    loss_i2t = multi_positive_nll(logits, positives, axis=1)
    loss_t2i = multi_positive_nll(logits, positives, axis=0)
    loss = 0.5 * (loss_i2t + loss_t2i)
    metrics = {
        "loss_i2t": loss_i2t,
        "loss_t2i": loss_t2i,
        "i2t_batch_acc": batch_accuracy(logits, positives, axis=1),
        "t2i_batch_acc": batch_accuracy(logits, positives, axis=0),
    }
    return loss, metrics


def clip_loss_from_outputs(outputs, duplicate_captions: bool = False
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Registry adapter: the pooled embeddings, the scale and (if on) the caption hashes."""
    return clip_loss(outputs.image_emb, outputs.text_emb, outputs.logit_scale,
                     caption_positives(outputs, duplicate_captions))
