"""Transformer pieces shared by the image and text towers.

Every Dense layer keeps its own name (`query`, `key`, `value`, `out`, `fc1`, `fc2`) and a
[in, out] kernel, so published PyTorch weights (Linear weights are [out, in]) map one-to-one
after a transpose. Params are always float32; `dtype` only sets the activation / matmul dtype.
Softmax and LayerNorm statistics run in float32 whatever `dtype` is.
"""

import functools
import logging
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh", "relu")

default_kernel_init = nn.initializers.xavier_uniform()
embed_init = nn.initializers.normal(stddev=0.02)


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU; its weights were trained with it."""
    return x * jax.nn.sigmoid(1.702 * x)


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Activation by config name; `gelu` is the exact (erf) GELU of BERT and PyTorch."""
    table = {
        "quick_gelu": quick_gelu,
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
    }
    return table[name]


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


@flax.struct.dataclass
class AttentionMask:
    """Which keys a query sees: the real tokens of `padding` [B, L] (1 = real), and with
    `causal` only those at or before the query. Kept in this form, not as a dense [B, 1, L, L]
    array, so a fused kernel can take the causal flag and the key lengths instead."""
    padding: jax.Array
    causal: bool = flax.struct.field(pytree_node=False, default=False)

    def dense(self) -> jax.Array:
        """Boolean [B, 1, L, L], True where a query may attend to a key."""
        mask = padding_mask(self.padding)
        return mask & causal_mask(self.padding.shape[1]) if self.causal else mask

    def key_lengths(self) -> jax.Array:
        """[B] int32 real-token counts: the padding as cuDNN takes it (right padding)."""
        return jnp.sum(self.padding.astype(jnp.int32), axis=-1)


def padding_mask(mask: jax.Array) -> jax.Array:
    """[B, L] (1 = real token) -> boolean [B, 1, 1, L] over the keys."""
    return mask.astype(bool)[:, None, None, :]


def causal_mask(length: int) -> jax.Array:
    """Boolean [1, 1, L, L]: query i may attend to keys j <= i."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def attention_weights(query: jax.Array, key: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax(q k^T / sqrt(d)) in float32; q, k: [B, L, H, D]; mask broadcast to [B, H, Lq, Lk].

    Masked logits get the most negative float32 rather than -inf, so a row with no visible key
    (an all-padding eval record) gives uniform weights instead of NaN.
    """
    depth = query.shape[-1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key,
                        preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(depth))
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


@functools.cache
def _warn_cudnn_fallback(backend: str, dtype: str) -> None:
    logging.warning("config.model.attention='cudnn' needs an NVIDIA GPU and bfloat16 / float16 "
                    "(here: %s, %s): attention runs on the XLA path instead", backend, dtype)


def cudnn_usable(dtype: Any) -> bool:
    """Whether cuDNN's flash attention can run here; where not, a one-time warning (a
    checkpoint trained with it on GPUs still evaluates on a CPU)."""
    backend = jax.default_backend()
    if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return True
    _warn_cudnn_fallback(backend, jnp.dtype(dtype).name)
    return False


