"""open_clip checkpoints (safetensors) into our `DualEncoder`, and our params back out.

A folder in open_clip's Hugging Face layout: ``open_clip_config.json`` (``{"model_cfg": ...,
"preprocess_cfg": ...}``, or the bare model config) + ``open_clip_model.safetensors`` (or
``model.safetensors``). Two tower families are read, in any combination, because that is
where our towers match open_clip's exactly:

* image: open_clip's own ViT (``visual.conv1``, ``visual.transformer.resblocks.{i}``, ...;
  OpenAI / LAION CLIP) or a timm ViT (``visual.trunk.*`` + ``visual.head.proj``; BiomedCLIP's
  ``vit_base_patch16_224``), the class token pooled, a bias-free linear projection;
* text: open_clip's causal text transformer (``token_embedding``, ``transformer.resblocks``,
  ``ln_final``, ``text_projection``; argmax/EOS pooling) or an HF BERT (``text.transformer.*``;
  BiomedCLIP's PubMedBERT) with [CLS] or mean pooling and a linear or MLP projection
  (``text.proj``; the MLP has no biases in open_clip, imported as zero biases).

Architecture comes from the model config: widths, depths, heads (``width / head_width`` for
the image tower), MLP ratio and ``quick_gelu`` for open_clip's towers; a timm ViT's heads, norm
eps, patch bias and ``norm_pre`` from its model name (``vit_<size>_patch<p>[_clip][_quickgelu]
_<res>``) and its widths from the tensors; an HF text tower from the config.json of the folder
that ``hf_model_name`` names (absolute, or relative to the checkpoint folder), else from the
tensor shapes with BERT's defaults (``hidden / 64`` heads, GELU, eps 1e-12; logged). Options
our towers cannot express (layer scale, attentional or average pooling, a BERT pooler head,
biased projections, q/k norms, ...) fail with one line naming the config field. Tensor
shape mismatches name the tensor and both shapes; tensors nothing reads are listed in one
warning; the position grid is resized for another image size (as in `hf_clip`).

    params, model_cfg = import_open_clip("/path/to/BiomedCLIP", image_size=224)
    export_open_clip(params, model_cfg, "/tmp/out")   # open_clip_config.json + safetensors
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any

import ml_collections
import numpy as np

from medclip_jax.errors import UserError
from medclip_jax.models import presets
from medclip_jax.pretrained import hf_bert, hf_folder
from medclip_jax.pretrained.hf_bert import TensorReader
from medclip_jax.pretrained.hf_clip import (check_target_sizes, model_config_from,
                                           resize_positions)

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "model.safetensors")
OPEN_CLIP_LN_EPS = 1e-5
#: Our block param names -> open_clip's ResidualAttentionBlock / timm's ViT Block.
NATIVE_BLOCK = {"ln_1": "ln_1", "qkv": "attn.in_proj_weight", "qkv_bias": "attn.in_proj_bias",
                "out": "attn.out_proj", "ln_2": "ln_2", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}
TIMM_BLOCK = {"ln_1": "norm1", "qkv": "attn.qkv.weight", "qkv_bias": "attn.qkv.bias",
              "out": "attn.proj", "ln_2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
TIMM_VIT_NAME = re.compile(r"^vit_(tiny|small|medium|base|large|huge)_patch(\d+)(_clip)?"
                           r"(_quickgelu)?_(\d+)(\..*)?$")
#: timm ViT size -> (width, depth, heads).
TIMM_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "medium": (512, 12, 8),
              "base": (768, 12, 12), "large": (1024, 24, 16), "huge": (1280, 32, 16)}
HF_POOLERS = {"cls_last_hidden_state_pooler": "cls", "mean_pooler": "mean"}
#: Config fields whose non-default values change the computation in ways our towers lack.
VISION_DEFAULTS = {"ls_init_value": None, "attentional_pool": False, "pos_embed_type":
                   "learnable", "pool_type": "tok", "qk_norm": False, "scaled_cosine_attn":
                   False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
                   "scale_fc": False, "act_kwargs": None, "block_type": None}
TEXT_DEFAULTS = {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False,
                 "proj_bias": False, "proj_type": "linear", "act_kwargs": None,
                 "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                 "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
                 "block_type": None}


# --- config ---------------------------------------------------------------------------------

def read_model_config(folder: str) -> dict[str, Any]:
    """The ``model_cfg`` of the folder's open_clip_config.json (or the bare model config)."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: not a folder; expected an open_clip folder "
                        f"({CONFIG_NAME} + {WEIGHT_NAMES[0]})")
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.exists(path):
        raise UserError(f"{folder}: no {CONFIG_NAME}; expected an open_clip folder "
                        f"({CONFIG_NAME} + {WEIGHT_NAMES[0]})")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    model_cfg = config.get("model_cfg", config) if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict) or not all(
            isinstance(model_cfg.get(k), dict) for k in ("vision_cfg", "text_cfg")):
        raise UserError(f"{path}: needs model_cfg with vision_cfg and text_cfg (an open_clip "
                        f"model config)")
    return model_cfg


