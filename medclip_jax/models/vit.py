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
    dtype: layers.Dtype = jnp.float32

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

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
        cls = jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width))
        x = jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype)
        if self.ln_pre:
            x = layers.layer_norm(self.layer_norm_eps, self.dtype, "ln_pre")(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        block = layers.block_class(layers.PreNormBlock, self.remat)
        for i in range(self.depth):
            x = block(self.num_heads, self.mlp_dim, self.activation, self.layer_norm_eps,
                      self.dropout, self.dtype, name=f"block_{i}")(x, None, not train)
        x = layers.layer_norm(self.layer_norm_eps, self.dtype, "ln_post")(x)
        return x[:, 0], x[:, 1:]
