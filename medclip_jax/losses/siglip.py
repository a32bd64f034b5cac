"""SigLIP: pairwise sigmoid loss (Zhai, Mustafa, Kolesnikov, Beyer 2023, arXiv 2303.15343).

With L2-normalised image x_i and text y_j embeddings, temperature t = exp(t') and bias b
(both learnable, in the model; init t' = log 10, b = -10):

    logits_ij = t * <x_i, y_j> + b
    z_ij      = 1 if i == j else -1
    L = -1/N sum_i sum_j log sigmoid(z_ij * logits_ij)

N is the *global* batch. Every pair is an independent binary problem, so the loss is a plain sum
over blocks of the [N, N] logits matrix and needs no softmax over a whole row. The paper's
Algorithm 1 and the authors' released code (big_vision) agree on this formula and on the 1/N
normalisation, so there is no variant knob.

Two implementations, chosen by ``implementation`` (``config.loss.implementation``):

* ``"global"`` (default): the full [N, N] logits under ``jax.jit``; with batch-sharded inputs
  XLA chooses the communication (it gathers the texts and shards the logits by rows).
* ``"ring"``: the paper's chunked scheme (its Section 3.3). ``jax.shard_map`` over the batch axes
  (data x fsdp jointly, D devices): each device keeps its b = N / D images, starts with its own
  texts (the only block holding positives, on its diagonal), and D - 1 times passes its current
  text block to the next device with ``jax.lax.ppermute``, scoring every block it sees. Each
  block is rematerialised (``jax.checkpoint``), so the live logits are [b, b], never [N, N];
  the backward pass keeps only the D text blocks seen ([N, E] per device). The gradient of a
  travelling block returns to its owner through the transpose of ``ppermute``.

Both return the same loss, gradients and metrics (up to float32 summation order).

Duplicate captions (``config.loss.duplicate_captions=True``, off by default): a pair whose
captions are identical after normalisation (equal caption hashes h, `clip.same_caption`) is a
positive, not a negative:

    z_ij = 1 if h_i == h_j else -1          (h_i == h_i, so the diagonal stays positive)

Every pair is scored by its caption keys: the hashes, or each row's global index when the option
is off (which gives z_ij = 1 iff i == j). In the ring the texts' keys travel with the text
blocks, so a block off the diagonal can hold positives too and 1 and N devices agree. The
metrics average over the actual positive / negative pairs.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, Mesh, PartitionSpec as P

from medclip_jax.errors import UserError
from medclip_jax.losses.clip import l2_normalize, read_caption_hash, same_caption
from medclip_jax.sharding import BATCH_AXES

IMPLEMENTATIONS = ("global", "ring")


def _logits(image: jax.Array, text: jax.Array, logit_scale: jax.Array,
            logit_bias: jax.Array) -> jax.Array:
    return logit_scale * (image @ text.T) + logit_bias


def _block_sums(image: jax.Array, text: jax.Array, logit_scale: jax.Array,
                logit_bias: jax.Array, image_keys: jax.Array, text_keys: jax.Array
                ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """Summed negative log-likelihood of one [b_img, b_txt] block, plus (logit sum, positive
    logit sum, positive count) for the metrics. A pair is positive when its keys are equal."""
    logits = _logits(image, text, logit_scale, logit_bias)
    positives = same_caption(image_keys, text_keys)
    nll = -jnp.sum(jax.nn.log_sigmoid(jnp.where(positives, logits, -logits)))
    sums = (jnp.sum(logits), jnp.sum(jnp.where(positives, logits, 0.0)),
            jnp.sum(positives, dtype=jnp.float32))
    return nll, jax.lax.stop_gradient(sums)


def _pair_keys(n: int, caption_hash: jax.Array | None) -> jax.Array:
    """[N, W] int32 keys, equal for positive pairs: the caption hashes, else the row index."""
    if caption_hash is None:
        return jnp.arange(n, dtype=jnp.int32)[:, None]
    if caption_hash.shape[0] != n:
        raise UserError(f"caption_hash has {caption_hash.shape[0]} rows for a batch of {n}")
    return caption_hash.astype(jnp.int32)


def _metrics(n: int, logit_sum: jax.Array, positive_sum: jax.Array, positive_count: jax.Array,
             logit_bias: jax.Array) -> dict[str, jax.Array]:
    """Mean positive and negative logits: whether the bias has pushed negatives below zero."""
    return {"positive_logit": positive_sum / positive_count,
            "negative_logit": (logit_sum - positive_sum) / jnp.maximum(n * n - positive_count,
                                                                       1.0),
            "logit_bias": jax.lax.stop_gradient(logit_bias)}


def siglip_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                logit_bias: jax.Array, caption_hash: jax.Array | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sigmoid loss over the full [N, N] logits. Embeddings [N, E] (normalised here);
    `caption_hash` [N, 2]: identical captions are positives (None: only the diagonal)."""
    image, text = l2_normalize(image_emb), l2_normalize(text_emb)
    scale = jnp.asarray(logit_scale, jnp.float32)
    bias = jnp.asarray(logit_bias, jnp.float32)
    n = image.shape[0]
    keys = _pair_keys(n, caption_hash)
    nll, sums = _block_sums(image, text, scale, bias, keys, keys)
    return nll / n, _metrics(n, *sums, bias)


