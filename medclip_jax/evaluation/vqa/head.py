"""The VQA head (Flax linen): a fusion module, then an MLP giving one logit per answer.

`bilinear`: MFB-style low-rank bilinear pooling of the pooled image and question embeddings
(the Hadamard product of two projections to hidden * factor, summed over each group of
`factor`). `cross_attention`: the question (its token features, or its pooled embedding as a
single query) attends over the image's patch tokens (with the pooled embedding as one more key)
in pre-norm transformer layers; the attended queries are mean-pooled over real question tokens.
Pooled embeddings are L2-normalised first (the space the contrastive loss trained them in).
`make_head` builds it from ``config.vqa`` (`settings.VqaSettings`), the one home of its fields'
defaults and checks.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medclip_jax import settings as settings_lib

FUSIONS = settings_lib.FUSIONS

def l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


class BilinearFusion(nn.Module):
    """MFB: z = SumPool_k(U^T x * V^T q) over pooled image x and question q, then LayerNorm
    (in place of MFB's power + L2 normalisation: the same bounded scale, smooth at 0)."""
    hidden_dim: int
    factor: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, image: jax.Array, question: jax.Array, *, train: bool) -> jax.Array:
        width = self.hidden_dim * self.factor
        joint = nn.Dense(width, name="image")(image) * nn.Dense(width, name="question")(question)
        joint = nn.Dropout(self.dropout)(joint, deterministic=not train)
        joint = joint.reshape(*joint.shape[:-1], self.hidden_dim, self.factor).sum(-1)
        return nn.LayerNorm(name="ln")(joint)


class CrossAttentionLayer(nn.Module):
    """Pre-norm cross-attention (queries over keys/values) + MLP, both residual."""
    hidden_dim: int
    num_heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, queries: jax.Array, keys: jax.Array, *, train: bool) -> jax.Array:
        attended = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=self.hidden_dim, out_features=self.hidden_dim,
            dropout_rate=self.dropout, deterministic=not train, name="attn")(
            nn.LayerNorm(name="ln_q")(queries), nn.LayerNorm(name="ln_kv")(keys))
        queries = queries + attended
        hidden = nn.Dense(2 * self.hidden_dim, name="fc1")(nn.LayerNorm(name="ln_mlp")(queries))
        hidden = nn.Dropout(self.dropout)(nn.gelu(hidden), deterministic=not train)
        return queries + nn.Dense(self.hidden_dim, name="fc2")(hidden)


class CrossAttentionFusion(nn.Module):
    """Question queries [B, L, Dq] (mask [B, L]) attend over the image's pooled embedding and
    patch tokens [B, N, Di]; output: the mean of the attended queries over real tokens."""
    hidden_dim: int
    num_heads: int
    num_layers: int = 1
    dropout: float = 0.0

    @nn.compact
    def __call__(self, image_pooled: jax.Array, image_tokens: jax.Array, queries: jax.Array,
                 query_mask: jax.Array, *, train: bool) -> jax.Array:
        pooled_key = nn.Dense(self.hidden_dim, name="image_pooled")(image_pooled)[:, None]
        token_keys = nn.Dense(self.hidden_dim, name="image_tokens")(image_tokens)
        keys = jnp.concatenate([pooled_key, token_keys], axis=1)
        x = nn.Dense(self.hidden_dim, name="question")(queries)
        for i in range(self.num_layers):
            x = CrossAttentionLayer(self.hidden_dim, self.num_heads, self.dropout,
                                    name=f"layer_{i}")(x, keys, train=train)
        weights = query_mask.astype(x.dtype)[..., None]
        pooled = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return nn.LayerNorm(name="ln")(pooled)


class VqaHead(nn.Module):
    """Fusion, then Dense -> GELU -> dropout -> Dense: one logit per answer of the vocabulary.

    `features`: image_pooled [B, Ei], question_pooled [B, Eq] (both L2-normalised here), and for
    cross_attention image_tokens [B, N, Wi] plus question_tokens [B, L, Wq] / question_mask
    [B, L] (or, with question_features="pooled", the pooled question as the only query).
    """
    num_answers: int
    # No defaults: `make_head` gives every field from config.vqa (settings.VqaSettings).
    fusion: str
    question_features: str
    hidden_dim: int
    bilinear_factor: int
    num_heads: int
    num_layers: int
    classifier_hidden_dim: int
    dropout: float

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], *, train: bool = False) -> jax.Array:
        image = l2_normalize(features["image_pooled"].astype(jnp.float32))
        question = l2_normalize(features["question_pooled"].astype(jnp.float32))
        if self.fusion == "bilinear":
            fused = BilinearFusion(self.hidden_dim, self.bilinear_factor, self.dropout,
                                   name="fusion")(image, question, train=train)
        elif self.fusion == "cross_attention":
            if self.question_features == "tokens":
                queries = features["question_tokens"].astype(jnp.float32)
                mask = features["question_mask"]
            else:
                queries, mask = question[:, None], jnp.ones(question.shape[:1] + (1,), jnp.int32)
            fused = CrossAttentionFusion(self.hidden_dim, self.num_heads, self.num_layers,
                                         self.dropout, name="fusion")(
                image, features["image_tokens"].astype(jnp.float32), queries, mask, train=train)
        else:
            raise ValueError(f"unknown fusion {self.fusion!r}; expected one of {FUSIONS}")
        hidden = nn.gelu(nn.Dense(self.classifier_hidden_dim, name="classifier_fc1")(fused))
        hidden = nn.Dropout(self.dropout)(hidden, deterministic=not train)
        return nn.Dense(self.num_answers, name="classifier_fc2")(hidden)


def settings_from_config(vqa: Any) -> settings_lib.VqaSettings:
    """Reads and checks ``config.vqa`` once (unknown names and impossible values fail here);
    an already parsed section (``config.eval.vqa`` in training) is kept as it is."""
    if isinstance(vqa, settings_lib.VqaSettings):
        return vqa
    return settings_lib.VqaSettings.from_config(vqa)


def make_head(settings: settings_lib.VqaSettings, num_answers: int) -> VqaHead:
    """The head with the config's value for every VqaHead field (matched by name)."""
    shared = {f.name for f in dataclasses.fields(VqaHead)} & \
        {f.name for f in dataclasses.fields(settings)}
    return VqaHead(num_answers, **{name: getattr(settings, name) for name in shared})
