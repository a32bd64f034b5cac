"""ViT image tower, laid out so OpenAI CLIP's visual transformer maps onto it one-to-one.

Param tree (W = width, P = patch, N = (image_size / P)^2 patches):

    patch_embed/kernel [P, P, 3, W] (+ bias if patch_bias)   <- conv1.weight (O,I,H,W -> H,W,I,O)
    cls_token [W]                                            <- class_embedding
    pos_embed [N + 1, W]                                     <- positional_embedding
    ln_pre/{scale,bias}                                      (if ln_pre)
    block_{i}/ln_1, attn/{query,key,value,out}, ln_2, mlp/{fc1,fc2}
    ln_post/{scale,bias}

Returns `(pooled [B, W], patch_tokens [B, N, W])`: pooled is ln_post of the class token and the
tokens are ln_post of the patch tokens (class token excluded), in `dtype`.

FLIP token dropping (`token_keep_fraction` < 1, train only): each example keeps its own random
`keep_count` of the N patches (position embeddings already added, the class token always kept)
and the blocks run on those alone, so a 0.5 fraction roughly halves the tower's cost; the
returned tokens are then [B, keep_count, W]. Evaluation (train=False) always sees every patch.
The subset is drawn from the `dropout` rng, so gradient accumulation's two forward passes of a
micro-batch drop the same patches.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from medclip_jax.models import layers


class VisionTransformer(nn.Module):
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_bias: bool = False
    ln_pre: bool = True
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0
    remat: bool = False
    token_keep_fraction: float = 1.0
    dtype: layers.Dtype = jnp.float32
    attention: str = "xla"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def keep_count(self) -> int:
        """Patches each example keeps at train time (at least one)."""
        return max(1, round(self.num_patches * self.token_keep_fraction))

    def drop_tokens(self, x: jax.Array) -> jax.Array:
        """[B, N, W] -> [B, keep_count, W]: an independent uniform subset per example."""
        if self.keep_count == self.num_patches:
            return x
        noise = jax.random.uniform(self.make_rng("dropout"), x.shape[:2])
        _, keep = jax.lax.top_k(noise, self.keep_count)
        return jnp.take_along_axis(x, keep[..., None], axis=1)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """images: [B, H, W, 3] float, already normalised; H = W = image_size."""
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"VisionTransformer expects {self.image_size}x{self.image_size} "
                             f"images (model.image.image_size), got {images.shape[1:3]}")
        x = nn.Conv(self.width, (self.patch_size, self.patch_size),
                    strides=(self.patch_size, self.patch_size), padding="VALID",
                    use_bias=self.patch_bias, dtype=self.dtype, param_dtype=jnp.float32,
                    name="patch_embed")(images.astype(self.dtype))
        batch = x.shape[0]
        x = x.reshape(batch, -1, self.width)
        cls = self.param("cls_token", layers.embed_init, (self.width,), jnp.float32)
        pos = self.param("pos_embed", layers.embed_init, (self.num_patches + 1, self.width),
                         jnp.float32)
        pos = pos.astype(self.dtype)
        x = x + pos[1:]
        if train:
            x = self.drop_tokens(x)
        cls = jnp.broadcast_to(cls.astype(self.dtype) + pos[0], (batch, 1, self.width))
        x = jnp.concatenate([cls, x], axis=1)
        if self.ln_pre:
            x = layers.layer_norm(self.layer_norm_eps, self.dtype, "ln_pre")(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        block = layers.block_class(layers.PreNormBlock, self.remat)
        for i in range(self.depth):
            x = block(self.num_heads, self.mlp_dim, self.activation, self.layer_norm_eps,
                      self.dropout, self.dtype, self.attention, name=f"block_{i}")(
                x, None, not train)
        x = layers.layer_norm(self.layer_norm_eps, self.dtype, "ln_post")(x)
        return x[:, 0], x[:, 1:]