def _resolve_mesh(mesh: Mesh | AbstractMesh | None) -> Mesh | AbstractMesh:
    """The given mesh, else the one set with `jax.set_mesh` (traced train steps run under it)."""
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        raise UserError("config.loss.implementation='ring' needs a device mesh: call the loss "
                        "under `with jax.set_mesh(mesh):` or pass mesh=")
    missing = [a for a in BATCH_AXES if a not in mesh.axis_names]
    if missing:
        raise UserError(f"config.loss.implementation='ring': mesh axes {mesh.axis_names} lack "
                        f"the batch axes {missing}")
    return mesh


def siglip_ring_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                     logit_bias: jax.Array, mesh: Mesh | AbstractMesh | None = None,
                     caption_hash: jax.Array | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sigmoid loss as a ring over the batch axes of `mesh` (None: the context mesh).

    Equal in value and gradients to `siglip_loss`; the per-device logits are [b, b]. The text
    blocks carry their keys (`caption_hash`, else the row index) around the ring.
    """
    mesh = _resolve_mesh(mesh)
    num_shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    n = image_emb.shape[0]
    if n % num_shards or text_emb.shape[0] != n:
        raise UserError(f"config.batch_size={n} (texts: {text_emb.shape[0]}) must be equal for "
                        f"images and texts and divisible by the {num_shards} batch shards of "
                        f"the mesh for config.loss.implementation='ring'")
    to_next = [(i, (i + 1) % num_shards) for i in range(num_shards)]
    block = jax.checkpoint(_block_sums)

    def per_device(image, text, scale, bias, keys):
        image, text = l2_normalize(image), l2_normalize(text)
        nll, sums = block(image, text, scale, bias, keys, keys)

        def visit_next_block(carry, _):
            text, text_keys, nll, sums = carry
            text, text_keys = jax.lax.ppermute((text, text_keys), BATCH_AXES, to_next)
            block_nll, block_sums = block(image, text, scale, bias, keys, text_keys)
            return (text, text_keys, nll + block_nll,
                    jax.tree.map(jnp.add, sums, block_sums)), None

        (_, _, nll, sums), _ = jax.lax.scan(
            visit_next_block, (text, keys, nll, sums), length=num_shards - 1)
        return jax.lax.psum((nll, sums), BATCH_AXES)

    batch = P(BATCH_AXES)
    ring = jax.shard_map(per_device, mesh=mesh, in_specs=(batch, batch, P(), P(), batch),
                         out_specs=P())
    bias = jnp.asarray(logit_bias, jnp.float32)
    nll, sums = ring(image_emb, text_emb, jnp.asarray(logit_scale, jnp.float32), bias,
                     _pair_keys(n, caption_hash))
    return nll / n, _metrics(n, *sums, bias)


def siglip_loss_from_outputs(outputs: Any, implementation: str = "global",
                             duplicate_captions: bool = False, *,
                             mesh: Mesh | AbstractMesh | None = None
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Registry adapter. "ring" runs on `mesh` (the train step passes its own, see
    `methods.bind_loss`), or on the `jax.set_mesh` context mesh when none is given.
    `duplicate_captions`: identical captions (`outputs.caption_hash`) are positives."""
    if implementation not in IMPLEMENTATIONS:
        raise UserError(f"config.loss.implementation must be one of {IMPLEMENTATIONS}, "
                        f"got {implementation!r}")
    args = (outputs.image_emb, outputs.text_emb, outputs.logit_scale, outputs.logit_bias)
    hashes = read_caption_hash(outputs, duplicate_captions)
    if implementation == "ring":
        return siglip_ring_loss(*args, mesh=mesh, caption_hash=hashes)
    return siglip_loss(*args, caption_hash=hashes)
