"""HF CLIPModel weights (openai/clip-vit-base-patch16/-patch32/-large-patch14, ...) into our
`DualEncoder` (ViT image tower, causal text tower, bias-free linear projections, logit scale),
and our params back out in the same layout.

The architecture comes from the folder's ``config.json`` (a CLIPConfig with ``vision_config`` /
``text_config``; `checkpoint_fields`). Tensor names (HF -> ours):

    vision_model.embeddings.patch_embedding.weight  (O,I,H,W) -> image/patch_embed/kernel (H,W,I,O)
    vision_model.embeddings.class_embedding         -> image/cls_token
    vision_model.embeddings.position_embedding      -> image/pos_embed   (bicubic-resized grid)
    vision_model.pre_layrnorm / post_layernorm      -> image/ln_pre / image/ln_post
    {vision,text}_model.encoder.layers.{i}.layer_norm1 / layer_norm2 -> block_{i}/ln_1 / ln_2
        .self_attn.{q,k,v,out}_proj -> block_{i}/attn/{query,key,value,out}
        .mlp.fc1 / fc2              -> block_{i}/mlp/fc1 / fc2
    text_model.embeddings.token_embedding / position_embedding -> text/token_embed, text/pos_embed
    text_model.final_layer_norm  -> text/ln_final
    visual_projection / text_projection (E, W) -> image_proj / text_proj kernel (W, E)
    logit_scale                  -> logit_scale (the log scale, as in HF)

Linear weights are (out, in): transposed into Flax kernels (in, out). When ``image_size``
differs from the checkpoint's, the patch-position grid is resized bicubically as PyTorch does
(the class-token row is kept as is); the text position table keeps its first ``max_len`` rows. A tensor whose
shape differs from what the config implies fails with one line naming the tensor and both
shapes; unused tensors (e.g. ``position_ids``) are listed in one warning.

Text pooling: HF takes the features at the EOS token (the first ``eos_token_id``, or the
highest id for legacy configs); ours takes the last real token (``mask.sum(-1) - 1``). They
agree when every text ends with the EOS token, as CLIP's tokenizer makes it.

    params, model_cfg = import_clip("/path/to/clip-vit-base-patch16", image_size=224)
    model = presets.build_model(model_cfg)
    export_clip(params, model_cfg, "/tmp/out")    # config.json + model.safetensors
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import ml_collections
import numpy as np

from medclip_jax.errors import UserError
from medclip_jax.models import presets
from medclip_jax.pretrained import hf_folder
from medclip_jax.pretrained.hf_bert import TensorReader

ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
EXPORT_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu",
                      "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
ATTN = (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "out_proj"))


# --- config ---------------------------------------------------------------------------------

def _tower_fields(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    activation = cfg.get("hidden_act", "quick_gelu")
    if activation not in ACTIVATIONS:
        raise UserError(f"{where}.hidden_act {activation!r} is not supported; expected one "
                        f"of {', '.join(ACTIVATIONS)}")
    try:
        return {"width": int(cfg["hidden_size"]), "depth": int(cfg["num_hidden_layers"]),
                "num_heads": int(cfg["num_attention_heads"]),
                "mlp_dim": int(cfg["intermediate_size"]),
                "activation": ACTIVATIONS[activation],
                "layer_norm_eps": float(cfg.get("layer_norm_eps", 1e-5))}
    except KeyError as e:
        raise UserError(f"{where}: missing {e.args[0]!r}") from None


def checkpoint_fields(config: dict[str, Any], folder: str) -> dict[str, Any]:
    """`config.model` fields the checkpoint fixes: image, text, embed_dim, init_logit_scale."""
    if config.get("model_type") not in ("clip", None):
        raise UserError(f"{folder}: model_type {config.get('model_type')!r} is not a CLIP "
                        f"model (expected 'clip')")
    where = f"{folder}/config.json"
    vision, text = config.get("vision_config"), config.get("text_config")
    if not isinstance(vision, dict) or not isinstance(text, dict):
        raise UserError(f"{where}: needs vision_config and text_config (a CLIPConfig)")
    if int(vision.get("num_channels", 3)) != 3:
        raise UserError(f"{where}: vision_config.num_channels {vision['num_channels']} "
                        f"is not supported (3 only)")
    try:
        image = {"image_size": int(vision["image_size"]), "patch_size": int(vision["patch_size"]),
                 **_tower_fields(vision, f"{where} vision_config"),
                 "patch_bias": False, "ln_pre": True}
        text_fields = {"kind": "causal", "vocab_size": int(text["vocab_size"]),
                       "max_len": int(text.get("max_position_embeddings", 77)),
                       **_tower_fields(text, f"{where} text_config"),
                       "pooling": "eos", "type_vocab_size": 2}
    except KeyError as e:
        raise UserError(f"{where} vision_config/text_config: missing {e.args[0]!r}") from None
    return {"image": image, "text": text_fields,
            "embed_dim": int(config.get("projection_dim", 512)),
            "init_logit_scale": math.exp(float(config.get("logit_scale_init_value", 2.6592)))}


def model_config_from(fields: dict[str, Any], base: ml_collections.ConfigDict | None = None
                      ) -> ml_collections.ConfigDict:
    """A full `config.model`: `base` (default the float32 `tiny` preset) with the checkpoint's
    architecture fields and a linear projection."""
    cfg = ml_collections.ConfigDict((base or presets.model_config("tiny")).to_dict())
    cfg.image = ml_collections.ConfigDict(fields["image"])
    cfg.text = ml_collections.ConfigDict(fields["text"])
    cfg.embed_dim = fields["embed_dim"]
    cfg.init_logit_scale = fields["init_logit_scale"]
    cfg.projection = "linear"
    return cfg


# --- tensors -> params ----------------------------------------------------------------------

#: Keys' cubic-convolution parameter as PyTorch's bicubic uses it (jax.image's "cubic" is -0.5).
TORCH_BICUBIC_A = -0.75


def bicubic_matrix(old: int, new: int, a: float = TORCH_BICUBIC_A) -> np.ndarray:
    """[new, old] weights of 1-D bicubic resampling as ``torch.nn.functional.interpolate(...,
    mode="bicubic", align_corners=False)`` does it: half-pixel centres, edge indices clamped,
    no antialiasing (also when shrinking)."""
    src = (np.arange(new) + 0.5) * (old / new) - 0.5
    base = np.floor(src)
    t = src - base

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    matrix = np.zeros((new, old))
    for k in range(4):
        index = np.clip(base.astype(int) - 1 + k, 0, old - 1)
        np.add.at(matrix, (np.arange(new), index), weights[:, k])
    return matrix


def resize_positions(table: np.ndarray, old_grid: int, new_grid: int) -> np.ndarray:
    """[1 + old^2, W] -> [1 + new^2, W]: the class row kept, the patch grid resized bicubically
    like PyTorch (HF's ``interpolate_pos_encoding`` and open_clip's ``resize_pos_embed``)."""
    if old_grid == new_grid:
        return table
    width = table.shape[-1]
    grid = table[1:].reshape(old_grid, old_grid, width).astype(np.float64)
    matrix = bicubic_matrix(old_grid, new_grid)
    resized = np.einsum("ai,bj,ijw->abw", matrix, matrix, grid).astype(table.dtype)
    return np.concatenate([table[:1], resized.reshape(-1, width)], axis=0)


def _blocks(reader: TensorReader, prefix: str, tower: dict[str, Any]) -> dict[str, Any]:
    width, mlp = tower["width"], tower["mlp_dim"]
    out = {}
    for i in range(tower["depth"]):
        hf = f"{prefix}.encoder.layers.{i}"
        out[f"block_{i}"] = {
            "ln_1": reader.layer_norm(f"{hf}.layer_norm1", width),
            "attn": {ours: reader.dense(f"{hf}.self_attn.{theirs}", width, width)
                     for ours, theirs in ATTN},
            "ln_2": reader.layer_norm(f"{hf}.layer_norm2", width),
            "mlp": {"fc1": reader.dense(f"{hf}.mlp.fc1", width, mlp),
                    "fc2": reader.dense(f"{hf}.mlp.fc2", mlp, width)},
        }
    return out


def check_target_sizes(fields: dict[str, Any], image_size: int, max_len: int,
                       folder: str) -> None:
    """The image size must tile into the checkpoint's patches; the text may only get shorter."""
    if image_size % fields["image"]["patch_size"]:
        raise UserError(f"{folder}: image_size {image_size} is not a multiple of the "
                        f"checkpoint's patch_size {fields['image']['patch_size']}")
    if max_len > fields["text"]["max_len"]:
        raise UserError(f"{folder}: max_len {max_len} exceeds the checkpoint's text length "
                        f"{fields['text']['max_len']}")


