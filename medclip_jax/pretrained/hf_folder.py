"""Reading a Hugging Face model folder offline: ``config.json`` + ``model.safetensors``.

Safetensors only: a PyTorch pickle (``pytorch_model.bin``, ``*.pt``) can run code when loaded,
so it is refused with a message saying what to convert it to. Sharded checkpoints
(``model.safetensors.index.json`` + shards) are read too.
"""

import json
import os

import numpy as np

from medclip_jax.errors import UserError

PICKLE_NAMES = ("pytorch_model.bin", "open_clip_pytorch_model.bin", "model.pt", "model.pth")


def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: not a folder; expected a Hugging Face model folder "
                        f"(config.json + model.safetensors)")
    if not os.path.exists(path):
        raise UserError(f"{folder}: no config.json; expected a Hugging Face model folder "
                        f"(config.json + model.safetensors)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def safetensors_files(folder: str, names: tuple[str, ...] = ("model.safetensors",)
                      ) -> list[str]:
    """The weight file(s) of `folder`: the first of `names` present, else a sharded index."""
    for name in names:
        single = os.path.join(folder, name)
        if os.path.exists(single):
            return [single]
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, s) for s in shards]
    pickles = [n for n in os.listdir(folder) if n in PICKLE_NAMES or n.endswith((".bin", ".pt"))]
    if pickles:
        raise UserError(f"{folder}: only PyTorch pickle weights ({', '.join(sorted(pickles))}); "
                        f"they are never unpickled here: convert them to {names[0]} "
                        f"(e.g. safetensors.torch.save_file)")
    raise UserError(f"{folder}: no {' or '.join(names)} (or model.safetensors.index.json)")


def read_tensors(folder: str, names: tuple[str, ...] = ("model.safetensors",)
                 ) -> dict[str, np.ndarray]:
    """Every tensor of the folder's safetensors file(s), as numpy arrays (no torch needed)."""
    from safetensors.numpy import load_file
    tensors: dict[str, np.ndarray] = {}
    for path in safetensors_files(folder, names):
        try:
            tensors.update(load_file(path))
        except Exception as e:  # the library raises its own error types for bad headers
            raise UserError(f"{path}: cannot read safetensors ({type(e).__name__}: {e})"
                            ) from None
    return tensors
