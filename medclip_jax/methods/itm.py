"""CLIP + image-text matching (ITM), the matching objective of ALBEF (Li et al. 2021,
arXiv 2107.07651, section 3.2) and BLIP, with hard negatives mined from the contrastive
similarities; the worked example of a method with a head (README, "Adding a method").

With L2-normalised embeddings u_i (image) and v_j (text) and S = u v^T:

    hard negatives   t(i) = argmax_{j != i} S_ij     (the most similar other text of image i)
                     m(j) = argmax_{i != j} S_ij     (the most similar other image of text j)
    matching head    f(u, v) = w_2 . gelu(W_1 [u; v; u * v; |u - v|] + b_1) + b_2
    L_ITM = 1/(3N) sum_i [ softplus(-f(u_i, v_i)) + softplus(f(u_i, v_t(i)))
                           + softplus(f(u_m(i), v_i)) ]
    L     = L_CLIP(u, v, s) + itm_weight * L_ITM

L_ITM is the binary cross-entropy of "is this a matching pair" (label 1 for the N positives,
0 for the 2N hard negatives); ALBEF's 2-way softmax over a linear layer is the same loss on the
difference of its two logits. Departures from ALBEF, both deliberate: (1) the head is a light
MLP on the pooled embeddings (the matching features of InferSent, Conneau et al. 2017), not a
cross-attention fusion encoder, so the method keeps the dual encoder's cost and its towers
stay comparable with the other methods'; (2) each negative is the *hardest* one (the mode of
ALBEF's softmax(S) sampling distribution), so the loss is a deterministic function of the
batch. S only picks the negatives (no gradient through the choice); the chosen pairs'
embeddings get gradients through the head.

The head runs in the model's forward pass (the loss cannot call a Flax module), on the batch
the forward pass sees: the global batch, or each micro-batch with `grad_accum_steps > 1`
(negatives then come from the micro-batch). Output extra: `itm_logits` [B, 3] float32, the head's
logits of (positive, image i with text t(i), image m(i) with text i).

config.model.itm_hidden_dim: the head's hidden width (default: embed_dim).
config.loss.itm_weight: weight of L_ITM (ALBEF sums its losses: 1.0).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from medclip_jax.errors import UserError
from medclip_jax.losses.clip import clip_loss, l2_normalize
from medclip_jax.methods._base import Method
from medclip_jax.models import layers, presets
from medclip_jax.models.heads import MethodHeads


class ItmHead(nn.Module):
    """f(u, v): the matching logit of normalised embedding pairs [..., E] x [..., E] -> [...]."""
    hidden_dim: int
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
        x = jnp.concatenate([u, v, u * v, jnp.abs(u - v)], axis=-1).astype(self.dtype)
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, name="fc1")(x)
        x = layers.get_activation("gelu")(x)
        return nn.Dense(1, dtype=self.dtype, param_dtype=jnp.float32, name="fc2")(x)[..., 0]


def hardest_negatives(image_emb: jax.Array, text_emb: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """(t, m): for each image the most similar other text, for each text the most similar other
    image, by cosine; integer [N] each, constants (no gradient)."""
    sims = jax.lax.stop_gradient(l2_normalize(image_emb) @ l2_normalize(text_emb).T)
    sims = jnp.where(jnp.eye(sims.shape[0], dtype=bool), -jnp.inf, sims)
    return jnp.argmax(sims, axis=1), jnp.argmax(sims, axis=0)


def itm_logits(head, image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """[N, 3] logits of (u_i, v_i), (u_i, v_t(i)), (u_m(i), v_i)."""
    u, v = l2_normalize(image_emb), l2_normalize(text_emb)
    hard_text, hard_image = hardest_negatives(image_emb, text_emb)
    return jnp.stack([head(u, v), head(u, v[hard_text]), head(u[hard_image], v)],
                     axis=1).astype(jnp.float32)


def itm_loss(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(L_ITM, accuracy): binary cross-entropy of [N, 3] logits against labels (1, 0, 0)."""
    labels = jnp.array([1.0, 0.0, 0.0], jnp.float32)
    loss = jnp.mean(jax.nn.softplus(jnp.where(labels > 0, -logits, logits)))
    accuracy = jnp.mean((logits > 0) == (labels > 0))
    return loss, accuracy


def itm_loss_from_outputs(outputs: Any, itm_weight: float = 1.0
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
    if not itm_weight >= 0:
        raise UserError(f"config.loss.itm_weight must be >= 0, got {itm_weight}")
    contrastive, metrics = clip_loss(outputs.image_emb, outputs.text_emb, outputs.logit_scale)
    matching, accuracy = itm_loss(outputs.itm_logits)
    return contrastive + itm_weight * matching, {
        **metrics, "clip_loss": contrastive, "itm_loss": matching, "itm_acc": accuracy}


def forward(model, features, inputs, train) -> dict:
    return {"itm_logits": itm_logits(model.head("itm_head"), features["image_emb"],
                                     features["text_emb"])}


def heads(cfg: ml_collections.ConfigDict) -> MethodHeads:
    return MethodHeads({"itm_head": ItmHead(cfg.itm_hidden_dim, layers.DTYPES[cfg.dtype])},
                       forward)


def check_model(cfg: ml_collections.ConfigDict) -> None:
    presets.check_positive_int(cfg, "itm_hidden_dim", "")


def configure(config: ml_collections.ConfigDict, preset: str) -> None:
    config.loss = ml_collections.ConfigDict({"itm_weight": 1.0})
    config.model.itm_hidden_dim = config.model.embed_dim


METHOD = Method(
    name="itm", title="CLIP + ITM (ALBEF, Li et al. 2021): matching head, hard negatives",
    loss=itm_loss_from_outputs, configure=configure, reads=lambda **_: {"itm_logits"},
    produced_by={"itm_logits": "config.method='itm' (its head is always there)"},
    model_fields=("itm_hidden_dim",), check_model=check_model, heads=heads)
