"""DeCLIP (Li, Liang, Zhao, Cui, Ouyang, Shao, Yu & Yan, ICLR 2022, arXiv 2110.05208).

CLIP plus four extra supervisions from the same image-text pairs. Notation: I_0 = image_emb
(the CLIP view), I_1.. = view_image_emb (extra augmented image views), T_0 = text_emb, T_1.. =
view_text_emb (augmented texts); L_CLIP(I, T) is the symmetric InfoNCE of `clip.clip_loss` with
the learnable logit scale s.

    ISS (image self-supervision, SimSiam, Chen & He 2021, arXiv 2011.10566), with projector
    outputs z_0, z_1 and predictor outputs p_0, p_1 of image views 0 and 1:
        D(p, z) = -1/N sum_i <p_i / |p_i|, z_i / |z_i|>
        L_ISS   = 1/2 D(p_0, sg(z_1)) + 1/2 D(p_1, sg(z_0))          sg = stop_gradient
    TSS (text self-supervision, BERT masked language modelling), w = 1 for real predictions:
        L_TSS   = sum_{i,k} w_ik * -log softmax(logits_ik)[label_ik] / sum_{i,k} w_ik
    MVS (multi-view supervision): L_CLIP over every (image view a, text view b) pair;
        mvs_pairs = "all"   (released code, default): L_MVS = mean_{a,b} L_CLIP(I_a, T_b)
        mvs_pairs = "extra" (paper):                   L_MVS = sum_{(a,b) != (0,0)} L_CLIP(I_a, T_b)
    NNS (nearest-neighbour supervision): with Q a FIFO queue of past normalised text
    embeddings, NN(t) = argmax_{q in Q, q valid} <t / |t|, q> (a constant: no gradient), and
    the one-directional InfoNCE of images against the neighbours of the batch's texts:
        l(I, T') = -1/N sum_i log exp(s <I_i, T'_i>) / sum_j exp(s <I_i, T'_j>)   (normalised)
        L_NNS    = mean_{a,b} l(I_a, NN(T_b))
    nns_views = "all" (released code, default) averages over both image views and the
    neighbours of both text views (4 pairs); "clip" uses only l(I_0, NN(T_0)).

    L = clip_weight * L_CLIP(I_0, T_0) + mvs_weight * L_MVS + iss_weight * L_ISS
        + tss_weight * L_TSS + nns_weight * L_NNS

A weight of 0 switches its term off: the term's outputs are not read (they may be None).

Weights. The paper writes L = (1 - a - b - g) L_CLIP + a (L_ISS + L_TSS) + b L_MVS + g L_NNS with
a = b = g = 0.2, its L_MVS covering the three extra view pairs (summed here; a sum rather than
a mean is our reading of the paper, not checked against its text). The released code
(Sense-GVT/DeCLIP, `declip_solver.py` + the yfcc15m config) instead puts weight 0.4 on the
*mean* of L_CLIP over all four view pairs (the plain pair included) and 0.2 on each of ISS, TSS
and NNS, with no separate MVS weight. The defaults reproduce the released code (clip_weight =
0, mvs_weight = 0.4, mvs_pairs = "all"), the recipe behind the published models and the one
that keeps the contrastive terms' total weight at 0.4; the paper's equation is clip_weight =
0.4, mvs_weight = 0.2, mvs_pairs = "extra".

The queue (method state, checkpointed with the train state) holds normalised stop-gradient text
embeddings of past global batches and a validity mask; it starts empty. The loss reads it
*before* the step's batch is enqueued (`declip_update_state` runs after the loss), so a text is
never its own neighbour, as in the released code. Only valid entries can be neighbours; while the
queue is empty L_NNS is 0 and gives no gradient. With nns_views = "all" every text view is
enqueued (both views, as the released code does), else only T_0.

Differences from the released code, all deliberate: its queue is per device and holds that
device's texts, ours is global (every device sees the same queue, as it sees the same global
batch); its queue starts filled with random unit vectors, which can be picked as neighbours,
ours starts empty with a validity mask; its enqueue drops the part of a batch that would run
past the end of the queue, ours wraps around; its MLM loss is a mean of per-device means, ours
is the mean over all real predictions of the global batch (the same on any device count).

Duplicate captions (``config.loss.duplicate_captions=True``, off by default): every
image-text InfoNCE term (L_CLIP, each L_MVS pair, each l(I, NN(T)) of L_NNS) takes the
multi-positive targets of `clip.clip_loss`: pairs i, j with identical captions (equal caption
hashes) are positives, the target uniform over them. A text view, and the neighbour of a text,
keep the caption of the pair they come from. ISS and TSS have no image-text pairs and stay.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from medclip_jax.errors import UserError
from medclip_jax.losses.clip import (caption_outputs, caption_positives, clip_loss,
                                     l2_normalize, multi_positive_nll)

MVS_PAIRS = ("all", "extra")
NNS_VIEWS = ("all", "clip")
DEFAULT_QUEUE_SIZE = 65536  # the paper's and the released code's 64K

# (weight knob, EncoderOutputs fields it needs); NNS also needs the views when nns_views="all".
TERM_INPUTS = {
    "mvs_weight": ("view_image_emb", "view_text_emb"),
    "iss_weight": ("simsiam_z", "simsiam_p"),
    "tss_weight": ("mlm_logits", "mlm_labels", "mlm_weights"),
    "nns_weight": (),
}


def check_knobs(clip_weight: float, mvs_weight: float, iss_weight: float, tss_weight: float,
                nns_weight: float, mvs_pairs: str, nns_views: str, queue_size: int) -> None:
    weights = {"clip_weight": clip_weight, "mvs_weight": mvs_weight, "iss_weight": iss_weight,
               "tss_weight": tss_weight, "nns_weight": nns_weight}
    for name, value in weights.items():
        if not value >= 0:
            raise UserError(f"config.loss.{name} must be >= 0, got {value}")
    if clip_weight == 0 and mvs_weight == 0:
        raise UserError("config.loss.clip_weight and config.loss.mvs_weight are both 0: "
                        "DeCLIP would have no image-text contrastive term")
    if mvs_pairs not in MVS_PAIRS:
        raise UserError(f"config.loss.mvs_pairs must be one of {MVS_PAIRS}, got {mvs_pairs!r}")
    if nns_views not in NNS_VIEWS:
        raise UserError(f"config.loss.nns_views must be one of {NNS_VIEWS}, got {nns_views!r}")
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise UserError(f"config.loss.queue_size must be a positive integer, got {queue_size!r}")


def required_outputs(clip_weight: float = 0.0, mvs_weight: float = 0.4, iss_weight: float = 0.2,
                     tss_weight: float = 0.2, nns_weight: float = 0.2, mvs_pairs: str = "all",
                     nns_views: str = "all", queue_size: int = DEFAULT_QUEUE_SIZE,
                     duplicate_captions: bool = False) -> set[str]:
    """The `EncoderOutputs` fields the loss reads with these knobs: the model need compute
    only these."""
    knobs = {"mvs_weight": mvs_weight, "iss_weight": iss_weight, "tss_weight": tss_weight,
             "nns_weight": nns_weight}
    needed = {"image_emb", "text_emb", "logit_scale"} | caption_outputs(duplicate_captions)
    for knob, fields in TERM_INPUTS.items():
        if knobs[knob] > 0:
            needed |= set(fields)
    if nns_weight > 0 and nns_views == "all":
        needed |= {"view_image_emb", "view_text_emb"}
    return needed


def simsiam_loss(p: jax.Array, z: jax.Array) -> jax.Array:
    """Symmetric SimSiam loss; `p`, `z`: [N, 2, D] predictor / projector outputs of two views."""
    p = l2_normalize(p)
    z = jax.lax.stop_gradient(l2_normalize(z))
    d_01 = -jnp.mean(jnp.sum(p[:, 0] * z[:, 1], axis=-1))
    d_10 = -jnp.mean(jnp.sum(p[:, 1] * z[:, 0], axis=-1))
    return 0.5 * (d_01 + d_10)


def mlm_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy, accuracy) over the real predictions; 0 when there are none.

    `logits` [N, P, K], `labels` [N, P] int, `weights` [N, P] (1 = real, 0 = padding slot).
    """
    real = weights > 0
    labels = jnp.where(real, labels, 0).astype(jnp.int32)  # padding slots may hold any id
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    count = jnp.maximum(jnp.sum(real), 1).astype(jnp.float32)
    correct = real & (jnp.argmax(log_p, axis=-1) == labels)
    return jnp.sum(jnp.where(real, nll, 0.0)) / count, jnp.sum(correct) / count


