"""ConVIRT (Zhang et al. 2020, arXiv 2010.00747): asymmetric bidirectional InfoNCE.

With L2-normalised image v_i and text u_i embeddings, a fixed temperature tau and weight lambda:

    l_i(v->u) = -log exp(<v_i, u_i> / tau) / sum_k exp(<v_i, u_k> / tau)
    l_i(u->v) = -log exp(<u_i, v_i> / tau) / sum_k exp(<u_i, v_k> / tau)
    L = 1/N sum_i [ lambda * l_i(v->u) + (1 - lambda) * l_i(u->v) ]

The paper uses lambda = 0.75, tau = 0.1 and 2-layer MLP projection heads (``model.projection =
"mlp"`` in ``configs/convirt.py``). The temperature is fixed: the model's learnable logit scale
is not used.

Duplicate captions (``config.loss.duplicate_captions=True``, off by default): with
P_ik = [h_i == h_k] the same-caption mask (`clip.same_caption`, P_ii = 1) and r_i = sum_k P_ik,
each direction's target is uniform over the positives, tau and lambda unchanged:

    l_i(v->u) = -sum_k P_ik / r_i * log [ exp(<v_i, u_k> / tau) / sum_m exp(<v_i, u_m> / tau) ]
    l_i(u->v) = -sum_k P_ki / r_i * log [ exp(<u_i, v_k> / tau) / sum_m exp(<u_i, v_m> / tau) ]

Without duplicates P = I: the formulas above, unchanged.
"""

import jax

from medclip_jax.losses.clip import caption_positives, l2_normalize, multi_positive_nll


def convirt_loss(image_emb: jax.Array, text_emb: jax.Array, temperature: float = 0.1,
                 image_to_text_weight: float = 0.75, positives: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`positives`: [N, N] bool same-caption mask (`clip.caption_positives`), None = diagonal."""
    logits = l2_normalize(image_emb) @ l2_normalize(text_emb).T / temperature
    loss_i2t = multi_positive_nll(logits, positives, axis=1)
    loss_t2i = multi_positive_nll(logits, positives, axis=0)
    loss = image_to_text_weight * loss_i2t + (1.0 - image_to_text_weight) * loss_t2i
    return loss, {"loss_i2t": loss_i2t, "loss_t2i": loss_t2i}


def convirt_loss_from_outputs(outputs, temperature: float = 0.1,
                              image_to_text_weight: float = 0.75,
                              duplicate_captions: bool = False):
    return convirt_loss(outputs.image_emb, outputs.text_emb, temperature, image_to_text_weight,
                        caption_positives(outputs, duplicate_captions))
