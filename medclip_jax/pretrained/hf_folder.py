"""Reading a Hugging Face model folder offline: ``config.json`` + ``model.safetensors``.

Safetensors only: a PyTorch pickle (``pytorch_model.bin``, ``*.pt``) can run code when loaded,
so it is refused with a message saying what to convert it to. Sharded checkpoints
(``model.safetensors.index.json`` + shards) are read too.
"""

import json
import math
import os
import struct

import ml_dtypes
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


#: safetensors dtype codes -> numpy dtypes (bfloat16 through ml_dtypes, which JAX ships).
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                      "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
                      "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of one safetensors file, memory-mapped (8-byte header length, JSON header,
    raw little-endian data). Read here rather than by ``safetensors.numpy``, which cannot make
    bfloat16 arrays."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= size - 8:
            raise UserError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not a safetensors file (header: {e})") from None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + length) \
        if size > 8 + length else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: tensor {name} has a malformed header entry") from None
        if dtype not in SAFETENSORS_DTYPES:
            raise UserError(f"{path}: tensor {name} has dtype {dtype}; expected one of "
                            f"{', '.join(SAFETENSORS_DTYPES)}")
        np_dtype = np.dtype(SAFETENSORS_DTYPES[dtype])
        if not 0 <= start <= end <= data.size or \
                end - start != np_dtype.itemsize * math.prod(shape):
            raise UserError(f"{path}: tensor {name} lies outside the file or does not fit "
                            f"its shape {tuple(shape)} (truncated download?)")
        tensors[name] = data[start:end].view(np_dtype).reshape(shape)
    return tensors


def read_tensors(folder: str, names: tuple[str, ...] = ("model.safetensors",)
                 ) -> dict[str, np.ndarray]:
    """Every tensor of the folder's safetensors file(s), as numpy arrays (no torch needed)."""
    tensors: dict[str, np.ndarray] = {}
    for path in safetensors_files(folder, names):
        tensors.update(read_safetensors(path))
    return tensors