def reject_options(cfg: dict[str, Any], defaults: dict[str, Any], where: str) -> None:
    """One line naming the first field set to something our towers do not compute."""
    for key, default in defaults.items():
        value = cfg.get(key, default)
        harmless = {"act_kwargs": ({},), "block_type": ("default",)}.get(key, ())
        if value != default and value not in harmless:
            raise UserError(f"{where}.{key}={value!r} is not supported (our towers need "
                            f"{default!r})")


def norm_eps(cfg: dict[str, Any], where: str) -> float:
    kwargs = cfg.get("norm_kwargs") or {}
    if set(kwargs) - {"eps"}:
        raise UserError(f"{where}.norm_kwargs={kwargs!r} is not supported (eps only)")
    return float(kwargs.get("eps", OPEN_CLIP_LN_EPS))


def square_size(value: Any, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise UserError(f"{where}={value!r}: only square images are supported")
        value = value[0]
    return int(value)


def native_vision_fields(v: dict[str, Any], activation: str, where: str) -> dict[str, Any]:
    reject_options(v, VISION_DEFAULTS, where)
    layers = v.get("layers", 12)
    if not isinstance(layers, int):
        raise UserError(f"{where}.layers={layers!r}: ResNet image towers are not supported "
                        f"(a ViT has an integer layer count)")
    width = int(v.get("width", 768))
    head_width = int(v.get("head_width", 64))
    if width % head_width:
        raise UserError(f"{where}: width {width} is not a multiple of head_width {head_width}")
    return {"image_size": square_size(v.get("image_size", 224), f"{where}.image_size"),
            "patch_size": int(v.get("patch_size", 16)), "width": width, "depth": layers,
            "num_heads": width // head_width,
            "mlp_dim": int(width * float(v.get("mlp_ratio", 4.0))), "patch_bias": False,
            "ln_pre": not v.get("no_ln_pre", False), "activation": activation,
            "layer_norm_eps": norm_eps(v, where)}


def timm_vision_fields(v: dict[str, Any], tensors: dict[str, np.ndarray], where: str
                       ) -> dict[str, Any]:
    """A timm ViT's fields: the model name fixes width, depth, heads, eps, patch bias and
    ln_pre (the tensors are checked against them when read); the MLP width is read."""
    name = v["timm_model_name"]
    match = TIMM_VIT_NAME.match(name)
    if not match:
        raise UserError(f"{where}.timm_model_name={name!r} is not supported: expected a plain "
                        f"timm ViT, vit_<tiny|small|medium|base|large|huge>_patch<p>[_clip]"
                        f"[_quickgelu]_<size>")
    size, patch, clip_variant, quick, _, _ = match.groups()
    pool, proj = v.get("timm_pool", "avg"), v.get("timm_proj", "linear")
    if pool not in ("", "token"):
        raise UserError(f"{where}.timm_pool={pool!r} is not supported (the class token: '' or "
                        f"'token')")
    if proj != "linear" or v.get("timm_proj_bias", False):
        raise UserError(f"{where}.timm_proj={proj!r} (bias {v.get('timm_proj_bias', False)}) "
                        f"is not supported (a bias-free 'linear' projection)")
    width, depth, heads = TIMM_SIZES[size]
    fc1 = tensors.get("visual.trunk.blocks.0.mlp.fc1.weight")
    return {"image_size": square_size(v.get("image_size", 224), f"{where}.image_size"),
            "patch_size": int(patch), "width": width, "depth": depth, "num_heads": heads,
            "mlp_dim": int(fc1.shape[0]) if fc1 is not None else 4 * width,
            "patch_bias": not clip_variant, "ln_pre": bool(clip_variant),
            "activation": "quick_gelu" if quick else "gelu",
            "layer_norm_eps": 1e-5 if clip_variant else 1e-6}


def native_text_fields(t: dict[str, Any], activation: str, where: str) -> dict[str, Any]:
    reject_options(t, TEXT_DEFAULTS, where)
    if t.get("pool_type", "argmax") not in ("argmax", "eos"):
        raise UserError(f"{where}.pool_type={t['pool_type']!r} is not supported ('argmax' or "
                        f"'eos': the end-of-text token)")
    width = int(t.get("width", 512))
    return {"kind": "causal", "vocab_size": int(t.get("vocab_size", 49408)),
            "max_len": int(t.get("context_length", 77)), "width": width,
            "depth": int(t.get("layers", 12)), "num_heads": int(t.get("heads", 8)),
            "mlp_dim": int(width * float(t.get("mlp_ratio", 4.0))), "pooling": "eos",
            "activation": activation, "layer_norm_eps": norm_eps(t, where),
            "type_vocab_size": 2}


def hf_text_config(folder: str, t: dict[str, Any], tensors: dict[str, np.ndarray],
                   where: str) -> dict[str, Any]:
    """BertTextEncoder fields of the HF text tower (see the module docstring for the order)."""
    name = str(t["hf_model_name"])
    for candidate in (name, os.path.join(folder, name)):
        if os.path.exists(os.path.join(candidate, "config.json")):
            return hf_bert.text_fields(hf_folder.read_config(candidate), candidate)
    prefix = "text.transformer."
    word = tensors.get(f"{prefix}embeddings.word_embeddings.weight")
    if word is None:
        raise UserError(f"{where}.hf_model_name={name!r}: only BERT text towers are supported "
                        f"and {prefix}embeddings.word_embeddings.weight is missing")
    width = int(word.shape[1])
    layers = {k[len(prefix):].split(".")[2] for k in tensors
              if k.startswith(f"{prefix}encoder.layer.")}
    fields = {"vocab_size": int(word.shape[0]), "width": width, "depth": len(layers),
              "num_heads": max(width // 64, 1),
              "mlp_dim": int(tensors[f"{prefix}encoder.layer.0.intermediate.dense.weight"]
                             .shape[0]) if layers else 4 * width,
              "max_len": int(tensors[f"{prefix}embeddings.position_embeddings.weight"].shape[0]),
              "type_vocab_size": int(
                  tensors[f"{prefix}embeddings.token_type_embeddings.weight"].shape[0]),
              "layer_norm_eps": 1e-12, "activation": "gelu"}
    logging.warning("%s: no config.json for hf_model_name %r (give a local folder to read it); "
                    "BERT read from the tensor shapes with %d heads (hidden / 64), GELU, "
                    "layer norm eps 1e-12", folder, name, fields["num_heads"])
    return fields


def hf_text_fields(folder: str, t: dict[str, Any], tensors: dict[str, np.ndarray],
                   where: str) -> tuple[dict[str, Any], str, int]:
    """(text fields, projection kind, position table rows) of an HF text tower."""
    pooler = t.get("hf_pooler_type", "mean_pooler")
    if pooler not in HF_POOLERS:
        raise UserError(f"{where}.hf_pooler_type={pooler!r} is not supported (one of "
                        f"{', '.join(HF_POOLERS)})")
    proj = t.get("hf_proj_type", "mlp")
    if proj not in ("linear", "mlp"):
        raise UserError(f"{where}.hf_proj_type={proj!r} is not supported ('linear' or 'mlp')")
    fields = hf_text_config(folder, t, tensors, where)
    context = int(t.get("context_length", fields["max_len"]))
    return {**fields, "kind": "bert", "pooling": HF_POOLERS[pooler],
            "max_len": min(context, fields["max_len"])}, proj, fields["max_len"]


def checkpoint_fields(model_cfg: dict[str, Any], tensors: dict[str, np.ndarray], folder: str
                      ) -> dict[str, Any]:
    """`config.model` fields of the checkpoint: image, text, embed_dim, the head kinds."""
    where = f"{folder}/{CONFIG_NAME}"
    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    activation = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    if v.get("timm_model_name"):
        image = timm_vision_fields(v, tensors, f"{where} vision_cfg")
    else:
        image = native_vision_fields(v, activation, f"{where} vision_cfg")
    text_proj = "linear"
    if t.get("hf_model_name"):
        text, text_proj, positions = hf_text_fields(folder, t, tensors, f"{where} text_cfg")
    else:
        text = native_text_fields(t, activation, f"{where} text_cfg")
        positions = text["max_len"]
    try:
        embed_dim = int(model_cfg["embed_dim"])
    except KeyError:
        raise UserError(f"{where}: model_cfg.embed_dim is missing") from None
    return {"image": image, "text": text, "embed_dim": embed_dim, "text_projection": text_proj,
            "text_positions": positions,
            "projection_hidden_dim": (text["width"] + embed_dim) // 2,
            "init_logit_bias": model_cfg.get("init_logit_bias")}


# --- tensors -> params ----------------------------------------------------------------------

def fused_qkv(reader: TensorReader, weight: str, bias: str, width: int) -> dict[str, Any]:
    w, b = reader.take(weight, (3 * width, width)), reader.take(bias, (3 * width,))
    return {name: {"kernel": w[i * width:(i + 1) * width].T, "bias": b[i * width:(i + 1) * width]}
            for i, name in enumerate(("query", "key", "value"))}


def read_blocks(reader: TensorReader, prefix: str, tower: dict[str, Any], names: dict[str, str]
                ) -> dict[str, Any]:
    width, mlp = tower["width"], tower["mlp_dim"]
    out = {}
    for i in range(tower["depth"]):
        p = f"{prefix}.{i}"
        attn = fused_qkv(reader, f"{p}.{names['qkv']}", f"{p}.{names['qkv_bias']}", width)
        attn["out"] = reader.dense(f"{p}.{names['out']}", width, width)
        out[f"block_{i}"] = {
            "ln_1": reader.layer_norm(f"{p}.{names['ln_1']}", width), "attn": attn,
            "ln_2": reader.layer_norm(f"{p}.{names['ln_2']}", width),
            "mlp": {"fc1": reader.dense(f"{p}.{names['fc1']}", width, mlp),
                    "fc2": reader.dense(f"{p}.{names['fc2']}", mlp, width)}}
    return out


def read_vision(reader: TensorReader, image: dict[str, Any], embed_dim: int, image_size: int,
                timm: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(image tower params, image_proj params)."""
    width, patch = image["width"], image["patch_size"]
    grid = image["image_size"] // patch
    if timm:
        p = "visual.trunk."
        conv = reader.take(f"{p}patch_embed.proj.weight", (width, 3, patch, patch))
        cls = reader.take(f"{p}cls_token", (1, 1, width)).reshape(width)
        positions = reader.take(f"{p}pos_embed", (1, grid * grid + 1, width))[0]
        names, blocks, ln_pre, ln_post = TIMM_BLOCK, f"{p}blocks", f"{p}norm_pre", f"{p}norm"
        proj = reader.take("visual.head.proj.weight", (embed_dim, width)).T
    else:
        p = "visual."
        conv = reader.take(f"{p}conv1.weight", (width, 3, patch, patch))
        cls = reader.take(f"{p}class_embedding", (width,))
        positions = reader.take(f"{p}positional_embedding", (grid * grid + 1, width))
        names, blocks = NATIVE_BLOCK, f"{p}transformer.resblocks"
        ln_pre, ln_post = f"{p}ln_pre", f"{p}ln_post"
        proj = reader.take(f"{p}proj", (width, embed_dim))
    params = {"patch_embed": {"kernel": conv.transpose(2, 3, 1, 0)}, "cls_token": cls,
              "pos_embed": resize_positions(positions, grid, image_size // patch)}
    if image["patch_bias"]:
        params["patch_embed"]["bias"] = reader.take(f"{p}patch_embed.proj.bias", (width,))
    if image["ln_pre"]:
        params["ln_pre"] = reader.layer_norm(ln_pre, width)
    params.update(read_blocks(reader, blocks, image, names))
    params["ln_post"] = reader.layer_norm(ln_post, width)
    return params, {"kernel": proj}


def read_native_text(reader: TensorReader, text: dict[str, Any], embed_dim: int, max_len: int
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    width = text["width"]
    params = {
        "token_embed": {"embedding": reader.take("token_embedding.weight",
                                                 (text["vocab_size"], width))},
        "pos_embed": reader.take("positional_embedding", (text["max_len"], width))[:max_len],
        **read_blocks(reader, "transformer.resblocks", text, NATIVE_BLOCK),
        "ln_final": reader.layer_norm("ln_final", width)}
    return params, {"kernel": reader.take("text_projection", (width, embed_dim))}


def read_hf_text(reader: TensorReader, text: dict[str, Any], fields: dict[str, Any],
                 max_len: int) -> tuple[dict[str, Any], dict[str, Any]]:
    prefix = "text.transformer."
    inner = {k[len(prefix):]: v for k, v in reader.tensors.items() if k.startswith(prefix)}
    bert_fields = {k: text[k] for k in ("vocab_size", "width", "depth", "num_heads", "mlp_dim",
                                        "type_vocab_size", "layer_norm_eps", "activation")}
    bert_fields["max_len"] = fields["text_positions"]
    params, unused = hf_bert.convert(inner, bert_fields, max_len, reader.folder)
    reader.used.update(prefix + k for k in set(inner) - set(unused))
    width, embed = text["width"], fields["embed_dim"]
    if fields["text_projection"] == "linear":
        return params, {"kernel": reader.take("text.proj.weight", (embed, width)).T}
    hidden = fields["projection_hidden_dim"]
    fc1 = reader.take("text.proj.0.weight", (hidden, width)).T
    fc2 = reader.take("text.proj.2.weight", (embed, hidden)).T
    return params, {"fc1": {"kernel": fc1, "bias": np.zeros(hidden, np.float32)},
                    "fc2": {"kernel": fc2, "bias": np.zeros(embed, np.float32)}}


def convert(tensors: dict[str, np.ndarray], fields: dict[str, Any], timm: bool,
            image_size: int, max_len: int, folder: str = "") -> tuple[dict[str, Any], list[str]]:
    """(DualEncoder params, names of unused tensors)."""
    image, text = fields["image"], fields["text"]
    check_target_sizes(fields, image_size, max_len, folder)
    reader = TensorReader(tensors, folder)
    params: dict[str, Any] = {}
    params["image"], params["image_proj"] = read_vision(reader, image, fields["embed_dim"],
                                                        image_size, timm)
    if text["kind"] == "bert":
        params["text"], params["text_proj"] = read_hf_text(reader, text, fields, max_len)
    else:
        params["text"], params["text_proj"] = read_native_text(reader, text,
                                                               fields["embed_dim"], max_len)
    params["logit_scale"] = reader.take("logit_scale", ())
    if fields["init_logit_bias"] is not None:
        params["logit_bias"] = reader.take("logit_bias", ())
    return params, reader.unused()


def to_model_config(fields: dict[str, Any], logit_scale: float) -> ml_collections.ConfigDict:
    cfg = model_config_from({"image": fields["image"], "text": fields["text"],
                             "embed_dim": fields["embed_dim"],
                             "init_logit_scale": math.exp(logit_scale)})
    cfg.text_projection = fields["text_projection"]
    cfg.projection_hidden_dim = fields["projection_hidden_dim"]
    cfg.projection_activation = "gelu"
    if fields["init_logit_bias"] is not None:  # SigLIP's field: build with method "siglip"
        cfg.init_logit_bias = float(fields["init_logit_bias"])
    return cfg


def import_open_clip(folder: str, image_size: int | None = None, max_len: int | None = None
                     ) -> tuple[dict[str, Any], ml_collections.ConfigDict]:
    """(params, full `config.model`) of the open_clip folder; `image_size` / `max_len` default
    to the checkpoint's."""
    model_cfg = read_model_config(folder)
    tensors = hf_folder.read_tensors(folder, WEIGHT_NAMES)
    fields = checkpoint_fields(model_cfg, tensors, folder)
    image_size = fields["image"]["image_size"] if image_size is None else int(image_size)
    max_len = fields["text"]["max_len"] if max_len is None else int(max_len)
    timm = bool(model_cfg["vision_cfg"].get("timm_model_name"))
    params, unused = convert(tensors, fields, timm, image_size, max_len, folder)
    if unused:
        logging.warning("%s: %d tensor(s) not used by the model: %s", folder, len(unused),
                        ", ".join(unused))
    fields["image"]["image_size"], fields["text"]["max_len"] = image_size, max_len
    return params, to_model_config(fields, float(params["logit_scale"]))


# --- params -> open_clip folder -------------------------------------------------------------

def write_blocks(tree: dict[str, Any], prefix: str, depth: int, names: dict[str, str]
                 ) -> dict[str, np.ndarray]:
    out = {}
    for i in range(depth):
        block, p = tree[f"block_{i}"], f"{prefix}.{i}"
        attn = block["attn"]
        qkv = ("query", "key", "value")
        out[f"{p}.{names['qkv']}"] = np.concatenate([np.asarray(attn[n]["kernel"]).T
                                                    for n in qkv])
        out[f"{p}.{names['qkv_bias']}"] = np.concatenate([np.asarray(attn[n]["bias"])
                                                         for n in qkv])
        for ours in ("ln_1", "ln_2"):
            out[f"{p}.{names[ours]}.weight"] = block[ours]["scale"]
            out[f"{p}.{names[ours]}.bias"] = block[ours]["bias"]
        for ours, param in (("out", attn["out"]), ("fc1", block["mlp"]["fc1"]),
                            ("fc2", block["mlp"]["fc2"])):
            out[f"{p}.{names[ours]}.weight"] = np.asarray(param["kernel"]).T
            out[f"{p}.{names[ours]}.bias"] = param["bias"]
    return out


def timm_name(image: Any) -> str | None:
    """The timm ViT name of our image tower, when it is a standard one (a timm size, patch
    bias, no ln_pre, GELU, eps 1e-6)."""
    if not (image.patch_bias and not image.ln_pre and image.activation == "gelu"
            and math.isclose(image.layer_norm_eps, 1e-6)):
        return None
    for size, shape in TIMM_SIZES.items():
        if shape == (image.width, image.depth, image.num_heads):
            return f"vit_{size}_patch{image.patch_size}_{image.image_size}"
    return None


def export_config(cfg: Any) -> tuple[dict[str, Any], bool]:
    """(open_clip model_cfg, whether the image tower is a timm ViT) of `config.model`."""
    heads = presets.head_kinds(cfg)
    image, text = cfg.image, cfg.text
    problems = []
    if heads["image"] != "linear":
        problems.append("projection (image head) must be 'linear'")
    if text.kind == "causal" and (heads["text"] != "linear" or text.pooling != "eos"):
        problems.append("a causal text tower needs a linear head and 'eos' pooling")
    if text.kind == "bert" and text.pooling not in ("cls", "mean"):
        problems.append("a BERT text tower needs 'cls' or 'mean' pooling")
    if heads["text"] == "mlp" and (cfg.projection_activation != "gelu" or
                                   cfg.projection_hidden_dim != (text.width + cfg.embed_dim) // 2):
        problems.append("an MLP text head must be GELU with (width + embed_dim) // 2 hidden")
    native_ok = not image.patch_bias and image.width % image.num_heads == 0 and \
        image.activation in ("gelu", "quick_gelu")
    timm = None if native_ok else timm_name(image)
    if not native_ok and timm is None:
        problems.append("the image tower is neither open_clip's ViT (no patch bias) nor a "
                        "standard timm ViT")
    if text.kind == "causal" and image.activation != text.activation and timm is None:
        problems.append("open_clip's towers share one activation (quick_gelu)")
    if problems:
        raise UserError("export_open_clip: not an open_clip architecture: " + "; ".join(problems))
    if timm:
        vision = {"timm_model_name": timm, "timm_model_pretrained": False, "timm_pool": "",
                  "timm_proj": "linear", "image_size": image.image_size}
    else:
        vision = {"image_size": image.image_size, "layers": image.depth, "width": image.width,
                  "head_width": image.width // image.num_heads, "patch_size": image.patch_size,
                  "mlp_ratio": image.mlp_dim / image.width, "no_ln_pre": not image.ln_pre,
                  "norm_kwargs": {"eps": image.layer_norm_eps}}
    if text.kind == "bert":
        pooler = {v: k for k, v in HF_POOLERS.items()}[text.pooling]
        text_cfg = {"hf_model_name": "text_config", "hf_tokenizer_name": "text_config",
                    "hf_proj_type": heads["text"], "hf_pooler_type": pooler,
                    "hf_model_pretrained": False, "context_length": text.max_len}
    else:
        text_cfg = {"context_length": text.max_len, "vocab_size": text.vocab_size,
                    "width": text.width, "heads": text.num_heads, "layers": text.depth,
                    "mlp_ratio": text.mlp_dim / text.width,
                    "norm_kwargs": {"eps": text.layer_norm_eps}}
    quick = (text.activation if text.kind == "causal" else image.activation) == "quick_gelu"
    model_cfg = {"embed_dim": cfg.embed_dim, "quick_gelu": quick, "vision_cfg": vision,
                 "text_cfg": text_cfg}
    if cfg.get("init_logit_bias") is not None:  # a SigLIP model (the field is SigLIP's)
        model_cfg["init_logit_bias"] = float(cfg.init_logit_bias)
    return model_cfg, timm is not None


def export_tensors(params: dict[str, Any], cfg: Any, timm: bool) -> dict[str, np.ndarray]:
    img, out = params["image"], {}
    conv = np.asarray(img["patch_embed"]["kernel"]).transpose(3, 2, 0, 1)
    if timm:
        p = "visual.trunk."
        out.update({f"{p}patch_embed.proj.weight": conv,
                    f"{p}patch_embed.proj.bias": img["patch_embed"]["bias"],
                    f"{p}cls_token": np.asarray(img["cls_token"]).reshape(1, 1, -1),
                    f"{p}pos_embed": np.asarray(img["pos_embed"])[None],
                    f"{p}norm.weight": img["ln_post"]["scale"],
                    f"{p}norm.bias": img["ln_post"]["bias"],
                    "visual.head.proj.weight": np.asarray(params["image_proj"]["kernel"]).T,
                    **write_blocks(img, f"{p}blocks", cfg.image.depth, TIMM_BLOCK)})
    else:
        p = "visual."
        out.update({f"{p}conv1.weight": conv, f"{p}class_embedding": img["cls_token"],
                    f"{p}positional_embedding": img["pos_embed"],
                    f"{p}ln_post.weight": img["ln_post"]["scale"],
                    f"{p}ln_post.bias": img["ln_post"]["bias"],
                    f"{p}proj": params["image_proj"]["kernel"],
                    **write_blocks(img, f"{p}transformer.resblocks", cfg.image.depth,
                                   NATIVE_BLOCK)})
        if cfg.image.ln_pre:
            out[f"{p}ln_pre.weight"] = img["ln_pre"]["scale"]
            out[f"{p}ln_pre.bias"] = img["ln_pre"]["bias"]
    txt, proj = params["text"], params["text_proj"]
    if cfg.text.kind == "bert":
        out.update({f"text.transformer.{k}": v
                    for k, v in hf_bert.to_tensors(txt, cfg.text.depth).items()})
        if "fc1" in proj:
            out["text.proj.0.weight"] = np.asarray(proj["fc1"]["kernel"]).T
            out["text.proj.2.weight"] = np.asarray(proj["fc2"]["kernel"]).T
        else:
            out["text.proj.weight"] = np.asarray(proj["kernel"]).T
    else:
        out.update({"token_embedding.weight": txt["token_embed"]["embedding"],
                    "positional_embedding": txt["pos_embed"],
                    "ln_final.weight": txt["ln_final"]["scale"],
                    "ln_final.bias": txt["ln_final"]["bias"],
                    "text_projection": proj["kernel"],
                    **write_blocks(txt, "transformer.resblocks", cfg.text.depth,
                                   NATIVE_BLOCK)})
    out["logit_scale"] = params["logit_scale"]
    if "logit_bias" in params:
        out["logit_bias"] = np.asarray(params["logit_bias"]).reshape(1)
    return {k: np.array(a, np.float32, order="C") for k, a in out.items()}


def export_open_clip(params: dict[str, Any], model_cfg: Any, folder: str) -> str:
    """Writes ``open_clip_config.json`` + ``open_clip_model.safetensors`` into `folder`; a BERT
    text tower's HF config goes to ``folder/text_config/config.json`` (named by
    ``hf_model_name``, so open_clip and `import_open_clip` both find it offline)."""
    from safetensors.numpy import save_file
    config, timm = export_config(model_cfg)
    tensors = export_tensors(params, model_cfg, timm)
    os.makedirs(folder, exist_ok=True)
    if model_cfg.text.kind == "bert":
        fields = {k: model_cfg.text[k] for k in ("vocab_size", "width", "depth", "num_heads",
                                                 "mlp_dim", "max_len", "type_vocab_size",
                                                 "layer_norm_eps", "activation")}
        text_folder = os.path.join(folder, "text_config")
        os.makedirs(text_folder, exist_ok=True)
        with open(os.path.join(text_folder, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_bert.export_config(fields), f, indent=2)
    with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump({"model_cfg": config, "preprocess_cfg": {}}, f, indent=2)
    save_file(tensors, os.path.join(folder, WEIGHT_NAMES[0]), metadata={"format": "pt"})
    return folder