def attend(query: jax.Array, key: jax.Array, value: jax.Array, mask: AttentionMask | None,
           implementation: str) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v through `jax.nn.dot_product_attention`; q, k, v [B, L, H, D].

    'xla' takes the dense mask (any padding pattern; logits and softmax in float32, a row
    with no visible key gets uniform weights, as in `attention_weights`). 'cudnn' is the fused
    flash kernel of NVIDIA GPUs (bfloat16 / float16): the causal flag and the key lengths, so it
    needs right-padded rows, which is what the pipeline makes; padded queries come out zero.
    """
    if implementation == "cudnn" and not cudnn_usable(query.dtype):
        implementation = "xla"
    if implementation == "cudnn":
        lengths = None if mask is None else mask.key_lengths()
        return jax.nn.dot_product_attention(
            query, key, value, is_causal=bool(mask is not None and mask.causal),
            key_value_seq_lengths=lengths, implementation="cudnn")
    return jax.nn.dot_product_attention(query, key, value,
                                        mask=None if mask is None else mask.dense(),
                                        implementation="xla")


class MultiHeadAttention(nn.Module):
    """Self-attention with separate query/key/value/out projections (HF CLIP/BERT layout).

    `implementation` picks `attend`'s kernel; with attention dropout at train time the weights
    are formed explicitly (`attention_weights`), since the fused kernels have no dropout."""
    num_heads: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    implementation: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, mask: AttentionMask | None = None, *,
                 deterministic: bool = True) -> jax.Array:
        width = x.shape[-1]
        head_dim = width // self.num_heads

        def dense(name: str) -> nn.Dense:
            return nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32,
                            kernel_init=self.kernel_init, name=name)

        def split_heads(y: jax.Array) -> jax.Array:
            return y.reshape(*y.shape[:-1], self.num_heads, head_dim)

        q = split_heads(dense("query")(x))
        k = split_heads(dense("key")(x))
        v = split_heads(dense("value")(x))
        if self.dropout > 0.0 and not deterministic:
            weights = attention_weights(q, k, None if mask is None else mask.dense())
            weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
            out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)
        else:
            out = attend(q, k, v, mask, self.implementation)
        out = out.reshape(*out.shape[:-2], width)
        return dense("out")(out)


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> fc2: the transformer feed-forward block."""
    hidden_dim: int
    activation: str = "gelu"
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        width = x.shape[-1]
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=self.kernel_init, name="fc1")(x)
        x = get_activation(self.activation)(x)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=self.kernel_init, name="fc2")(x)


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm with float32 params; flax computes its statistics in float32 for bf16 inputs."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


class PreNormBlock(nn.Module):
    """CLIP / ViT block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""
    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, mask: AttentionMask | None = None,
                 deterministic: bool = True) -> jax.Array:
        drop = nn.Dropout(self.dropout)
        y = layer_norm(self.layer_norm_eps, self.dtype, "ln_1")(x)
        y = MultiHeadAttention(self.num_heads, self.dropout, self.dtype,
                               implementation=self.attention, name="attn")(
            y, mask, deterministic=deterministic)
        x = x + drop(y, deterministic=deterministic)
        y = layer_norm(self.layer_norm_eps, self.dtype, "ln_2")(x)
        y = Mlp(self.mlp_dim, self.activation, self.dropout, self.dtype, name="mlp")(
            y, deterministic=deterministic)
        return x + drop(y, deterministic=deterministic)


class PostNormBlock(nn.Module):
    """BERT block: attn_ln(x + attn(x)); mlp_ln(x + mlp(x))."""
    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    kernel_init: Initializer = embed_init
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, mask: AttentionMask | None = None,
                 deterministic: bool = True) -> jax.Array:
        drop = nn.Dropout(self.dropout)
        y = MultiHeadAttention(self.num_heads, self.dropout, self.dtype, self.kernel_init,
                               self.attention, name="attn")(x, mask,
                                                            deterministic=deterministic)
        x = layer_norm(self.layer_norm_eps, self.dtype, "attn_ln")(
            x + drop(y, deterministic=deterministic))
        y = Mlp(self.mlp_dim, self.activation, self.dropout, self.dtype, self.kernel_init,
                name="mlp")(x, deterministic=deterministic)
        return layer_norm(self.layer_norm_eps, self.dtype, "mlp_ln")(
            x + drop(y, deterministic=deterministic))


def block_class(block: type[nn.Module], remat: bool) -> type[nn.Module]:
    """The block, rematerialised in the backward pass when `remat` (saves activation memory).

    `deterministic` (argument 3, counting self) is static so dropout can branch on it.
    """
    return nn.remat(block, static_argnums=(3,)) if remat else block