def stack_views(first: jax.Array, extra: jax.Array | None) -> jax.Array:
    """[N, E] view 0 and [N, V, E] extra views -> [N, 1 + V, E]."""
    if extra is None:
        return first[:, None]
    return jnp.concatenate([first[:, None], extra.astype(first.dtype)], axis=1)


def multi_view_loss(images: jax.Array, texts: jax.Array, logit_scale: jax.Array,
                    mvs_pairs: str = "all", positives: jax.Array | None = None) -> jax.Array:
    """L_MVS over `images` [N, A, E] x `texts` [N, B, E] view pairs (see the module doc);
    `positives`: the same-caption mask (None = the diagonal)."""
    pair_losses = [clip_loss(images[:, a], texts[:, b], logit_scale, positives)[0]
                   for a in range(images.shape[1]) for b in range(texts.shape[1])]
    if mvs_pairs == "all":
        return sum(pair_losses) / len(pair_losses)
    return sum(pair_losses[1:])  # every pair but (0, 0), the plain CLIP pair


def nearest_neighbours(queries: jax.Array, queue: jax.Array, valid: jax.Array) -> jax.Array:
    """The valid queue entry of highest cosine with each query row; a constant (no gradient)."""
    queue = jax.lax.stop_gradient(queue)
    sims = jax.lax.stop_gradient(l2_normalize(queries)) @ queue.T
    index = jnp.argmax(jnp.where(valid[None, :], sims, -jnp.inf), axis=1)
    return queue[index]


