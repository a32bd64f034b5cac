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
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, Mesh, PartitionSpec as P

from medclip_jax.errors import UserError
from medclip_jax.losses.clip import l2_normalize
from medclip_jax.sharding import BATCH_AXES

IMPLEMENTATIONS = ("global", "ring")


def _logits(image: jax.Array, text: jax.Array, logit_scale: jax.Array,
            logit_bias: jax.Array) -> jax.Array:
    return logit_scale * (image @ text.T) + logit_bias


def _block_sums(image: jax.Array, text: jax.Array, logit_scale: jax.Array,
                logit_bias: jax.Array, has_positives: bool
                ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Summed negative log-likelihood of one [b_img, b_txt] block, plus logit sums for metrics.

    `has_positives`: the block pairs each image with its own text on the diagonal.
    """
    logits = _logits(image, text, logit_scale, logit_bias)
    if has_positives:
        signs = 2.0 * jnp.eye(*logits.shape, dtype=logits.dtype) - 1.0
        positive_sum = jnp.trace(logits)
    else:
        signs = -1.0
        positive_sum = jnp.zeros((), logits.dtype)
    nll = -jnp.sum(jax.nn.log_sigmoid(signs * logits))
    return nll, (jax.lax.stop_gradient(jnp.sum(logits)), jax.lax.stop_gradient(positive_sum))


def _metrics(n: int, logit_sum: jax.Array, positive_sum: jax.Array,
             logit_bias: jax.Array) -> dict[str, jax.Array]:
    """Mean positive and negative logits: whether the bias has pushed negatives below zero."""
    return {"positive_logit": positive_sum / n,
            "negative_logit": (logit_sum - positive_sum) / max(n * n - n, 1),
            "logit_bias": jax.lax.stop_gradient(logit_bias)}


def siglip_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                logit_bias: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sigmoid loss over the full [N, N] logits. Embeddings [N, E] (normalised here)."""
    image, text = l2_normalize(image_emb), l2_normalize(text_emb)
    scale = jnp.asarray(logit_scale, jnp.float32)
    bias = jnp.asarray(logit_bias, jnp.float32)
    n = image.shape[0]
    nll, (logit_sum, positive_sum) = _block_sums(image, text, scale, bias, has_positives=True)
    return nll / n, _metrics(n, logit_sum, positive_sum, bias)


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
                     logit_bias: jax.Array, mesh: Mesh | AbstractMesh | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sigmoid loss as a ring over the batch axes of `mesh` (None: the context mesh).

    Equal in value and gradients to `siglip_loss`; the per-device logits are [b, b].
    """
    mesh = _resolve_mesh(mesh)
    num_shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    n = image_emb.shape[0]
    if n % num_shards or text_emb.shape[0] != n:
        raise UserError(f"config.batch_size={n} (texts: {text_emb.shape[0]}) must be equal for "
                        f"images and texts and divisible by the {num_shards} batch shards of "
                        f"the mesh for config.loss.implementation='ring'")
    to_next = [(i, (i + 1) % num_shards) for i in range(num_shards)]
    own_block = jax.checkpoint(lambda x, y, t, b: _block_sums(x, y, t, b, has_positives=True))
    other_block = jax.checkpoint(lambda x, y, t, b: _block_sums(x, y, t, b, has_positives=False))

    def per_device(image, text, scale, bias):
        image, text = l2_normalize(image), l2_normalize(text)
        nll, (logit_sum, positive_sum) = own_block(image, text, scale, bias)

        def visit_next_block(carry, _):
            text, nll, logit_sum = carry
            text = jax.lax.ppermute(text, BATCH_AXES, to_next)
            block_nll, (block_logit_sum, _) = other_block(image, text, scale, bias)
            return (text, nll + block_nll, logit_sum + block_logit_sum), None

        (_, nll, logit_sum), _ = jax.lax.scan(
            visit_next_block, (text, nll, logit_sum), length=num_shards - 1)
        return jax.lax.psum((nll, logit_sum, positive_sum), BATCH_AXES)

    ring = jax.shard_map(per_device, mesh=mesh, in_specs=(P(BATCH_AXES), P(BATCH_AXES), P(), P()),
                         out_specs=P())
    bias = jnp.asarray(logit_bias, jnp.float32)
    nll, logit_sum, positive_sum = ring(image_emb, text_emb,
                                        jnp.asarray(logit_scale, jnp.float32), bias)
    return nll / n, _metrics(n, logit_sum, positive_sum, bias)


def siglip_loss_from_outputs(outputs: Any, implementation: str = "global", *,
                             mesh: Mesh | AbstractMesh | None = None
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Registry adapter. "ring" runs on `mesh` (the train step passes its own, see
    `losses.bind_loss`), or on the `jax.set_mesh` context mesh when none is given."""
    if implementation not in IMPLEMENTATIONS:
        raise UserError(f"config.loss.implementation must be one of {IMPLEMENTATIONS}, "
                        f"got {implementation!r}")
    args = (outputs.image_emb, outputs.text_emb, outputs.logit_scale, outputs.logit_bias)
    if implementation == "ring":
        return siglip_ring_loss(*args, mesh=mesh)
    return siglip_loss(*args)
