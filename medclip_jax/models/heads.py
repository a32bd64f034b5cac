"""Flax modules that methods add to the two towers (`medclip_jax.methods` builds them from
config and says where they go), and `MethodHeads`, the container the DualEncoder holds them in.

The SSL heads use LayerNorm where SimCLR/SimSiam use BatchNorm: batch statistics would need a
mutable collection and a cross-device reduction, and LayerNorm keeps every step a pure function
of the params.
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from medclip_jax.models import layers


class NormMlp(nn.Module):
    """Dense -> LayerNorm -> activation per hidden layer, then a final Dense (SSL heads)."""
    hidden_dims: tuple[int, ...]
    out_dim: int
    activation: str = "relu"
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden_dims):
            x = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name=f"fc{i + 1}")(x)
            x = nn.LayerNorm(dtype=jnp.float32, param_dtype=jnp.float32, name=f"ln{i + 1}")(x)
            x = layers.get_activation(self.activation)(x).astype(self.dtype)
        return nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=jnp.float32,
                        name=f"fc{len(self.hidden_dims) + 1}")(x)


class MlmHead(nn.Module):
    """BERT's prediction head: Dense(W) -> GELU -> LayerNorm -> Dense(vocab) (untied)."""
    vocab_size: int
    width: int
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="transform")(x)
        x = layers.get_activation("gelu")(x)
        x = nn.LayerNorm(epsilon=1e-12, dtype=jnp.float32, param_dtype=jnp.float32,
                         name="ln")(x)
        return nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=jnp.float32,
                        name="decoder")(x.astype(self.dtype))


class ScalarParam(nn.Module):
    """One learnable float32 scalar at the model's top level (SigLIP's `logit_bias`): its param
    path is `param_name`, whatever the head's name (which must differ from it)."""
    param_name: str
    init_value: float
    in_parent_scope = True  # read by DualEncoder.setup

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param(self.param_name, nn.initializers.constant(self.init_value), (),
                          jnp.float32)


#: `(model, features, inputs, train) -> extra outputs`: a method's forward pass through its
#: heads. `model` is the bound DualEncoder (towers: `model.image`, `model.encode_text`, ...;
#: heads: `model.head(name)`), `features` its base outputs (`image_pooled`, `image_tokens`,
#: `image_emb`, `text_tokens`, `text_emb`), `inputs` the batch entries beyond image and text.
HeadsForward = Callable[[Any, Mapping[str, jax.Array], Mapping[str, jax.Array], bool],
                        dict[str, jax.Array]]


def _no_extras(model, features, inputs, train) -> dict[str, jax.Array]:
    return {}


def _no_dummy_inputs(image_size: int, max_len: int) -> dict[str, jax.Array]:
    return {}


@dataclasses.dataclass(frozen=True, eq=False)
class MethodHeads:
    """What a method adds to the towers: Flax modules by param-scope name (the name is their
    top-level param path: `ssl_head/...`), the forward pass that uses them, and the dummy batch
    inputs that reach every head when the params are initialised.

    A plain class rather than a dict field so that Flax does not adopt the modules under the
    field's name (`heads_ssl_head`); `DualEncoder.setup` binds each under its own name.
    """
    modules: Mapping[str, nn.Module] = dataclasses.field(default_factory=dict)
    forward: HeadsForward = _no_extras
    dummy_inputs: Callable[[int, int], dict[str, jax.Array]] = _no_dummy_inputs


NO_HEADS = MethodHeads()
