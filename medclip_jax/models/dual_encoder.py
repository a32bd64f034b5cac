"""The two-tower model: image tower + text tower, projection heads and a learnable logit scale.

Top-level param tree: `image/...`, `text/...`, `image_proj/...`, `text_proj/...`, `logit_scale`.
A `linear` head is one bias-free Dense (`image_proj/kernel` [W, E], CLIP's `visual.proj`); an
`mlp` head is `image_proj/fc1` -> activation -> `image_proj/fc2` with biases (ConVIRT).

Optional parts, present only when the config asks for them (so CLIP's tree stays CLIP's):

* `logit_bias` (SigLIP's learnable bias b);
* `image_token_proj`, `text_token_proj`: separate token heads (GLoRIA's local features); with
  `token_projection="shared"` the tokens go through `image_proj` / `text_proj` instead (FILIP);
* `ssl_head` (SLIP's SimCLR MLP) or `simsiam_projector` + `simsiam_predictor` (DeCLIP), fed
  the pooled features of the extra image views;
* `mlm_head` (DeCLIP's masked language modelling head on the text tower).

The SSL heads use LayerNorm where SimCLR/SimSiam use BatchNorm: batch statistics would need a
mutable collection and a cross-device reduction, and LayerNorm keeps every step a pure function
of the params.

Everything returned is float32 whatever the compute dtype; embeddings are not normalised (the
losses normalise).
"""

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from medclip_jax.models import layers


@flax.struct.dataclass
class EncoderOutputs:
    """What every loss receives. Shapes: B batch, E embed_dim, N patches, L text length,
    V image views, T text views, D SSL head dim, P MLM predictions, K vocabulary.

    Optional fields are None unless the config (model heads) and the batch (extra views, MLM
    inputs) produce them. Every non-scalar field has the batch first.
    """
    image_emb: jax.Array     # [B, E] float32, projected pooled image features
    text_emb: jax.Array      # [B, E] float32, projected pooled text features
    image_tokens: jax.Array  # [B, N, W_img] float32, patch tokens after ln_post (no class token)
    text_tokens: jax.Array   # [B, L, W_txt] float32, text tower token features
    text_mask: jax.Array     # [B, L] int32, 1 = real token
    logit_scale: jax.Array   # [] float32, exp(clamped log scale)
    logit_bias: jax.Array | None = None       # [] float32 (SigLIP)
    image_token_emb: jax.Array | None = None  # [B, N, E] projected patch tokens
    text_token_emb: jax.Array | None = None   # [B, L, E] projected text tokens
    view_image_emb: jax.Array | None = None   # [B, V, E] extra image views, projected
    view_text_emb: jax.Array | None = None    # [B, T, E] extra text views, projected
    ssl_emb: jax.Array | None = None          # [B, V, D] SLIP's SSL head on the views
    simsiam_z: jax.Array | None = None        # [B, 2, D] projector (CLIP view, first view)
    simsiam_p: jax.Array | None = None        # [B, 2, D] predictor on simsiam_z
    mlm_logits: jax.Array | None = None       # [B, P, K] at the masked positions
    mlm_labels: jax.Array | None = None       # [B, P] int32 original ids (from the batch)
    mlm_weights: jax.Array | None = None      # [B, P] int32, 1 = real prediction
    caption_hash: jax.Array | None = None     # [B, 2] int32 caption digest (from the batch)


#: Batch keys the model reads, besides `image`, `text_ids` and `text_mask`.
OPTIONAL_INPUTS = ("image_views", "text_view_ids", "text_view_mask", "mlm_ids",
                   "mlm_positions", "mlm_labels", "mlm_weights")
#: Batch keys only the loss reads: `apply_batch` copies them into the outputs unchanged.
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


def linear_head(embed_dim: int, in_width: int, dtype: layers.Dtype) -> nn.Dense:
    """CLIP's bias-free projection, initialised with std width^-0.5 like OpenAI's."""
    return nn.Dense(embed_dim, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(in_width ** -0.5))


def clamped_scale(log_scale: jax.Array, max_logit_scale: float) -> jax.Array:
    """exp(min(log_scale, log(max))): CLIP clamps the temperature at 100."""
    return jnp.exp(jnp.minimum(log_scale.astype(jnp.float32),
                               jnp.float32(math.log(max_logit_scale))))


