"""ConVIRT (Zhang et al. 2020, arXiv 2010.00747): asymmetric bidirectional InfoNCE.

With L2-normalised image v_i and text u_i embeddings, a fixed temperature tau and weight lambda:

    l_i(v->u) = -log exp(<v_i, u_i> / tau) / sum_k exp(<v_i, u_k> / tau)
    l_i(u->v) = -log exp(<u_i, v_i> / tau) / sum_k exp(<u_i, v_k> / tau)
    L = 1/N sum_i [ lambda * l_i(v->u) + (1 - lambda) * l_i(u->v) ]

The paper uses lambda = 0.75, tau = 0.1 and 2-layer MLP projection heads (``model.projection =
"mlp"`` in ``configs/convirt.py``). The temperature is fixed: the model's learnable logit scale
is not used.
"""

import jax
import jax.numpy as jnp

from medclip_jax.losses.clip import l2_normalize


def convirt_loss(image_emb: jax.Array, text_emb: jax.Array, temperature: float = 0.1,
                 image_to_text_weight: float = 0.75) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits = l2_normalize(image_emb) @ l2_normalize(text_emb).T / temperature
    diagonal = jnp.arange(logits.shape[0])
    loss_i2t = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[diagonal, diagonal])
    loss_t2i = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[diagonal, diagonal])
    loss = image_to_text_weight * loss_i2t + (1.0 - image_to_text_weight) * loss_t2i
    return loss, {"loss_i2t": loss_i2t, "loss_t2i": loss_t2i}


def convirt_loss_from_outputs(outputs, temperature: float = 0.1,
                              image_to_text_weight: float = 0.75):
    return convirt_loss(outputs.image_emb, outputs.text_emb, temperature, image_to_text_weight)
