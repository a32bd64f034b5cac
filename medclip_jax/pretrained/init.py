"""`config.init`: start training from published weights instead of a random init.

    config.init.text  = "hf_bert:/path/to/BiomedBERT"      # the text tower <- HF BertModel
    config.init.text  = "hf_clip:/path/to/clip-vit-b16"    # text tower + text_proj <- CLIPModel
    config.init.image = "hf_clip:/path/to/clip-vit-b16"    # image tower + image_proj <- CLIPModel
    config.init.image = "open_clip:/path/to/BiomedCLIP"    # the same from an open_clip folder
    config.init.text  = "open_clip:/path/to/BiomedCLIP"    # (timm / native ViT, BERT / causal)

Empty strings (the default) keep the random init. `apply_init` runs when the train state is
created (a later checkpoint restore still wins, so resuming is unaffected). Before anything is
replaced the checkpoint's architecture is checked against `config.model`: a field that differs
fails with one line naming it (``config.model.text.<field>``, ``config.model.image.<field>``,
``config.model.embed_dim``) and both values; a remaining shape mismatch names the param path
and both shapes. Imported arrays take the dtype and the sharding of the params they replace.
When image and text name the same CLIP / open_clip folder, the logit scale (and SigLIP's bias)
comes from it too, unless ``config.init.logit_scale`` is False. A projection head whose kind
differs from the checkpoint's (ConVIRT's MLP heads on CLIP towers) keeps its random init, with
a warning; a text pooling other than the checkpoint's is warned about (it is not a weight).
The paper preset's ``config.init.clip`` folder fills ``init.image``, ``init.text`` and the
tokenizer; left empty it fails at start-up (`check_init_config`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import ml_collections
import numpy as np

from medclip_jax import sharding as sharding_lib
from medclip_jax.errors import UserError
from medclip_jax.models import presets

KINDS = ("hf_bert", "hf_clip", "open_clip")
DUAL_KINDS = ("hf_clip", "open_clip")
#: config.model.text field -> HF BertConfig name (for the mismatch message).
BERT_FIELDS = {"vocab_size": "vocab_size", "width": "hidden_size",
               "depth": "num_hidden_layers", "num_heads": "num_attention_heads",
               "mlp_dim": "intermediate_size", "type_vocab_size": "type_vocab_size",
               "activation": "hidden_act", "layer_norm_eps": "layer_norm_eps"}


def parse_spec(spec: str, field: str) -> tuple[str, str]:
    """"kind:/folder" -> (kind, folder)."""
    kind, sep, folder = spec.partition(":")
    if sep and kind in KINDS and not folder:
        raise UserError(f"config.init.{field}={spec!r} names no folder: set "
                        f"--config.init.clip=/path/to/clip-vit-base-patch16 (the paper preset "
                        f"starts both towers from it) or --config.init.{field}= (random init)")
    if not sep or kind not in KINDS:
        raise UserError(f"config.init.{field}={spec!r}: expected 'hf_bert:/path/to/folder', "
                        f"'hf_clip:/path/to/folder' or 'open_clip:/path/to/folder'")
    if kind == "hf_bert" and field != "text":
        raise UserError(f"config.init.{field}={spec!r}: hf_bert initialises the text tower "
                        f"only (use config.init.text)")
    return kind, folder


def check_bert_fields(text_cfg: Any, fields: dict[str, Any], folder: str) -> None:
    """One-line UserError on the first config.model.text field that the checkpoint contradicts."""
    if text_cfg.kind != "bert":
        raise UserError(f"config.model.text.kind={text_cfg.kind!r} but config.init.text is the "
                        f"BERT checkpoint {folder}: set config.model.text.kind='bert'")
    for ours, theirs in BERT_FIELDS.items():
        mine, ckpt = text_cfg[ours], fields[ours]
        same = (math.isclose(float(mine), float(ckpt), rel_tol=1e-6)
                if isinstance(ckpt, float) else mine == ckpt)
        if not same:
            raise UserError(f"config.model.text.{ours}={mine!r} does not match the checkpoint "
                            f"{folder} ({theirs} -> {ckpt!r})")
    if text_cfg.max_len > fields["max_len"]:
        raise UserError(f"config.model.text.max_len={text_cfg.max_len} exceeds the checkpoint "
                        f"{folder} (max_position_embeddings={fields['max_len']})")


def import_dual(kind: str, folder: str, model_cfg: Any) -> tuple[dict[str, Any], Any]:
    """(params, the checkpoint's config.model) of a two-tower folder, at our image size and
    text length."""
    if kind == "hf_clip":
        from medclip_jax.pretrained import hf_clip
        return hf_clip.import_clip(folder, model_cfg.image.image_size, model_cfg.text.max_len)
    from medclip_jax.pretrained import openclip
    return openclip.import_open_clip(folder, model_cfg.image.image_size, model_cfg.text.max_len)


def check_clip_fields(model_cfg: Any, ckpt_cfg: Any, section: str, folder: str) -> None:
    """One-line UserError on the first config.model.<section> field (or embed_dim) that the
    checkpoint's architecture contradicts (pooling is not a weight: warned about only)."""
    mine_pool, ckpt_pool = model_cfg[section].get("pooling"), ckpt_cfg[section].get("pooling")
    if mine_pool != ckpt_pool:
        logging.warning("config.model.%s.pooling=%r but the checkpoint %s pools %r", section,
                        mine_pool, folder, ckpt_pool)
    pairs = [(f"{section}.{k}", model_cfg[section][k], v)
             for k, v in ckpt_cfg[section].items() if k != "pooling" and k in model_cfg[section]]
    pairs.append(("embed_dim", model_cfg.embed_dim, ckpt_cfg.embed_dim))
    for name, mine, ckpt in pairs:
        same = (math.isclose(float(mine), float(ckpt), rel_tol=1e-6)
                if isinstance(ckpt, float) else mine == ckpt)
        if not same:
            raise UserError(f"config.model.{name}={mine!r} does not match the checkpoint "
                            f"{folder} ({ckpt!r})")


def heads_match(model_cfg: Any, ckpt_cfg: Any, field: str, folder: str) -> bool:
    """Whether the checkpoint's `field` projection head fits ours (a different kind: warned,
    kept random; an MLP of another hidden size or activation: a UserError)."""
    mine, theirs = presets.head_kinds(model_cfg)[field], presets.head_kinds(ckpt_cfg)[field]
    if mine != theirs:
        logging.warning("config.init.%s: the %s head of %s is %r, the model's %r: %s_proj "
                        "keeps its random init", field, field, folder, theirs, mine, field)
        return False
    if mine == "mlp":
        for name in ("projection_hidden_dim", "projection_activation"):
            if model_cfg[name] != ckpt_cfg[name]:
                raise UserError(f"config.model.{name}={model_cfg[name]!r} does not match the "
                                f"checkpoint {folder} ({ckpt_cfg[name]!r})")
    return True


DualCache = dict[tuple[str, str], tuple[dict[str, Any], Any]]


def imported_subtrees(config: ml_collections.ConfigDict, dual_cache: DualCache | None = None
                      ) -> dict[str, tuple[str, Any]]:
    """{top-level param key: (config field, imported subtree)} named by config.init.

    `dual_cache`: two-tower folders already imported (`import_dual`), keyed (kind, folder), so
    a caller that read one for its architecture does not read it again."""
    init = config.get("init") or {}
    specs = {f: init.get(f, "") or "" for f in ("image", "text")}
    specs = {f: parse_spec(s, f) for f, s in specs.items() if s}
    out: dict[str, tuple[str, Any]] = {}
    dual_cache = dict(dual_cache or {})
    for field, (kind, folder) in specs.items():
        if kind == "hf_bert":
            from medclip_jax.pretrained import hf_bert
            fields = hf_bert.text_fields(hf_bert.hf_folder.read_config(folder), folder)
            check_bert_fields(config.model.text, fields, folder)
            params, _ = hf_bert.import_bert(folder, max_len=int(config.model.text.max_len))
            out["text"] = (field, params)
            continue
        if (kind, folder) not in dual_cache:
            dual_cache[kind, folder] = import_dual(kind, folder, config.model)
        params, ckpt_cfg = dual_cache[kind, folder]
        check_clip_fields(config.model, ckpt_cfg, field, folder)
        out[field] = (field, params[field])
        if heads_match(config.model, ckpt_cfg, field, folder):
            out[f"{field}_proj"] = (field, params[f"{field}_proj"])
    same_folder = len(specs) == 2 and specs["image"] == specs["text"]
    if init.get("logit_scale", True) and same_folder and specs["image"][0] in DUAL_KINDS:
        params = dual_cache[specs["image"]][0]
        out["logit_scale"] = ("image", params["logit_scale"])
        if "logit_bias" in params and config.model.get("init_logit_bias") is not None:
            out["logit_bias"] = ("image", params["logit_bias"])
    return out


def check_init_config(config: ml_collections.ConfigDict) -> None:
    """Start-up check of ``config.init`` (and a tokenizer left empty by ``init.clip``)."""
    init = config.get("init") or {}
    for field in ("image", "text"):
        if init.get(field):
            parse_spec(init[field], field)
    if config.data.get("tokenizer") == "hf:":
        where = "config.init.clip" if "clip" in init else "config.data.tokenizer"
        raise UserError(f"config.data.tokenizer='hf:' names no folder: set {where}="
                        f"/path/to/folder")


def place_like(old: Any, new: Any, where: str) -> Any:
    """`new` (numpy) with the shape checked and the dtype and sharding of `old`."""
    new = np.asarray(new)
    if tuple(new.shape) != tuple(old.shape):
        raise UserError(f"{where}: the checkpoint has shape {tuple(new.shape)}, the model "
                        f"{tuple(old.shape)}")
    new = new.astype(old.dtype)
    sharding = getattr(old, "sharding", None)
    if sharding is None:
        return new
    return sharding_lib.from_host(new, sharding)


def replace_subtree(old: Any, new: Any, where: str) -> Any:
    """`new` laid over `old`: same tree structure required (missing/extra params are named)."""
    old_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(old)[0]}
    new_flat = {jax.tree_util.keystr(p): v
                for p, v in jax.tree_util.tree_flatten_with_path(new)[0]}
    missing, extra = sorted(old_paths - set(new_flat)), sorted(set(new_flat) - old_paths)
    if missing or extra:
        raise UserError(f"{where}: the checkpoint's params do not fit the model (missing: "
                        f"{', '.join(missing[:5]) or '-'}; unexpected: "
                        f"{', '.join(extra[:5]) or '-'})")
    return jax.tree_util.tree_map_with_path(
        lambda p, x: place_like(x, new_flat[jax.tree_util.keystr(p)],
                                f"{where}{jax.tree_util.keystr(p)}"), old)


def apply_init(params: dict[str, Any], config: ml_collections.ConfigDict,
               dual_cache: DualCache | None = None) -> dict[str, Any]:
    """`params` with the subtrees named by ``config.init`` replaced by imported weights."""
    subtrees = imported_subtrees(config, dual_cache)
    if not subtrees:
        return params
    params = dict(params)
    for key, (field, subtree) in subtrees.items():
        if key not in params:
            raise UserError(f"config.init.{field}: the model has no {key!r} params")
        params[key] = replace_subtree(params[key], subtree,
                                      f"config.init.{field}: param {key}")
    return params
