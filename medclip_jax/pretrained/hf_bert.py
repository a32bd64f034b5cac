"""HF BertModel weights (BiomedBERT / PubMedBERT, all-MiniLM-L6-v2, ...) into `BertTextEncoder`.

The architecture is read from the folder's ``config.json`` (`text_fields`); tensor names with
or without the ``bert.`` prefix are accepted (BertModel vs BertForMaskedLM / pre-training
checkpoints). Linear weights are (out, in) in PyTorch: transposed into Flax kernels (in, out).
The position table keeps the first ``max_len`` rows. A tensor whose shape differs from what the
config implies fails with one line naming the tensor and both shapes; tensors the tower does
not use (the pooler, MLM heads, ``position_ids``) are listed in one warning.

    params, fields = import_bert("/path/to/BiomedBERT", max_len=77)  # {"embeddings": ..., ...}
    export_bert(params, fields, "/path/to/out")   # config.json + model.safetensors (BertModel)

`export_bert` writes the inverse: BertModel tensor names (no ``bert.`` prefix, no pooler),
Linear kernels transposed back to (out, in), a position table of ``max_len`` rows; importing
the folder again gives the same params bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from medclip_jax.errors import UserError
from medclip_jax.pretrained import hf_folder

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "relu": "relu"}
FLOAT_DTYPES = (np.float32, np.float16)


def text_fields(config: dict[str, Any], folder: str) -> dict[str, Any]:
    """`BertTextEncoder` fields from an HF BERT config.json."""
    if config.get("model_type") not in ("bert", None):
        raise UserError(f"{folder}: model_type {config.get('model_type')!r} is not a BERT "
                        f"model (expected 'bert')")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{folder}: position_embedding_type "
                        f"{config['position_embedding_type']!r} is not supported (absolute only)")
    activation = config.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise UserError(f"{folder}: hidden_act {activation!r} is not supported; expected one "
                        f"of {', '.join(ACTIVATIONS)}")
    try:
        return {"vocab_size": int(config["vocab_size"]), "width": int(config["hidden_size"]),
                "depth": int(config["num_hidden_layers"]),
                "num_heads": int(config["num_attention_heads"]),
                "mlp_dim": int(config["intermediate_size"]),
                "max_len": int(config.get("max_position_embeddings", 512)),
                "type_vocab_size": int(config.get("type_vocab_size", 2)),
                "layer_norm_eps": float(config.get("layer_norm_eps", 1e-12)),
                "activation": ACTIVATIONS[activation]}
    except KeyError as e:
        raise UserError(f"{folder}/config.json: missing {e.args[0]!r}") from None


def strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if any(k.startswith("bert.") for k in tensors):
        return {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in tensors.items()}
    return tensors


class TensorReader:
    """Takes tensors by name with shape checks, and remembers which ones were used."""

    def __init__(self, tensors: dict[str, np.ndarray], folder: str):
        self.tensors, self.folder, self.used = tensors, folder, set()

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            raise UserError(f"{self.folder}: tensor {name} is missing")
        value = self.tensors[name]
        if value.dtype not in FLOAT_DTYPES and value.dtype.name != "bfloat16":
            raise UserError(f"{self.folder}: tensor {name} has dtype {value.dtype}; expected "
                            f"float32, float16 or bfloat16")
        if tuple(value.shape) != tuple(shape):
            raise UserError(f"{self.folder}: tensor {name} has shape {tuple(value.shape)}, the "
                            f"config implies {tuple(shape)}")
        self.used.add(name)
        return np.asarray(value, np.float32)

    def dense(self, prefix: str, n_in: int, n_out: int) -> dict[str, np.ndarray]:
        return {"kernel": self.take(f"{prefix}.weight", (n_out, n_in)).T,
                "bias": self.take(f"{prefix}.bias", (n_out,))}

    def layer_norm(self, prefix: str, width: int) -> dict[str, np.ndarray]:
        return {"scale": self.take(f"{prefix}.weight", (width,)),
                "bias": self.take(f"{prefix}.bias", (width,))}

    def unused(self) -> list[str]:
        return sorted(set(self.tensors) - self.used)


def convert(tensors: dict[str, np.ndarray], fields: dict[str, Any], max_len: int,
            folder: str = "") -> tuple[dict[str, Any], list[str]]:
    """(BertTextEncoder params, names of unused tensors)."""
    if max_len > fields["max_len"]:
        raise UserError(f"{folder}: max_len {max_len} exceeds the checkpoint's "
                        f"max_position_embeddings {fields['max_len']}")
    reader = TensorReader(strip_prefix(tensors), folder)
    width, mlp = fields["width"], fields["mlp_dim"]
    embeddings = {
        "word": {"embedding": reader.take("embeddings.word_embeddings.weight",
                                          (fields["vocab_size"], width))},
        "position": {"embedding": reader.take("embeddings.position_embeddings.weight",
                                              (fields["max_len"], width))[:max_len]},
        "token_type": {"embedding": reader.take("embeddings.token_type_embeddings.weight",
                                                (fields["type_vocab_size"], width))},
        "ln": reader.layer_norm("embeddings.LayerNorm", width),
    }
    params: dict[str, Any] = {"embeddings": embeddings}
    for i in range(fields["depth"]):
        hf = f"encoder.layer.{i}"
        params[f"layer_{i}"] = {
            "attn": {"query": reader.dense(f"{hf}.attention.self.query", width, width),
                     "key": reader.dense(f"{hf}.attention.self.key", width, width),
                     "value": reader.dense(f"{hf}.attention.self.value", width, width),
                     "out": reader.dense(f"{hf}.attention.output.dense", width, width)},
            "attn_ln": reader.layer_norm(f"{hf}.attention.output.LayerNorm", width),
            "mlp": {"fc1": reader.dense(f"{hf}.intermediate.dense", width, mlp),
                    "fc2": reader.dense(f"{hf}.output.dense", mlp, width)},
            "mlp_ln": reader.layer_norm(f"{hf}.output.LayerNorm", width),
        }
    return params, reader.unused()


def import_bert(folder: str, max_len: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, BertTextEncoder fields) of the HF BERT folder; ``max_len`` defaults to the
    checkpoint's position table size."""
    fields = text_fields(hf_folder.read_config(folder), folder)
    max_len = fields["max_len"] if max_len is None else max_len
    params, unused = convert(hf_folder.read_tensors(folder), fields, max_len, folder)
    if unused:
        logging.warning("%s: %d tensor(s) not used by the text tower: %s", folder, len(unused),
                        ", ".join(unused))
    return params, {**fields, "max_len": max_len}


HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def export_config(fields: dict[str, Any]) -> dict[str, Any]:
    """HF BertConfig dict of `BertTextEncoder` fields (the inverse of `text_fields`)."""
    if fields["activation"] not in HF_ACTIVATIONS:
        raise UserError(f"activation {fields['activation']!r} has no BERT equivalent; expected "
                        f"one of {', '.join(HF_ACTIVATIONS)}")
    return {"architectures": ["BertModel"], "model_type": "bert",
            "vocab_size": int(fields["vocab_size"]), "hidden_size": int(fields["width"]),
            "num_hidden_layers": int(fields["depth"]),
            "num_attention_heads": int(fields["num_heads"]),
            "intermediate_size": int(fields["mlp_dim"]),
            "max_position_embeddings": int(fields["max_len"]),
            "type_vocab_size": int(fields["type_vocab_size"]),
            "layer_norm_eps": float(fields["layer_norm_eps"]),
            "hidden_act": HF_ACTIVATIONS[fields["activation"]],
            "position_embedding_type": "absolute", "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}


def to_tensors(params: dict[str, Any], depth: int) -> dict[str, np.ndarray]:
    """BertTextEncoder params -> HF BertModel tensors ((out, in) Linear weights)."""
    out: dict[str, np.ndarray] = {}

    def put(name: str, value: Any) -> None:
        out[name] = np.ascontiguousarray(np.asarray(value, np.float32))

    def dense(name: str, p: dict[str, Any]) -> None:
        put(f"{name}.weight", np.asarray(p["kernel"]).T)
        put(f"{name}.bias", p["bias"])

    def layer_norm(name: str, p: dict[str, Any]) -> None:
        put(f"{name}.weight", p["scale"])
        put(f"{name}.bias", p["bias"])

    emb = params["embeddings"]
    put("embeddings.word_embeddings.weight", emb["word"]["embedding"])
    put("embeddings.position_embeddings.weight", emb["position"]["embedding"])
    put("embeddings.token_type_embeddings.weight", emb["token_type"]["embedding"])
    layer_norm("embeddings.LayerNorm", emb["ln"])
    for i in range(depth):
        p, hf = params[f"layer_{i}"], f"encoder.layer.{i}"
        for ours, theirs in (("query", "attention.self.query"), ("key", "attention.self.key"),
                             ("value", "attention.self.value"),
                             ("out", "attention.output.dense")):
            dense(f"{hf}.{theirs}", p["attn"][ours])
        layer_norm(f"{hf}.attention.output.LayerNorm", p["attn_ln"])
        dense(f"{hf}.intermediate.dense", p["mlp"]["fc1"])
        dense(f"{hf}.output.dense", p["mlp"]["fc2"])
        layer_norm(f"{hf}.output.LayerNorm", p["mlp_ln"])
    return out


def export_bert(params: dict[str, Any], fields: dict[str, Any], folder: str) -> str:
    """Writes ``folder``/config.json + model.safetensors in HF BertModel layout; returns folder.

    ``fields`` are the `BertTextEncoder` fields (as `import_bert` returns them); the position
    table is exported with the rows the params have, so ``max_position_embeddings`` = max_len.
    """
    from safetensors.numpy import save_file
    config = export_config(fields)
    tensors = to_tensors(params, int(fields["depth"]))
    rows = tensors["embeddings.position_embeddings.weight"].shape[0]
    config["max_position_embeddings"] = rows
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return folder