def image_to_text_infonce(images: jax.Array, texts: jax.Array, logit_scale: jax.Array,
                          positives: jax.Array | None = None) -> jax.Array:
    """-1/N sum_i log softmax_j(s <I_i, T_j>)_ii, rows normalised here; with `positives`
    (same-caption mask) the target of row i is uniform over its positives."""
    logits = logit_scale.astype(jnp.float32) * l2_normalize(images) @ l2_normalize(texts).T
    return multi_positive_nll(logits, positives, axis=1)


def nns_loss(images: jax.Array, texts: jax.Array, logit_scale: jax.Array, queue: jax.Array,
             valid: jax.Array, positives: jax.Array | None = None) -> jax.Array:
    """L_NNS, the mean over `images` [N, A, E] x neighbours of `texts` [N, B, E]; 0 (and no
    gradient) while the queue has no valid entry."""
    neighbours = [nearest_neighbours(texts[:, b], queue, valid) for b in range(texts.shape[1])]
    losses = [image_to_text_infonce(images[:, a], nn_texts, logit_scale, positives)
              for a in range(images.shape[1]) for nn_texts in neighbours]
    return jnp.where(jnp.any(valid), sum(losses) / len(losses), 0.0)


def _field(outputs, name: str, knob: str) -> jax.Array:
    value = getattr(outputs, name, None)
    if value is None:
        raise UserError(f"config.loss.{knob} > 0 needs outputs.{name}, which the model and the "
                        f"input pipeline did not produce")
    return value


