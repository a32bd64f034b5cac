"""SLIP (Mu, Kirillov, Wagner & Xie 2022, arXiv 2112.12750): CLIP plus SimCLR on the images.

Two augmented views of every image go through the image tower and SLIP's own MLP head; with
their L2-normalised outputs a_i, b_i (i = 1..N) stacked as u_1..u_2N (u_k = a_k, u_{N+k} = b_k)
and pos(k) the other view of the same image, the SimCLR term is NT-Xent (Chen et al. 2020,
arXiv 2002.05709) at a fixed temperature tau:

    l_k    = -log exp(<u_k, u_pos(k)> / tau) / sum_{m != k} exp(<u_k, u_m> / tau)
    L_SSL  = 1/(2N) sum_{k=1..2N} l_k
    L      = L_CLIP(image_emb, text_emb, logit_scale) + c * L_SSL

Each of the 2N samples has one positive and 2N - 2 negatives (itself excluded). The paper uses
tau = 0.1 and c = 1 (``ssl_temperature``, ``ssl_weight``). N is the global batch: under
`jax.jit` with batch-sharded views every sample sees all 2N - 2 negatives whatever the device
count, as in the paper's all-gather.

Duplicate captions (``config.loss.duplicate_captions=True``, off by default): L_CLIP takes the
multi-positive targets of `clip.clip_loss` (see `medclip_jax.losses.clip`); L_SSL, whose pairs
are image views, stays as it is.
"""

import jax
import jax.numpy as jnp

from medclip_jax.errors import UserError
from medclip_jax.losses.clip import (caption_outputs, caption_positives, clip_loss,
                                     l2_normalize)


def check_knobs(ssl_temperature: float, ssl_weight: float) -> None:
    if not ssl_temperature > 0:
        raise UserError(f"config.loss.ssl_temperature must be > 0, got {ssl_temperature}")
    if not ssl_weight >= 0:
        raise UserError(f"config.loss.ssl_weight must be >= 0, got {ssl_weight}")


def nt_xent_loss(view_a: jax.Array, view_b: jax.Array, temperature: float
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """NT-Xent over the 2N stacked views; `view_a`, `view_b`: [N, D] (normalised here)."""
    n = view_a.shape[0]
    views = jnp.concatenate([l2_normalize(view_a), l2_normalize(view_b)], axis=0)
    logits = views @ views.T / temperature
    rows = jnp.arange(2 * n)
    logits = jnp.where(rows[:, None] == rows[None, :], -jnp.inf, logits)
    positives = (rows + n) % (2 * n)
    log_p = jax.nn.log_softmax(logits, axis=1)
    loss = -jnp.mean(log_p[rows, positives])
    return loss, {"ssl_batch_acc": jnp.mean(jnp.argmax(logits, axis=1) == positives)}


def slip_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
              ssl_emb: jax.Array | None, ssl_temperature: float = 0.1, ssl_weight: float = 1.0,
              positives: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CLIP + ssl_weight * NT-Xent. `ssl_emb`: [N, 2, D]; unused (may be None) at weight 0.
    `positives`: the CLIP term's same-caption mask (None = the diagonal)."""
    check_knobs(ssl_temperature, ssl_weight)
    contrastive, metrics = clip_loss(image_emb, text_emb, logit_scale, positives)
    metrics = {**metrics, "clip_loss": contrastive}
    if ssl_weight == 0:
        return contrastive, metrics
    if ssl_emb.ndim != 3 or ssl_emb.shape[1] != 2:
        raise UserError(f"SLIP needs exactly 2 SimCLR views per image (outputs.ssl_emb "
                        f"[B, 2, D]), got shape {tuple(ssl_emb.shape)}")
    ssl, ssl_metrics = nt_xent_loss(ssl_emb[:, 0], ssl_emb[:, 1], ssl_temperature)
    return contrastive + ssl_weight * ssl, {**metrics, **ssl_metrics, "ssl_loss": ssl}


def required_outputs(ssl_temperature: float = 0.1, ssl_weight: float = 1.0,
                     duplicate_captions: bool = False) -> set[str]:
    """The `EncoderOutputs` fields the loss reads with these knobs: the model need compute
    only these."""
    needed = {"image_emb", "text_emb", "logit_scale"} | caption_outputs(duplicate_captions)
    return needed | {"ssl_emb"} if ssl_weight > 0 else needed


def slip_loss_from_outputs(outputs, ssl_temperature: float = 0.1, ssl_weight: float = 1.0,
                           duplicate_captions: bool = False
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Registry adapter; reads `outputs.ssl_emb` only when `ssl_weight > 0`."""
    ssl_emb = outputs.ssl_emb if ssl_weight > 0 else None
    return slip_loss(outputs.image_emb, outputs.text_emb, outputs.logit_scale, ssl_emb,
                     ssl_temperature, ssl_weight, caption_positives(outputs, duplicate_captions))
