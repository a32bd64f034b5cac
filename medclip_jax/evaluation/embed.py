"""Embedding loop for evaluation: padded, masked, sharded batches -> host arrays in record order.

Eval iterators pad the last global batch to full size and mark padding with ``valid=False``, so
every jitted call sees the same shape (one compilation) and no record is dropped or counted twice:
rows are put back in record order by their ``index`` and padding rows are removed. Every
evaluator embeds through `embed_batches`: pooled embeddings for zero-shot, retrieval and the
linear probe; token features and preprocessed pixels too for VQA's fusion head.
"""

import collections
import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from medclip_jax import sharding
from medclip_jax.models import DualEncoder


@functools.lru_cache(maxsize=16)
def make_encoders(model: DualEncoder, mesh: Mesh) -> tuple[Callable, Callable]:
    """Jitted image and text encoders: batch-sharded in, batch-sharded (pooled embedding,
    token features) out.

    Cached per (model, mesh): a new jax.jit wrapper would compile again, and the eval suite
    and training's evaluators embed many times with the same model (~1 s per compilation of
    the demo model on CPU). The token features are computed anyway; they leave the device
    only when asked for.
    """
    batch = sharding.batch_sharding(mesh)

    def encode_image(params, images):
        return model.apply({"params": params}, images, method=DualEncoder.encode_image)

    def encode_text(params, ids, mask):
        return model.apply({"params": params}, ids, mask, method=DualEncoder.encode_text)

    return (jax.jit(encode_image, out_shardings=(batch, batch)),
            jax.jit(encode_text, out_shardings=(batch, batch)))


def unit_vectors(x: Any) -> np.ndarray:
    """float32 unit L2 norm along the last axis, on the host (zero vectors stay zero).

    Embeddings reach the evaluators as host arrays of a new shape per dataset; numpy does
    this small math at once, where eager jnp compiled each op anew for every shape.
    """
    x = sharding.to_host(x).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


def _kept_rows(batch: Mapping[str, jax.Array], records: np.ndarray | None) -> np.ndarray:
    """[B] bool: the batch's real rows, and among them only `records` when given."""
    keep = sharding.to_host(batch["valid"]).astype(bool)
    if records is not None:
        keep &= np.isin(sharding.to_host(batch["index"]), records)
    return keep


def embed_batches(model: DualEncoder, params: Any, batches: Iterable[Mapping[str, np.ndarray]],
                  mesh: Mesh, *, images: bool = True, texts: bool = True, tokens: bool = False,
                  pixels: bool = False, records: np.ndarray | None = None,
                  max_batches: int | None = None) -> dict[str, np.ndarray]:
    """Embeds every valid record (only `records`, sorted record indices, when given).

    Returns, sorted by record index: `index` [N]; with `images`, `image_emb` [N, E] (and with
    `tokens` the patch tokens `image_tokens` [N, P, W]); with `texts`, `text_emb` [N, E] (and
    with `tokens` `text_tokens` [N, L, W] and `text_mask` [N, L]); with `pixels`, the
    preprocessed `pixels` [N, H, W, 3] the image tower would see. All processes iterate the
    same number of batches (the eval iterator guarantees it), each passing its local slice.
    """
    encode_image, encode_text = make_encoders(model, mesh)
    wanted = {"image", "text_ids", "text_mask", "valid", "index"}
    chunks: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for i, local in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = sharding.to_global_batch({k: v for k, v in local.items() if k in wanted}, mesh)
        keep = _kept_rows(batch, records)
        chunks["index"].append(sharding.to_host(batch["index"])[keep])
        if pixels:
            chunks["pixels"].append(sharding.to_host(batch["image"])[keep])
        if images:
            emb, patch_tokens = encode_image(params, batch["image"])
            chunks["image_emb"].append(sharding.to_host(emb)[keep])
            if tokens:
                chunks["image_tokens"].append(sharding.to_host(patch_tokens)[keep])
        if texts:
            emb, text_tokens = encode_text(params, batch["text_ids"], batch["text_mask"])
            chunks["text_emb"].append(sharding.to_host(emb)[keep])
            if tokens:
                chunks["text_tokens"].append(sharding.to_host(text_tokens)[keep])
                chunks["text_mask"].append(sharding.to_host(batch["text_mask"])[keep])
    if not chunks:
        raise ValueError("embed_batches got no batch to embed")
    index = np.concatenate(chunks.pop("index"))
    if len(np.unique(index)) != len(index):
        raise AssertionError("eval iterator yielded a record twice")
    order = np.argsort(index, kind="stable")
    if records is not None and not np.array_equal(index[order], records):
        raise AssertionError("the eval iterator did not yield every wanted record")
    return {"index": index[order], **{k: np.concatenate(v)[order] for k, v in chunks.items()}}