def declip_loss_from_outputs(outputs, method_state: Mapping[str, Any] | None, *,
                             clip_weight: float = 0.0, mvs_weight: float = 0.4,
                             iss_weight: float = 0.2, tss_weight: float = 0.2,
                             nns_weight: float = 0.2, mvs_pairs: str = "all",
                             nns_views: str = "all", queue_size: int = DEFAULT_QUEUE_SIZE,
                             duplicate_captions: bool = False
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Registry adapter. `method_state` is the queue (`declip_init_state`), read only when
    `nns_weight > 0`; outputs of switched-off terms are never read."""
    check_knobs(clip_weight, mvs_weight, iss_weight, tss_weight, nns_weight, mvs_pairs,
                nns_views, queue_size)
    scale = outputs.logit_scale
    positives = caption_positives(outputs, duplicate_captions)
    plain, metrics = clip_loss(outputs.image_emb, outputs.text_emb, scale, positives)
    metrics = {**metrics, "clip_loss": plain}
    loss = clip_weight * plain

    def views(knob: str, all_views: bool) -> tuple[jax.Array, jax.Array]:
        if not all_views:
            return stack_views(outputs.image_emb, None), stack_views(outputs.text_emb, None)
        return (stack_views(outputs.image_emb, _field(outputs, "view_image_emb", knob)),
                stack_views(outputs.text_emb, _field(outputs, "view_text_emb", knob)))

    if mvs_weight > 0:
        images, texts = views("mvs_weight", True)
        metrics["mvs_loss"] = multi_view_loss(images, texts, scale, mvs_pairs, positives)
        loss = loss + mvs_weight * metrics["mvs_loss"]
    if iss_weight > 0:
        metrics["iss_loss"] = simsiam_loss(_field(outputs, "simsiam_p", "iss_weight"),
                                           _field(outputs, "simsiam_z", "iss_weight"))
        loss = loss + iss_weight * metrics["iss_loss"]
    if tss_weight > 0:
        metrics["tss_loss"], metrics["tss_acc"] = mlm_loss(
            _field(outputs, "mlm_logits", "tss_weight"),
            _field(outputs, "mlm_labels", "tss_weight"),
            _field(outputs, "mlm_weights", "tss_weight"))
        loss = loss + tss_weight * metrics["tss_loss"]
    if nns_weight > 0:
        queue, valid = method_state["text_queue"], method_state["queue_valid"]
        if queue.shape[0] != queue_size:
            raise UserError(f"config.loss.queue_size={queue_size} but the method state holds a "
                            f"queue of {queue.shape[0]} (restored from another config?)")
        images, texts = views("nns_weight", nns_views == "all")
        metrics["nns_loss"] = nns_loss(images, texts, scale, queue, valid, positives)
        metrics["nns_queue_fill"] = jnp.mean(valid.astype(jnp.float32))
        loss = loss + nns_weight * metrics["nns_loss"]
    return loss, metrics


def declip_init_state(queue_size: int, embed_dim: int) -> dict[str, jax.Array]:
    """An empty queue: `text_queue` [Q, E] f32, `queue_valid` [Q] bool, `queue_ptr` int32."""
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise UserError(f"config.loss.queue_size must be a positive integer, got {queue_size!r}")
    return {"text_queue": jnp.zeros((queue_size, embed_dim), jnp.float32),
            "queue_valid": jnp.zeros((queue_size,), bool),
            "queue_ptr": jnp.zeros((), jnp.int32)}


def declip_update_state(state: Mapping[str, jax.Array], text_emb: jax.Array
                        ) -> dict[str, jax.Array]:
    """Enqueues the rows of `text_emb` [N, E] (normalised, stop-gradient) FIFO: they overwrite
    the oldest entries, wrapping around the end of the queue. Needs Q >= N."""
    queue = state["text_queue"]
    size, n = queue.shape[0], text_emb.shape[0]
    if n > size:
        raise UserError(f"config.loss.queue_size={size} must be >= the {n} text embeddings "
                        f"enqueued per step (global batch x text views)")
    slots = (state["queue_ptr"] + jnp.arange(n, dtype=jnp.int32)) % size
    entries = jax.lax.stop_gradient(l2_normalize(text_emb)).astype(queue.dtype)
    return {"text_queue": queue.at[slots].set(entries),
            "queue_valid": state["queue_valid"].at[slots].set(True),
            "queue_ptr": ((state["queue_ptr"] + n) % size).astype(jnp.int32)}


def declip_queue_entries(outputs, nns_views: str = "all") -> jax.Array:
    """The step's texts to enqueue: [N, E] for "clip", every text view ([N * (1 + T), E],
    view-major) for "all"."""
    if nns_views == "clip":
        return outputs.text_emb
    texts = stack_views(outputs.text_emb, _field(outputs, "view_text_emb", "nns_weight"))
    return jnp.swapaxes(texts, 0, 1).reshape(-1, texts.shape[-1])


def init_state_from_config(loss_kwargs: Mapping[str, Any], embed_dim: int) -> dict:
    """`methods.MethodState.init`: the empty queue, or {} when NNS is off."""
    if loss_kwargs.get("nns_weight", 0.2) == 0:
        return {}
    return declip_init_state(loss_kwargs.get("queue_size", DEFAULT_QUEUE_SIZE), embed_dim)


def update_state_from_outputs(state: Mapping[str, jax.Array], outputs,
                              loss_kwargs: Mapping[str, Any]) -> Mapping[str, jax.Array]:
    """`methods.MethodState.update`: enqueues this step's texts; runs after the loss has used
    the queue."""
    if loss_kwargs.get("nns_weight", 0.2) == 0:
        return state
    entries = declip_queue_entries(outputs, loss_kwargs.get("nns_views", "all"))
    return declip_update_state(state, entries)