class DualEncoder(nn.Module):
    """Image and text towers (unbound modules given as attributes; their names become scopes)."""
    image: nn.Module
    text: nn.Module
    image_proj: nn.Module
    text_proj: nn.Module
    init_logit_scale: float = 1.0 / 0.07
    max_logit_scale: float = 100.0
    init_logit_bias: float | None = None  # None: no bias param
    token_projection: str = "none"        # "none" | "shared" | "separate"
    image_token_proj: nn.Module | None = None
    text_token_proj: nn.Module | None = None
    ssl_head: nn.Module | None = None
    simsiam_projector: nn.Module | None = None
    simsiam_predictor: nn.Module | None = None
    mlm_head: nn.Module | None = None

    def setup(self) -> None:
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(math.log(self.init_logit_scale)), (),
            jnp.float32)
        if self.init_logit_bias is not None:
            self.logit_bias = self.param(
                "logit_bias", nn.initializers.constant(self.init_logit_bias), (), jnp.float32)

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

    def project_tokens(self, image_tokens: jax.Array, text_tokens: jax.Array
                       ) -> tuple[jax.Array | None, jax.Array | None]:
        """Token embeddings in the joint space for token-level losses (FILIP, GLoRIA)."""
        if self.token_projection == "none":
            return None, None
        if self.token_projection == "shared":
            heads = self.image_proj, self.text_proj
        else:
            heads = self.image_token_proj, self.text_token_proj
        return (heads[0](image_tokens).astype(jnp.float32),
                heads[1](text_tokens).astype(jnp.float32))

    def encode_image_views(self, image_pooled: jax.Array, image_views: jax.Array, *,
                           train: bool) -> dict[str, jax.Array]:
        """Extra views [B, V, H, W, 3]: one tower pass for all of them, then the heads."""
        batch, views = image_views.shape[:2]
        pooled, _ = self.image(image_views.reshape(batch * views, *image_views.shape[2:]),
                               train=train)
        pooled = pooled.reshape(batch, views, -1)
        out = {"view_image_emb": self.image_proj(pooled).astype(jnp.float32)}
        if self.ssl_head is not None:
            out["ssl_emb"] = self.ssl_head(pooled).astype(jnp.float32)
        if self.simsiam_projector is not None:
            both = jnp.concatenate([image_pooled[:, None], pooled[:, :1]], axis=1)
            z = self.simsiam_projector(both)
            out["simsiam_z"] = z.astype(jnp.float32)
            out["simsiam_p"] = self.simsiam_predictor(z).astype(jnp.float32)
        return out

    def encode_text_views(self, ids: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """Extra text views [B, T, L] -> projected [B, T, E]."""
        batch, views, length = ids.shape
        emb, _ = self.encode_text(ids.reshape(batch * views, length),
                                  mask.reshape(batch * views, length), train=train)
        return emb.reshape(batch, views, -1)

    def mlm(self, mlm_ids: jax.Array, text_mask: jax.Array, positions: jax.Array, *,
            train: bool) -> jax.Array:
        """Vocabulary logits [B, P, K] at the masked positions of the corrupted text."""
        _, tokens = self.text(mlm_ids, text_mask, train=train)
        picked = jnp.take_along_axis(tokens, positions[..., None].astype(jnp.int32), axis=1)
        return self.mlm_head(picked).astype(jnp.float32)

    def __call__(self, images: jax.Array, text_ids: jax.Array, text_mask: jax.Array, *,
                 image_views: jax.Array | None = None, text_view_ids: jax.Array | None = None,
                 text_view_mask: jax.Array | None = None, mlm_ids: jax.Array | None = None,
                 mlm_positions: jax.Array | None = None, mlm_labels: jax.Array | None = None,
                 mlm_weights: jax.Array | None = None, train: bool = False) -> EncoderOutputs:
        image_pooled, image_tokens = self.image(images, train=train)
        image_emb = self.image_proj(image_pooled).astype(jnp.float32)
        text_emb, text_tokens = self.encode_text(text_ids, text_mask, train=train)
        extra: dict[str, Any] = {}
        if self.init_logit_bias is not None:
            extra["logit_bias"] = self.logit_bias
        extra["image_token_emb"], extra["text_token_emb"] = self.project_tokens(
            image_tokens, text_tokens)
        if image_views is not None:
            extra.update(self.encode_image_views(image_pooled, image_views, train=train))
        if text_view_ids is not None:
            extra["view_text_emb"] = self.encode_text_views(text_view_ids, text_view_mask,
                                                            train=train)
        if mlm_ids is not None and self.mlm_head is not None:
            extra["mlm_logits"] = self.mlm(mlm_ids, text_mask, mlm_positions, train=train)
            extra["mlm_labels"] = mlm_labels.astype(jnp.int32)
            extra["mlm_weights"] = mlm_weights.astype(jnp.int32)
        return EncoderOutputs(image_emb=image_emb, text_emb=text_emb,
                              image_tokens=image_tokens.astype(jnp.float32),
                              text_tokens=text_tokens, text_mask=text_mask.astype(jnp.int32),
                              logit_scale=self.scale(), **extra)

    def apply_batch(self, batch: dict[str, jax.Array], *, train: bool = False
                    ) -> EncoderOutputs:
        """The forward pass on a pipeline batch: passes on every model input it holds, and
        carries its loss inputs through to the outputs."""
        optional = {k: batch[k] for k in OPTIONAL_INPUTS if k in batch}
        outputs = self(batch["image"], batch["text_ids"], batch["text_mask"], **optional,
                       train=train)
        return outputs.replace(**{k: batch[k] for k in LOSS_INPUTS if k in batch})


def dummy_inputs(image_size: int, max_len: int, batch: int = 1
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Zero images, zero ids and an all-ones mask: enough to trace every param's shape."""
    return (jnp.zeros((batch, image_size, image_size, 3), jnp.float32),
            jnp.zeros((batch, max_len), jnp.int32), jnp.ones((batch, max_len), jnp.int32))


def dummy_optional_inputs(model: DualEncoder, image_size: int, max_len: int
                          ) -> dict[str, jax.Array]:
    """Dummy extra views / MLM inputs, only for the heads the model has (so they get params)."""
    extra = {}
    if model.ssl_head is not None or model.simsiam_projector is not None:
        extra["image_views"] = jnp.zeros((1, 1, image_size, image_size, 3), jnp.float32)
    if model.mlm_head is not None:
        extra.update(mlm_ids=jnp.zeros((1, max_len), jnp.int32),
                     mlm_positions=jnp.zeros((1, 1), jnp.int32),
                     mlm_labels=jnp.zeros((1, 1), jnp.int32),
                     mlm_weights=jnp.zeros((1, 1), jnp.int32))
    return extra


def init_params(model: DualEncoder, rng: jax.Array, image_size: int, max_len: int) -> Any:
    """The `params` collection from dummy inputs (wrap in `jax.eval_shape` for shapes only)."""
    return model.init(rng, *dummy_inputs(image_size, max_len),
                      **dummy_optional_inputs(model, image_size, max_len))["params"]
