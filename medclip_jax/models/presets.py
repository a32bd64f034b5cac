"""The `config.model` schema, its size presets, and the model built from it.

Fields (all required; `model_config(size)` fills every one):

  model.image.{image_size, patch_size, width, depth, num_heads, mlp_dim,
               patch_bias, ln_pre, activation, layer_norm_eps}
  model.text.{kind ('causal' | 'bert'), vocab_size, max_len, width, depth, num_heads, mlp_dim,
              pooling ('eos' | 'cls' | 'mean'), activation, layer_norm_eps, type_vocab_size}
  model.{embed_dim, projection ('linear' | 'mlp'), projection_hidden_dim,
         projection_activation, init_logit_scale, max_logit_scale,
         dtype ('float32' | 'bfloat16'), dropout, remat}
  model.text_projection       '' (the text head is `projection` too) | 'linear' | 'mlp': a
                              text head of its own kind (BiomedCLIP: linear image head, MLP
                              text head).
  model.init_logit_bias       None (no bias) or SigLIP's initial bias (-10).
  model.token_projection      'none' | 'shared' (tokens through image_proj / text_proj: FILIP)
                              | 'separate' (own linear token heads: GLoRIA).
  model.ssl_head.{kind ('none' | 'simclr' | 'simsiam'), hidden_dim, out_dim,
                  predictor_hidden_dim, activation}
                              SLIP's 3-layer SimCLR head, or DeCLIP's SimSiam 3-layer projector
                              + 2-layer predictor (LayerNorm between layers), on the pooled
                              features of the extra image views.
  model.mlm_head              True: a BERT prediction head on the text tower (DeCLIP).

Activations: 'quick_gelu' (OpenAI CLIP), 'gelu' (exact, BERT), 'gelu_tanh', 'relu'.
`text.vocab_size` is the tokenizer's to decide: the training config sets it before
`build_model`, which rejects a non-positive value. `type_vocab_size` is used by 'bert' only.
Switching `text.kind` to 'bert' does not change the other text fields: set activation 'gelu',
layer_norm_eps 1e-12 and pooling 'cls' or 'mean' to match a real BERT.
"""

from typing import Any

import ml_collections

from medclip_jax.errors import UserError
from medclip_jax.models import layers, text as text_lib
from medclip_jax.models.dual_encoder import (DualEncoder, MlmHead, MlpHead, NormMlp,
                                             linear_head)
from medclip_jax.models.text import BertTextEncoder, CausalTextTransformer
from medclip_jax.models.vit import VisionTransformer

SIZES = ("tiny", "small", "base")
TEXT_KINDS = ("causal", "bert")
PROJECTIONS = ("linear", "mlp")
TOKEN_PROJECTIONS = ("none", "shared", "separate")
SSL_HEADS = ("none", "simclr", "simsiam")


def _tower(image_size: int, patch_size: int, width: int, depth: int, num_heads: int,
           mlp_dim: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        image_size=image_size, patch_size=patch_size, width=width, depth=depth,
        num_heads=num_heads, mlp_dim=mlp_dim, patch_bias=False, ln_pre=True,
        activation="quick_gelu", layer_norm_eps=1e-5))


def _text(vocab_size: int, max_len: int, width: int, depth: int, num_heads: int,
          mlp_dim: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        kind="causal", vocab_size=vocab_size, max_len=max_len, width=width, depth=depth,
        num_heads=num_heads, mlp_dim=mlp_dim, pooling="eos", activation="quick_gelu",
        layer_norm_eps=1e-5, type_vocab_size=2))


def model_config(size: str) -> ml_collections.ConfigDict:
    """`tiny` (tests), `small` (2-core CPU demo) or `base` (the paper: CLIP ViT-B/16)."""
    if size == "tiny":
        image, text = _tower(32, 8, 32, 2, 2, 64), _text(512, 16, 32, 2, 2, 64)
        embed_dim, dtype = 32, "float32"
    elif size == "small":
        # Depth 2 and MLP 2x width: ~0.5 s/step at batch 128 on 2 busy CPU cores, against
        # ~1.2-1.5 s/step for depth 4 / MLP 4x width.
        image, text = _tower(64, 8, 128, 2, 4, 256), _text(30522, 32, 128, 2, 4, 256)
        embed_dim, dtype = 128, "float32"
    elif size == "base":
        image, text = _tower(224, 16, 768, 12, 12, 3072), _text(49408, 77, 512, 12, 8, 2048)
        embed_dim, dtype = 512, "bfloat16"
    else:
        raise UserError(f"model size must be one of {SIZES}, got {size!r}")
    return ml_collections.ConfigDict(dict(
        image=image, text=text, embed_dim=embed_dim, projection="linear",
        projection_hidden_dim=2 * embed_dim, projection_activation="relu",
        init_logit_scale=1.0 / 0.07, max_logit_scale=100.0, dtype=dtype, dropout=0.0,
        remat=False, init_logit_bias=None, token_projection="none", text_projection="",
        ssl_head=ml_collections.ConfigDict(dict(
            kind="none", hidden_dim=4 * embed_dim, out_dim=embed_dim,
            predictor_hidden_dim=embed_dim, activation="relu")),
        mlm_head=False))


