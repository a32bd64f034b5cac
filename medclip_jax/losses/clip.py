"""CLIP: symmetric InfoNCE over the global batch (Radford et al. 2021, arXiv 2103.00020).

With L2-normalised embeddings u_i (image) and v_j (text) and logit scale s = exp(t):

    logits_ij = s * <u_i, v_j>
    L = 1/2 * [ -1/N sum_i log softmax_j(logits)_ii  -  1/N sum_j log softmax_i(logits)_jj ]

The batch here is the *global* batch: under `jax.jit` with batch-sharded inputs XLA gathers the
other shard's embeddings, so every sample sees all N-1 negatives whatever the device count.
"""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Unit-norm rows, computed in float32 so bfloat16 towers still give exact cosines."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def clip_loss(image_emb: jax.Array, text_emb: jax.Array,
              logit_scale: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE. `image_emb`, `text_emb`: [N, E] (normalised here); scale: scalar."""
    image_emb = l2_normalize(image_emb)
    text_emb = l2_normalize(text_emb)
    logits = logit_scale.astype(jnp.float32) * image_emb @ text_emb.T
    targets = jnp.arange(logits.shape[0])
    log_p_i2t = jax.nn.log_softmax(logits, axis=1)
    log_p_t2i = jax.nn.log_softmax(logits, axis=0)
    loss_i2t = -jnp.mean(log_p_i2t[targets, targets])
    loss_t2i = -jnp.mean(log_p_t2i[targets, targets])
    loss = 0.5 * (loss_i2t + loss_t2i)
    metrics = {
        "loss_i2t": loss_i2t,
        "loss_t2i": loss_t2i,
        "i2t_batch_acc": jnp.mean(jnp.argmax(logits, axis=1) == targets),
        "t2i_batch_acc": jnp.mean(jnp.argmax(logits, axis=0) == targets),
    }
    return loss, metrics


def clip_loss_from_outputs(outputs) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Registry adapter: the CLIP loss needs only the pooled embeddings and the scale."""
    return clip_loss(outputs.image_emb, outputs.text_emb, outputs.logit_scale)
