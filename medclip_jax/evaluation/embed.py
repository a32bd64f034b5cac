"""Embedding loop for evaluation: padded, masked, sharded batches -> host arrays in record order.

Eval iterators pad the last global batch to full size and mark padding with ``valid=False``, so
every jitted call sees the same shape (one compilation) and no record is dropped or counted twice:
rows are put back in record order by their ``index`` and padding rows are removed.
"""

import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from medclip_jax import sharding
from medclip_jax.models import DualEncoder


@functools.lru_cache(maxsize=16)
def make_encoders(model: DualEncoder, mesh: Mesh) -> tuple[Callable, Callable]:
    """Jitted image and text encoders: batch-sharded in, batch-sharded embeddings out.

    Cached per (model, mesh): a new jax.jit wrapper would compile again, and the eval suite
    and training's validation embed many times with the same model (~1 s per compilation of
    the demo model on CPU).
    """
    batch = sharding.batch_sharding(mesh)

    def encode_image(params, images):
        emb, _ = model.apply({"params": params}, images, method=DualEncoder.encode_image)
        return emb

    def encode_text(params, ids, mask):
        emb, _ = model.apply({"params": params}, ids, mask, method=DualEncoder.encode_text)
        return emb

    return (jax.jit(encode_image, out_shardings=batch),
            jax.jit(encode_text, out_shardings=batch))


def embed_batches(model: DualEncoder, params: Any, batches: Iterable[Mapping[str, np.ndarray]],
                  mesh: Mesh, *, images: bool = True, texts: bool = True,
                  max_batches: int | None = None) -> dict[str, np.ndarray]:
    """Embeds every valid record; returns `image_emb`/`text_emb` [N, E] and `index` [N], sorted.

    All processes iterate the same number of batches (the eval iterator guarantees it), each
    passing its own local slice.
    """
    encode_image, encode_text = make_encoders(model, mesh)
    image_chunks, text_chunks, index_chunks = [], [], []
    for i, local in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = sharding.to_global_batch(
            {k: local[k] for k in ("image", "text_ids", "text_mask", "valid", "index")
             if k in local}, mesh)
        valid = sharding.to_host(batch["valid"]).astype(bool)
        index_chunks.append(sharding.to_host(batch["index"])[valid])
        if images:
            image_chunks.append(sharding.to_host(encode_image(params, batch["image"]))[valid])
        if texts:
            text_chunks.append(
                sharding.to_host(encode_text(params, batch["text_ids"], batch["text_mask"]))[valid])
    if not index_chunks:
        raise ValueError("embed_batches got no batch to embed")
    index = np.concatenate(index_chunks)
    order = np.argsort(index, kind="stable")
    if len(np.unique(index)) != len(index):
        raise AssertionError("eval iterator yielded a record twice")
    out = {"index": index[order]}
    if images:
        out["image_emb"] = np.concatenate(image_chunks)[order]
    if texts:
        out["text_emb"] = np.concatenate(text_chunks)[order]
    return out