OPTIONAL_FIELDS = ("init_logit_bias", "token_projection", "ssl_head", "mlm_head",
                   "text_projection")


def with_optional_defaults(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the method-specific fields (off) that configs saved before they existed lack."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    defaults = model_config("tiny")
    for name in OPTIONAL_FIELDS:
        if name not in cfg:
            cfg[name] = defaults[name]
    return cfg


# --- validation -----------------------------------------------------------------------------

_IMAGE_INTS = ("image_size", "patch_size", "width", "depth", "num_heads", "mlp_dim")
_TEXT_INTS = ("vocab_size", "max_len", "width", "depth", "num_heads", "mlp_dim",
              "type_vocab_size")


def _fail(field: str, message: str) -> None:
    raise UserError(f"config.model.{field} {message}")


def _check_fields(section: Any, expected: set[str], prefix: str) -> None:
    keys = set(section.keys())
    for name in sorted(expected - keys):
        _fail(f"{prefix}{name}", "is missing")
    for name in sorted(keys - expected):
        _fail(f"{prefix}{name}", "is not a model field (typo?)")


def _check_positive_int(section: Any, name: str, prefix: str) -> None:
    value = section[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(f"{prefix}{name}", f"must be a positive integer, got {value!r}")


def _check_choice(section: Any, name: str, choices: tuple[str, ...], prefix: str) -> None:
    if section[name] not in choices:
        _fail(f"{prefix}{name}", f"must be one of {choices}, got {section[name]!r}")


def _check_heads(section: Any, prefix: str) -> None:
    if section.width % section.num_heads:
        _fail(f"{prefix}width", f"({section.width}) must be divisible by "
              f"{prefix}num_heads ({section.num_heads})")


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises UserError naming the first field that cannot build a model."""
    top = {"image", "text", "embed_dim", "projection", "projection_hidden_dim",
           "projection_activation", "init_logit_scale", "max_logit_scale", "dtype", "dropout",
           "remat", "init_logit_bias", "token_projection", "ssl_head", "mlm_head",
           "text_projection"}
    _check_fields(cfg, top, "")
    _check_fields(cfg.ssl_head, {"kind", "hidden_dim", "out_dim", "predictor_hidden_dim",
                                 "activation"}, "ssl_head.")
    _check_fields(cfg.image, set(_IMAGE_INTS) | {"patch_bias", "ln_pre", "activation",
                                                   "layer_norm_eps"}, "image.")
    _check_fields(cfg.text, set(_TEXT_INTS) | {"kind", "pooling", "activation",
                                                 "layer_norm_eps"}, "text.")
    for name in _IMAGE_INTS:
        _check_positive_int(cfg.image, name, "image.")
    for name in _TEXT_INTS:
        if name == "vocab_size" and isinstance(cfg.text.vocab_size, int) \
                and cfg.text.vocab_size <= 0:
            _fail("text.vocab_size", f"must be a positive integer (the tokenizer's vocabulary "
                  f"size), got {cfg.text.vocab_size}")
        _check_positive_int(cfg.text, name, "text.")
    if cfg.image.image_size % cfg.image.patch_size:
        _fail("image.image_size", f"({cfg.image.image_size}) must be divisible by "
              f"model.image.patch_size ({cfg.image.patch_size})")
    _check_heads(cfg.image, "image.")
    _check_heads(cfg.text, "text.")
    _check_choice(cfg.image, "activation", layers.ACTIVATIONS, "image.")
    _check_choice(cfg.text, "activation", layers.ACTIVATIONS, "text.")
    _check_choice(cfg.text, "kind", TEXT_KINDS, "text.")
    _check_choice(cfg.text, "pooling", text_lib.POOLINGS, "text.")
    _check_choice(cfg, "projection", PROJECTIONS, "")
    _check_choice(cfg, "text_projection", ("",) + PROJECTIONS, "")
    _check_choice(cfg, "projection_activation", layers.ACTIVATIONS, "")
    _check_choice(cfg, "dtype", tuple(layers.DTYPES), "")
    _check_positive_int(cfg, "embed_dim", "")
    if "mlp" in (cfg.projection, cfg.text_projection):
        _check_positive_int(cfg, "projection_hidden_dim", "")
    for section, name, prefix in ((cfg.image, "layer_norm_eps", "image."),
                                  (cfg.text, "layer_norm_eps", "text."),
                                  (cfg, "init_logit_scale", ""), (cfg, "max_logit_scale", "")):
        if not isinstance(section[name], (int, float)) or section[name] <= 0:
            _fail(f"{prefix}{name}", f"must be a positive number, got {section[name]!r}")
    if not isinstance(cfg.dropout, (int, float)) or not 0.0 <= cfg.dropout < 1.0:
        _fail("dropout", f"must be in [0, 1), got {cfg.dropout!r}")
    _check_choice(cfg, "token_projection", TOKEN_PROJECTIONS, "")
    _check_choice(cfg.ssl_head, "kind", SSL_HEADS, "ssl_head.")
    if cfg.ssl_head.kind != "none":
        for name in ("hidden_dim", "out_dim", "predictor_hidden_dim"):
            _check_positive_int(cfg.ssl_head, name, "ssl_head.")
        _check_choice(cfg.ssl_head, "activation", layers.ACTIVATIONS, "ssl_head.")
    if cfg.init_logit_bias is not None and (isinstance(cfg.init_logit_bias, bool) or
                                            not isinstance(cfg.init_logit_bias, (int, float))):
        _fail("init_logit_bias", f"must be None or a number, got {cfg.init_logit_bias!r}")
    if not isinstance(cfg.mlm_head, bool):
        _fail("mlm_head", f"must be True or False, got {cfg.mlm_head!r}")


# --- construction ---------------------------------------------------------------------------

def _image_tower(cfg: ml_collections.ConfigDict) -> VisionTransformer:
    return VisionTransformer(**cfg.image.to_dict(), dropout=cfg.dropout, remat=cfg.remat,
                             dtype=layers.DTYPES[cfg.dtype])


def _text_tower(cfg: ml_collections.ConfigDict) -> CausalTextTransformer | BertTextEncoder:
    fields = cfg.text.to_dict()
    kind = fields.pop("kind")
    common = dict(dropout=cfg.dropout, remat=cfg.remat, dtype=layers.DTYPES[cfg.dtype])
    if kind == "causal":
        fields.pop("type_vocab_size")
        return CausalTextTransformer(**fields, **common)
    return BertTextEncoder(**fields, **common)


def head_kinds(cfg: ml_collections.ConfigDict) -> dict[str, str]:
    """{"image": kind, "text": kind} of the projection heads ('linear' | 'mlp')."""
    return {"image": cfg.projection, "text": cfg.get("text_projection") or cfg.projection}


def _projection(cfg: ml_collections.ConfigDict, in_width: int, kind: str) -> Any:
    dtype = layers.DTYPES[cfg.dtype]
    if kind == "linear":
        return linear_head(cfg.embed_dim, in_width, dtype)
    return MlpHead(cfg.embed_dim, cfg.projection_hidden_dim, cfg.projection_activation, dtype)


def _optional_heads(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The heads that only some methods use, as DualEncoder attributes."""
    dtype = layers.DTYPES[cfg.dtype]
    heads: dict[str, Any] = {}
    if cfg.token_projection == "separate":
        heads["image_token_proj"] = linear_head(cfg.embed_dim, cfg.image.width, dtype)
        heads["text_token_proj"] = linear_head(cfg.embed_dim, cfg.text.width, dtype)
    ssl = cfg.ssl_head
    if ssl.kind == "simclr":
        heads["ssl_head"] = NormMlp((ssl.hidden_dim, ssl.hidden_dim), ssl.out_dim,
                                    ssl.activation, dtype)
    elif ssl.kind == "simsiam":
        heads["simsiam_projector"] = NormMlp((ssl.hidden_dim, ssl.hidden_dim), ssl.out_dim,
                                             ssl.activation, dtype)
        heads["simsiam_predictor"] = NormMlp((ssl.predictor_hidden_dim,), ssl.out_dim,
                                             ssl.activation, dtype)
    if cfg.mlm_head:
        heads["mlm_head"] = MlmHead(cfg.text.vocab_size, cfg.text.width, dtype)
    return heads


def build_model(cfg: ml_collections.ConfigDict) -> DualEncoder:
    """The DualEncoder described by `config.model` (validated first)."""
    validate_model_config(cfg)
    bias = None if cfg.init_logit_bias is None else float(cfg.init_logit_bias)
    kinds = head_kinds(cfg)
    return DualEncoder(image=_image_tower(cfg), text=_text_tower(cfg),
                       image_proj=_projection(cfg, cfg.image.width, kinds["image"]),
                       text_proj=_projection(cfg, cfg.text.width, kinds["text"]),
                       init_logit_scale=float(cfg.init_logit_scale),
                       max_logit_scale=float(cfg.max_logit_scale), init_logit_bias=bias,
                       token_projection=cfg.token_projection, **_optional_heads(cfg))
