"""Text towers: a CLIP-style causal transformer and a BERT-style bidirectional encoder.

Both take right-padded `ids` [B, L] int and `mask` [B, L] (1 / True = real token), L <= max_len,
and return `(pooled [B, W], tokens [B, L, W])` in `dtype`. Padding never changes a real
token's features: padded keys are masked out of attention and position ids start at 0.

Pooling (`pooling`):
  eos   the features at the last real token, index `mask.sum(-1) - 1` (CLIP's EOT token);
  cls   the features at token 0 (BERT's [CLS]);
  mean  the mean over real tokens (sentence-transformers).

CausalTextTransformer params (<- HF CLIPTextModel):
    token_embed/embedding [V, W]   <- embeddings.token_embedding.weight
    pos_embed [max_len, W]         <- embeddings.position_embedding.weight
    block_{i}/ln_1, attn/{query,key,value,out}, ln_2, mlp/{fc1,fc2}
    ln_final                       <- final_layer_norm

BertTextEncoder params (<- HF BertModel):
    embeddings/{word,position,token_type}/embedding, embeddings/ln
    layer_{i}/attn/{query,key,value,out}    <- attention.self.*, attention.output.dense
    layer_{i}/attn_ln                       <- attention.output.LayerNorm
    layer_{i}/mlp/fc1, mlp/fc2              <- intermediate.dense, output.dense
    layer_{i}/mlp_ln                        <- output.LayerNorm
The position table has `max_len` rows (an importer keeps the first max_len of BERT's 512).
BERT's pooler (dense + tanh on [CLS]) is not part of the tower.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from medclip_jax.models import layers

POOLINGS = ("eos", "cls", "mean")


def eos_index(mask: jax.Array) -> jax.Array:
    """Index of the last real token of each right-padded row (0 for an all-padding row)."""
    return jnp.maximum(jnp.sum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def pool_tokens(tokens: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
    """[B, L, W] -> [B, W] by `pooling`; the masked mean is computed in float32."""
    if pooling == "eos":
        return jnp.take_along_axis(tokens, eos_index(mask)[:, None, None], axis=1)[:, 0]
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        weights = mask.astype(jnp.float32)[..., None]
        total = jnp.sum(tokens.astype(jnp.float32) * weights, axis=1)
        return (total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)).astype(tokens.dtype)
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


def check_length(ids: jax.Array, max_len: int) -> None:
    if ids.shape[1] > max_len:
        raise ValueError(f"text length {ids.shape[1]} exceeds model.text.max_len={max_len}")


class CausalTextTransformer(nn.Module):
    """CLIP's text transformer: pre-norm blocks under a causal + padding mask."""
    vocab_size: int = 49408
    max_len: int = 77
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pooling: str = "eos"
    dropout: float = 0.0
    remat: bool = False
    dtype: layers.Dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array, *,
                 train: bool = False) -> tuple[jax.Array, jax.Array]:
        check_length(ids, self.max_len)
        length = ids.shape[1]
        x = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=jnp.float32,
                     embedding_init=layers.embed_init, name="token_embed")(ids)
        pos = self.param("pos_embed", nn.initializers.normal(0.01), (self.max_len, self.width),
                         jnp.float32)
        x = x + pos[:length].astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        attn_mask = layers.AttentionMask(mask, causal=True)
        block = layers.block_class(layers.PreNormBlock, self.remat)
        for i in range(self.depth):
            x = block(self.num_heads, self.mlp_dim, self.activation, self.layer_norm_eps,
                      self.dropout, self.dtype, self.attention, name=f"block_{i}")(
                x, attn_mask, not train)
        x = layers.layer_norm(self.layer_norm_eps, self.dtype, "ln_final")(x)
        return pool_tokens(x, mask, self.pooling), x


class BertEmbeddings(nn.Module):
    """word + position + token_type embeddings, then LayerNorm (and dropout)."""
    vocab_size: int
    max_len: int
    type_vocab_size: int
    width: int
    layer_norm_eps: float
    dropout: float
    dtype: layers.Dtype

    @nn.compact
    def __call__(self, ids: jax.Array, token_type_ids: jax.Array, *,
                 deterministic: bool) -> jax.Array:
        def embed(num: int, name: str) -> nn.Embed:
            return nn.Embed(num, self.width, dtype=self.dtype, param_dtype=jnp.float32,
                            embedding_init=layers.embed_init, name=name)

        positions = jnp.arange(ids.shape[1])[None]
        x = (embed(self.vocab_size, "word")(ids) + embed(self.max_len, "position")(positions)
             + embed(self.type_vocab_size, "token_type")(token_type_ids))
        x = layers.layer_norm(self.layer_norm_eps, self.dtype, "ln")(x)
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)


class BertTextEncoder(nn.Module):
    """BERT encoder: bidirectional post-norm blocks under a padding mask."""
    vocab_size: int = 30522
    max_len: int = 512
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    pooling: str = "cls"
    dropout: float = 0.0
    remat: bool = False
    dtype: layers.Dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array, token_type_ids: jax.Array | None = None,
                 *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        check_length(ids, self.max_len)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(ids)
        x = BertEmbeddings(self.vocab_size, self.max_len, self.type_vocab_size, self.width,
                           self.layer_norm_eps, self.dropout, self.dtype, name="embeddings")(
            ids, token_type_ids, deterministic=not train)
        attn_mask = layers.AttentionMask(mask)
        block = layers.block_class(layers.PostNormBlock, self.remat)
        for i in range(self.depth):
            x = block(self.num_heads, self.mlp_dim, self.activation, self.layer_norm_eps,
                      self.dropout, self.dtype, attention=self.attention, name=f"layer_{i}")(
                x, attn_mask, not train)
        return pool_tokens(x, mask, self.pooling), x