def convert(tensors: dict[str, np.ndarray], fields: dict[str, Any], image_size: int,
            max_len: int, folder: str = "") -> tuple[dict[str, Any], list[str]]:
    """(DualEncoder params, names of unused tensors)."""
    image, text = fields["image"], fields["text"]
    check_target_sizes(fields, image_size, max_len, folder)
    reader = TensorReader(tensors, folder)
    iw, tw, patch, embed = image["width"], text["width"], image["patch_size"], fields["embed_dim"]
    old_grid = image["image_size"] // patch
    v = "vision_model"
    conv = reader.take(f"{v}.embeddings.patch_embedding.weight", (iw, 3, patch, patch))
    positions = reader.take(f"{v}.embeddings.position_embedding.weight",
                            (old_grid * old_grid + 1, iw))
    image_params = {
        "patch_embed": {"kernel": conv.transpose(2, 3, 1, 0)},
        "cls_token": reader.take(f"{v}.embeddings.class_embedding", (iw,)),
        "pos_embed": resize_positions(positions, old_grid, image_size // patch),
        "ln_pre": reader.layer_norm(f"{v}.pre_layrnorm", iw),
        **_blocks(reader, v, image),
        "ln_post": reader.layer_norm(f"{v}.post_layernorm", iw),
    }
    t = "text_model"
    text_params = {
        "token_embed": {"embedding": reader.take(f"{t}.embeddings.token_embedding.weight",
                                                 (text["vocab_size"], tw))},
        "pos_embed": reader.take(f"{t}.embeddings.position_embedding.weight",
                                 (text["max_len"], tw))[:max_len],
        **_blocks(reader, t, text),
        "ln_final": reader.layer_norm(f"{t}.final_layer_norm", tw),
    }
    params = {
        "image": image_params, "text": text_params,
        "image_proj": {"kernel": reader.take("visual_projection.weight", (embed, iw)).T},
        "text_proj": {"kernel": reader.take("text_projection.weight", (embed, tw)).T},
        "logit_scale": reader.take("logit_scale", ()),
    }
    return params, reader.unused()


def import_clip(folder: str, image_size: int | None = None, max_len: int | None = None
                ) -> tuple[dict[str, Any], ml_collections.ConfigDict]:
    """(params, full `config.model`) of the HF CLIP folder; `image_size` / `max_len` default
    to the checkpoint's. Pass the config to `presets.build_model` (or merge its image / text /
    embed_dim / init_logit_scale fields into your own; `model_config_from(fields, base)`)."""
    fields = checkpoint_fields(hf_folder.read_config(folder), folder)
    image_size = fields["image"]["image_size"] if image_size is None else int(image_size)
    max_len = fields["text"]["max_len"] if max_len is None else int(max_len)
    params, unused = convert(hf_folder.read_tensors(folder), fields, image_size, max_len,
                             folder)
    if unused:
        logging.warning("%s: %d tensor(s) not used by the model: %s", folder, len(unused),
                        ", ".join(unused))
    fields["image"]["image_size"], fields["text"]["max_len"] = image_size, max_len
    return params, model_config_from(fields)


# --- params -> HF folder --------------------------------------------------------------------

def _check_exportable(cfg: Any) -> None:
    problems = []
    if cfg.text.kind != "causal":
        problems.append(f"text.kind={cfg.text.kind!r} (needs 'causal')")
    if cfg.text.pooling != "eos":
        problems.append(f"text.pooling={cfg.text.pooling!r} (needs 'eos')")
    if set(presets.head_kinds(cfg).values()) != {"linear"}:
        problems.append(f"projection heads {presets.head_kinds(cfg)} (need 'linear')")
    if cfg.image.patch_bias or not cfg.image.ln_pre:
        problems.append("image.patch_bias must be False and image.ln_pre True")
    if problems:
        raise UserError("export_clip: not an HF CLIPModel architecture: " + "; ".join(problems))


def _tower_config(tower: Any) -> dict[str, Any]:
    return {"hidden_size": tower.width, "num_hidden_layers": tower.depth,
            "num_attention_heads": tower.num_heads, "intermediate_size": tower.mlp_dim,
            "hidden_act": EXPORT_ACTIVATIONS[tower.activation],
            "layer_norm_eps": tower.layer_norm_eps}


def hf_config(cfg: Any, logit_scale: float) -> dict[str, Any]:
    """The CLIPConfig dict of `config.model`. The text EOS id is written as vocab_size - 1
    (CLIP's BPE puts <|endoftext|> last); our pooling does not read it."""
    vocab = cfg.text.vocab_size
    return {"architectures": ["CLIPModel"], "model_type": "clip",
            "projection_dim": cfg.embed_dim, "logit_scale_init_value": logit_scale,
            "vision_config": {"model_type": "clip_vision_model",
                              "image_size": cfg.image.image_size,
                              "patch_size": cfg.image.patch_size, "num_channels": 3,
                              "projection_dim": cfg.embed_dim, **_tower_config(cfg.image)},
            "text_config": {"model_type": "clip_text_model", "vocab_size": vocab,
                            "max_position_embeddings": cfg.text.max_len,
                            "projection_dim": cfg.embed_dim,
                            "eos_token_id": vocab - 1, "bos_token_id": max(vocab - 2, 0),
                            "pad_token_id": 1 if vocab > 1 else 0, **_tower_config(cfg.text)}}


def _export_blocks(tree: dict[str, Any], prefix: str, depth: int) -> dict[str, np.ndarray]:
    out = {}
    for i in range(depth):
        block, hf = tree[f"block_{i}"], f"{prefix}.encoder.layers.{i}"
        for ours, theirs in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")):
            out[f"{hf}.{theirs}.weight"] = block[ours]["scale"]
            out[f"{hf}.{theirs}.bias"] = block[ours]["bias"]
        dense = [(block["attn"][o], f"self_attn.{t}") for o, t in ATTN]
        dense += [(block["mlp"][n], f"mlp.{n}") for n in ("fc1", "fc2")]
        for p, name in dense:
            out[f"{hf}.{name}.weight"] = np.asarray(p["kernel"]).T
            out[f"{hf}.{name}.bias"] = p["bias"]
    return out


def export_tensors(params: dict[str, Any], cfg: Any) -> dict[str, np.ndarray]:
    """HF CLIPModel state dict (numpy, float32) of our params."""
    img, txt = params["image"], params["text"]
    v, t = "vision_model", "text_model"
    out = {
        f"{v}.embeddings.patch_embedding.weight":
            np.asarray(img["patch_embed"]["kernel"]).transpose(3, 2, 0, 1),
        f"{v}.embeddings.class_embedding": img["cls_token"],
        f"{v}.embeddings.position_embedding.weight": img["pos_embed"],
        f"{v}.pre_layrnorm.weight": img["ln_pre"]["scale"],
        f"{v}.pre_layrnorm.bias": img["ln_pre"]["bias"],
        f"{v}.post_layernorm.weight": img["ln_post"]["scale"],
        f"{v}.post_layernorm.bias": img["ln_post"]["bias"],
        **_export_blocks(img, v, cfg.image.depth),
        f"{t}.embeddings.token_embedding.weight": txt["token_embed"]["embedding"],
        f"{t}.embeddings.position_embedding.weight": txt["pos_embed"],
        f"{t}.final_layer_norm.weight": txt["ln_final"]["scale"],
        f"{t}.final_layer_norm.bias": txt["ln_final"]["bias"],
        **_export_blocks(txt, t, cfg.text.depth),
        "visual_projection.weight": np.asarray(params["image_proj"]["kernel"]).T,
        "text_projection.weight": np.asarray(params["text_proj"]["kernel"]).T,
        "logit_scale": params["logit_scale"],
    }
    return {k: np.array(a, np.float32, order="C") for k, a in out.items()}  # keeps 0-d


def export_clip(params: dict[str, Any], model_cfg: Any, folder: str) -> None:
    """Writes ``config.json`` + ``model.safetensors`` (HF CLIPModel layout) into `folder`."""
    from safetensors.numpy import save_file
    _check_exportable(model_cfg)
    tensors = export_tensors(params, model_cfg)
    os.makedirs(folder, exist_ok=True)
    config = hf_config(model_cfg, float(tensors["logit_scale"]))
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
