"""The `config.model` schema, its size presets, and the model built from it.

Fields (all required; `model_config(size)` fills every one):

  model.image.{image_size, patch_size, width, depth, num_heads, mlp_dim,
               patch_bias, ln_pre, activation, layer_norm_eps}
  model.image.token_keep_fraction   optional, default 1.0: FLIP's share of patches each
                                    example keeps at train time (evaluation sees them all)
  model.text.{kind ('causal' | 'bert'), vocab_size, max_len, width, depth, num_heads, mlp_dim,
              pooling ('eos' | 'cls' | 'mean'), activation, layer_norm_eps, type_vocab_size}
  model.{embed_dim, projection ('linear' | 'mlp'), projection_hidden_dim,
         projection_activation, init_logit_scale, max_logit_scale,
         dtype ('float32' | 'bfloat16'), dropout, remat}
  model.text_projection       '' (the text head is `projection` too) | 'linear' | 'mlp': a
                              text head of its own kind (BiomedCLIP: linear image head, MLP
                              text head).
  model.attention             optional, 'xla' (default) | 'cudnn': the kernel behind
                              `jax.nn.dot_product_attention` (`layers.attend`); 'cudnn' is
                              NVIDIA's fused flash attention (bfloat16 on a GPU).

A method may own more fields, for its heads (`Method.model_fields`, set by its config defaults
and checked by `Method.check_model`): SigLIP's `init_logit_bias`, FILIP's and GLoRIA's
`token_projection`, SLIP's and DeCLIP's `ssl_head.*`, DeCLIP's `mlm_head` (see each module in
`medclip_jax/methods/`). `build_model(cfg, method)` accepts exactly the fields of the method.

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
from medclip_jax.models.dual_encoder import DualEncoder, MlpHead, linear_head
from medclip_jax.models.text import BertTextEncoder, CausalTextTransformer
from medclip_jax.models.vit import VisionTransformer

SIZES = ("tiny", "small", "base")
TEXT_KINDS = ("causal", "bert")
PROJECTIONS = ("linear", "mlp")


def _tower(image_size: int, patch_size: int, width: int, depth: int, num_heads: int,
           mlp_dim: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        image_size=image_size, patch_size=patch_size, width=width, depth=depth,
        num_heads=num_heads, mlp_dim=mlp_dim, patch_bias=False, ln_pre=True,
        activation="quick_gelu", layer_norm_eps=1e-5, token_keep_fraction=1.0))


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
        remat=False, text_projection="", attention="xla"))


#: Fields that every saved model config had before methods owned their heads, with the value
#: that meant "no such head"; `saved_model_config` drops them for the methods that no longer
#: own them.
LEGACY_HEAD_FIELDS = {"init_logit_bias": None, "token_projection": "none",
                      "ssl_head": "none", "mlm_head": False}


def saved_model_config(cfg: ml_collections.ConfigDict, method: str
                       ) -> ml_collections.ConfigDict:
    """A checkpoint's `config.model` in today's schema for `method`: head fields of the old
    shared schema that are off are dropped, and `text_projection` (younger than some
    checkpoints) is added; fails, naming the field, on an old head the method no longer has."""
    from medclip_jax import methods
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    owned = methods.get(method).model_fields
    for name, off in LEGACY_HEAD_FIELDS.items():
        if name not in cfg or name in owned:
            continue
        value = cfg[name].kind if name == "ssl_head" else cfg[name]
        if value != off:
            raise UserError(f"config.model.{name}={value!r}: method {method!r} has no such "
                            f"head (a config saved before the heads belonged to methods)")
        del cfg[name]
    if "text_projection" not in cfg:
        cfg.text_projection = ""
    return cfg


# --- validation -----------------------------------------------------------------------------

_IMAGE_INTS = ("image_size", "patch_size", "width", "depth", "num_heads", "mlp_dim")
_TEXT_INTS = ("vocab_size", "max_len", "width", "depth", "num_heads", "mlp_dim",
              "type_vocab_size")


def fail(field: str, message: str) -> None:
    raise UserError(f"config.model.{field} {message}")


def check_fields(section: Any, expected: set[str], prefix: str,
                 optional: frozenset[str] = frozenset()) -> None:
    keys = set(section.keys())
    for name in sorted(expected - keys):
        fail(f"{prefix}{name}", "is missing")
    for name in sorted(keys - expected - optional):
        fail(f"{prefix}{name}", "is not a model field (typo?)")


def check_positive_int(section: Any, name: str, prefix: str) -> None:
    value = section[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        fail(f"{prefix}{name}", f"must be a positive integer, got {value!r}")


def check_choice(section: Any, name: str, choices: tuple[str, ...], prefix: str) -> None:
    if section[name] not in choices:
        fail(f"{prefix}{name}", f"must be one of {choices}, got {section[name]!r}")


def _check_heads(section: Any, prefix: str) -> None:
    if section.width % section.num_heads:
        fail(f"{prefix}width", f"({section.width}) must be divisible by "
              f"{prefix}num_heads ({section.num_heads})")


#: Optional image fields (configs saved or imported before them lack them) and their defaults.
IMAGE_OPTIONAL = {"token_keep_fraction": 1.0}


#: Optional top-level fields and their defaults.
MODEL_OPTIONAL = {"attention": "xla"}


def attention(cfg: ml_collections.ConfigDict) -> str:
    return cfg.get("attention", MODEL_OPTIONAL["attention"])


def token_keep_fraction(cfg: ml_collections.ConfigDict) -> float:
    return float(cfg.image.get("token_keep_fraction", IMAGE_OPTIONAL["token_keep_fraction"]))


BASE_FIELDS = frozenset({"image", "text", "embed_dim", "projection", "projection_hidden_dim",
                         "projection_activation", "init_logit_scale", "max_logit_scale",
                         "dtype", "dropout", "remat", "text_projection"})


def validate_model_config(cfg: ml_collections.ConfigDict, method: str = "clip") -> None:
    """Raises UserError naming the first field that cannot build a model for `method`."""
    from medclip_jax import methods
    spec = methods.get(method)
    check_fields(cfg, BASE_FIELDS | set(spec.model_fields), "",
                 optional=frozenset(MODEL_OPTIONAL))
    check_fields(cfg.image, set(_IMAGE_INTS) | {"patch_bias", "ln_pre", "activation",
                                                   "layer_norm_eps"}, "image.",
                 optional=frozenset(IMAGE_OPTIONAL))
    check_fields(cfg.text, set(_TEXT_INTS) | {"kind", "pooling", "activation",
                                                 "layer_norm_eps"}, "text.")
    for name in _IMAGE_INTS:
        check_positive_int(cfg.image, name, "image.")
    for name in _TEXT_INTS:
        if name == "vocab_size" and isinstance(cfg.text.vocab_size, int) \
                and cfg.text.vocab_size <= 0:
            fail("text.vocab_size", f"must be a positive integer (the tokenizer's vocabulary "
                  f"size), got {cfg.text.vocab_size}")
        check_positive_int(cfg.text, name, "text.")
    if cfg.image.image_size % cfg.image.patch_size:
        fail("image.image_size", f"({cfg.image.image_size}) must be divisible by "
              f"model.image.patch_size ({cfg.image.patch_size})")
    _check_heads(cfg.image, "image.")
    _check_heads(cfg.text, "text.")
    check_choice(cfg.image, "activation", layers.ACTIVATIONS, "image.")
    check_choice(cfg.text, "activation", layers.ACTIVATIONS, "text.")
    check_choice(cfg.text, "kind", TEXT_KINDS, "text.")
    check_choice(cfg.text, "pooling", text_lib.POOLINGS, "text.")
    check_choice(cfg, "projection", PROJECTIONS, "")
    check_choice(cfg, "text_projection", ("",) + PROJECTIONS, "")
    check_choice(cfg, "projection_activation", layers.ACTIVATIONS, "")
    check_choice(cfg, "dtype", tuple(layers.DTYPES), "")
    if attention(cfg) not in layers.ATTENTION_IMPLEMENTATIONS:
        fail("attention", f"must be one of {layers.ATTENTION_IMPLEMENTATIONS}, got "
                          f"{attention(cfg)!r}")
    check_positive_int(cfg, "embed_dim", "")
    if "mlp" in (cfg.projection, cfg.text_projection):
        check_positive_int(cfg, "projection_hidden_dim", "")
    for section, name, prefix in ((cfg.image, "layer_norm_eps", "image."),
                                  (cfg.text, "layer_norm_eps", "text."),
                                  (cfg, "init_logit_scale", ""), (cfg, "max_logit_scale", "")):
        if not isinstance(section[name], (int, float)) or section[name] <= 0:
            fail(f"{prefix}{name}", f"must be a positive number, got {section[name]!r}")
    if not isinstance(cfg.dropout, (int, float)) or not 0.0 <= cfg.dropout < 1.0:
        fail("dropout", f"must be in [0, 1), got {cfg.dropout!r}")
    keep = cfg.image.get("token_keep_fraction", IMAGE_OPTIONAL["token_keep_fraction"])
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        fail("image.token_keep_fraction", f"must be in (0, 1], got {keep!r}")
    spec.check_model(cfg)


# --- construction ---------------------------------------------------------------------------

def _image_tower(cfg: ml_collections.ConfigDict) -> VisionTransformer:
    fields = {**cfg.image.to_dict(), "token_keep_fraction": token_keep_fraction(cfg)}
    return VisionTransformer(**fields, dropout=cfg.dropout, remat=cfg.remat,
                             dtype=layers.DTYPES[cfg.dtype], attention=attention(cfg))


def _text_tower(cfg: ml_collections.ConfigDict) -> CausalTextTransformer | BertTextEncoder:
    fields = cfg.text.to_dict()
    kind = fields.pop("kind")
    common = dict(dropout=cfg.dropout, remat=cfg.remat, dtype=layers.DTYPES[cfg.dtype],
                  attention=attention(cfg))
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


def build_model(cfg: ml_collections.ConfigDict, method: str = "clip") -> DualEncoder:
    """The DualEncoder described by `config.model` (validated first), with the heads of
    `config.method`."""
    from medclip_jax import methods
    validate_model_config(cfg, method)
    kinds = head_kinds(cfg)
    return DualEncoder(image=_image_tower(cfg), text=_text_tower(cfg),
                       image_proj=_projection(cfg, cfg.image.width, kinds["image"]),
                       text_proj=_projection(cfg, cfg.text.width, kinds["text"]),
                       init_logit_scale=float(cfg.init_logit_scale),
                       max_logit_scale=float(cfg.max_logit_scale),
                       heads=methods.get(method).heads(cfg))
