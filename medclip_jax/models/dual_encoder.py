"""The two-tower model: image tower + text tower, projection heads, a learnable logit scale, and
the heads of the training method (`heads.MethodHeads`, built by `medclip_jax.methods`).

Top-level param tree: `image/...`, `text/...`, `image_proj/...`, `text_proj/...`, `logit_scale`,
plus one entry per method head under the head's own name (SigLIP's `logit_bias`, GLoRIA's
`image_token_proj` / `text_token_proj`, SLIP's `ssl_head`, DeCLIP's `simsiam_projector`,
`simsiam_predictor` and `mlm_head`): CLIP's tree has nothing else. A `linear` projection is one
bias-free Dense (`image_proj/kernel` [W, E], CLIP's `visual.proj`); an `mlp` one is
`image_proj/fc1` -> activation -> `image_proj/fc2` with biases (ConVIRT).

Everything returned is float32 whatever the compute dtype; embeddings are not normalised (the
losses normalise).
"""

import dataclasses
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from medclip_jax.models import layers
from medclip_jax.models.heads import NO_HEADS, MethodHeads


@flax.struct.dataclass
class EncoderOutputs:
    """What every loss receives. Shapes: B batch, E embed_dim, N patches, L text length.

    `extras` holds what the method's heads computed and the batch entries its loss reads
    (`caption_hash` [B, 2] int32, DeCLIP's `mlm_labels`, ...), each documented by the method
    that makes it. `outputs.<name>` reads an extra that must be there (an absent one raises,
    naming those present, so a misspelt name cannot pass as "absent");
    ``getattr(outputs, name, None)`` reads one that may be absent. Every non-scalar extra has
    the batch first.
    """
    image_emb: jax.Array     # [B, E] float32, projected pooled image features
    text_emb: jax.Array      # [B, E] float32, projected pooled text features
    image_tokens: jax.Array  # [B, N, W_img] float32, patch tokens after ln_post (no class token)
    text_tokens: jax.Array   # [B, L, W_txt] float32, text tower token features
    text_mask: jax.Array     # [B, L] int32, 1 = real token
    logit_scale: jax.Array   # [] float32, exp(clamped log scale)
    extras: dict[str, jax.Array] = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        if name == "extras" or name.startswith("_"):
            raise AttributeError(name)
        if name not in self.extras:
            raise AttributeError(f"EncoderOutputs has no extra {name!r} (extras: "
                                 f"{', '.join(sorted(self.extras)) or 'none'}); "
                                 f"getattr(outputs, {name!r}, None) reads an optional one")
        return self.extras[name]

    def with_extras(self, **values: jax.Array) -> "EncoderOutputs":
        return self.replace(extras={**self.extras, **values})


#: Batch entries that are bookkeeping, never model or loss inputs.
BOOKKEEPING = ("index", "source", "valid")
#: Batch entries any loss may read, copied into the outputs' extras (duplicate captions).
LOSS_INPUTS = ("caption_hash",)


class MlpHead(nn.Module):
    """Two-layer projection head (fc1 -> activation -> fc2), as in ConVIRT."""
    embed_dim: int
    hidden_dim: int
    activation: str = "relu"
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, name="fc1")(x)
        x = layers.get_activation(self.activation)(x)
        return nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=jnp.float32,
                        name="fc2")(x)


def linear_head(embed_dim: int, in_width: int, dtype: layers.Dtype) -> nn.Dense:
    """CLIP's bias-free projection, initialised with std width^-0.5 like OpenAI's."""
    return nn.Dense(embed_dim, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(in_width ** -0.5))


def clamped_scale(log_scale: jax.Array, max_logit_scale: float) -> jax.Array:
    """exp(min(log_scale, log(max))): CLIP clamps the temperature at 100."""
    return jnp.exp(jnp.minimum(log_scale.astype(jnp.float32),
                               jnp.float32(math.log(max_logit_scale))))


class DualEncoder(nn.Module):
    """Image and text towers (unbound modules given as attributes; their names become scopes)
    and the method's heads."""
    image: nn.Module
    text: nn.Module
    image_proj: nn.Module
    text_proj: nn.Module
    init_logit_scale: float = 1.0 / 0.07
    max_logit_scale: float = 100.0
    heads: MethodHeads = NO_HEADS

    def setup(self) -> None:
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(math.log(self.init_logit_scale)), (),
            jnp.float32)
        bound = {}
        for name, module in self.heads.modules.items():
            bound[name] = module.clone(parent=self, name=name)
            if getattr(module, "in_parent_scope", False):
                nn.share_scope(self, bound[name])
        self.method_heads = bound

    def head(self, name: str) -> nn.Module:
        """The method head `name` (bound)."""
        return self.method_heads[name]

    def encode_image(self, images: jax.Array, *, train: bool = False
                     ) -> tuple[jax.Array, jax.Array]:
        """images [B, H, W, 3] float32 -> (emb [B, E], patch tokens [B, N, W]), float32."""
        pooled, tokens = self.image(images, train=train)
        return self.image_proj(pooled).astype(jnp.float32), tokens.astype(jnp.float32)

    def encode_text(self, text_ids: jax.Array, text_mask: jax.Array, *, train: bool = False
                    ) -> tuple[jax.Array, jax.Array]:
        """ids, mask [B, L] -> (emb [B, E], tokens [B, L, W]), float32."""
        pooled, tokens = self.text(text_ids, text_mask, train=train)
        return self.text_proj(pooled).astype(jnp.float32), tokens.astype(jnp.float32)

    def scale(self) -> jax.Array:
        """The clamped logit scale, a float32 scalar."""
        return clamped_scale(self.logit_scale, self.max_logit_scale)

    def pool_image_views(self, image_views: jax.Array, *, train: bool) -> jax.Array:
        """Extra views [B, V, H, W, 3] -> pooled image features [B, V, W], one tower pass."""
        batch, views = image_views.shape[:2]
        pooled, _ = self.image(image_views.reshape(batch * views, *image_views.shape[2:]),
                               train=train)
        return pooled.reshape(batch, views, -1)

    def encode_text_views(self, ids: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """Extra text views [B, T, L] -> projected [B, T, E]."""
        batch, views, length = ids.shape
        emb, _ = self.encode_text(ids.reshape(batch * views, length),
                                  mask.reshape(batch * views, length), train=train)
        return emb.reshape(batch, views, -1)

    def __call__(self, images: jax.Array, text_ids: jax.Array, text_mask: jax.Array, *,
                 train: bool = False, **inputs: jax.Array) -> EncoderOutputs:
        """`inputs`: the batch entries the method's heads read (views, MLM inputs)."""
        image_pooled, image_tokens = self.image(images, train=train)
        image_emb = self.image_proj(image_pooled).astype(jnp.float32)
        text_emb, text_tokens = self.encode_text(text_ids, text_mask, train=train)
        features = {"image_pooled": image_pooled, "image_tokens": image_tokens,
                    "image_emb": image_emb, "text_tokens": text_tokens, "text_emb": text_emb,
                    "text_mask": text_mask}
        extras = self.heads.forward(self, features, inputs, train)
        return EncoderOutputs(image_emb=image_emb, text_emb=text_emb,
                              image_tokens=image_tokens.astype(jnp.float32),
                              text_tokens=text_tokens, text_mask=text_mask.astype(jnp.int32),
                              logit_scale=self.scale(), extras=extras)

    def apply_batch(self, batch: dict[str, jax.Array], *, train: bool = False
                    ) -> EncoderOutputs:
        """The forward pass on a pipeline batch: passes on every model input it holds, and
        carries its loss inputs through to the outputs."""
        skip = ("image", "text_ids", "text_mask", *BOOKKEEPING, *LOSS_INPUTS)
        inputs = {k: v for k, v in batch.items() if k not in skip}
        outputs = self(batch["image"], batch["text_ids"], batch["text_mask"], train=train,
                       **inputs)
        return outputs.with_extras(**{k: batch[k] for k in LOSS_INPUTS if k in batch})


def dummy_inputs(image_size: int, max_len: int, batch: int = 1
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Zero images, zero ids and an all-ones mask: enough to trace every param's shape."""
    return (jnp.zeros((batch, image_size, image_size, 3), jnp.float32),
            jnp.zeros((batch, max_len), jnp.int32), jnp.ones((batch, max_len), jnp.int32))


def init_params(model: DualEncoder, rng: jax.Array, image_size: int, max_len: int) -> Any:
    """The `params` collection from dummy inputs (wrap in `jax.eval_shape` for shapes only)."""
    return model.init(rng, *dummy_inputs(image_size, max_len),
                      **model.heads.dummy_inputs(image_size, max_len))["params"]
