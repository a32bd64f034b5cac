"""Training the VQA head on a split's feature tables, and predicting with it.

Binary cross-entropy with logits on the soft targets (summed over answers, averaged over
questions), the training optimizer (`optim.make_optimizer`, as `head_optimizer` sets it up),
a jitted epoch (`lax.scan` over steps), batches drawn from a fixed per-epoch permutation (numpy
rng seeded by (seed, epoch)), dropout keys folded from the seed: the same config gives the same
head. Features live on the devices as replicated tables; a batch is a vector of question
indices, split over the data axis. With a frozen image tower the tables hold image features
(`features.split_tables`); `finetune_image` instead trains the image tower (`image` +
`image_proj` params, at `image_lr_multiplier` times the rate) on the preprocessed pixels.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medclip_jax import optim, sharding
from medclip_jax.errors import UserError
from medclip_jax.evaluation.vqa.head import VqaHead
from medclip_jax.models import DualEncoder
from medclip_jax.settings import OptimSettings, VqaSettings

#: Top-level CLIP params that `finetune_image` trains; the rest stays frozen.
IMAGE_TOWER_KEYS = ("image", "image_proj")

def batch_plan(num: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions [B], valid [B]) covering 0..num-1 once each; the last batch is padded with
    position 0 and valid=False, so every batch has the same shape (one compilation)."""
    for start in range(0, num, batch_size):
        positions = np.arange(start, start + batch_size)
        valid = positions < num
        yield np.where(valid, positions, 0), valid

#: `image_encoder(tower_params, frozen_params, pixels) -> (pooled [B, E], tokens [B, N, W])`.
ImageEncoder = Callable[[Any, Any, jax.Array], tuple[jax.Array, jax.Array]]


@functools.lru_cache(maxsize=8)
def clip_image_encoder(model: DualEncoder) -> ImageEncoder:
    """The checkpoint's image tower as a function of its (trainable) params, for finetuning."""

    def encode(tower: Any, frozen: Any, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        return model.apply({"params": {**frozen, **tower}}, pixels,
                           method=DualEncoder.encode_image)

    return encode


def gather_features(tables: dict[str, jax.Array], rows: jax.Array, tower: Any, frozen: Any,
                    image_encoder: ImageEncoder | None) -> dict[str, jax.Array]:
    """The head's inputs for questions `rows` of a split's tables.

    Tables: image_row / question_row [Q] (per question), question_pooled [U, E] (+
    question_tokens / question_mask), and image_pooled [I, E] (+ image_tokens) for a frozen
    tower or pixels [I, H, W, 3] for a trained one.
    """
    image_rows = tables["image_row"][rows]
    question_rows = tables["question_row"][rows]
    features = {"question_pooled": tables["question_pooled"][question_rows]}
    if "question_tokens" in tables:
        features["question_tokens"] = tables["question_tokens"][question_rows]
        features["question_mask"] = tables["question_mask"][question_rows]
    if image_encoder is None:
        features["image_pooled"] = tables["image_pooled"][image_rows]
        if "image_tokens" in tables:
            features["image_tokens"] = tables["image_tokens"][image_rows]
    else:
        pooled, tokens = image_encoder(tower, frozen, tables["pixels"][image_rows])
        features["image_pooled"], features["image_tokens"] = pooled, tokens
    return features


def bce_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Sigmoid BCE summed over answers, averaged over the weighted (real) questions."""
    per_question = optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
    weights = weights.astype(jnp.float32)
    return jnp.sum(per_question * weights) / jnp.maximum(jnp.sum(weights), 1.0)


# The factories below are cached on their (hashable) arguments, so fitting the same head twice
# reuses the compiled functions: jax.jit caches by function identity.


def head_optimizer(settings: VqaSettings, trainable: dict[str, Any], total_steps: int
                   ) -> optax.GradientTransformation:
    """The training optimizer (`optim.make_optimizer`) set up as the VQA protocol's AdamW:
    Adam's usual betas and eps, decay on matrices only, no clipping, linear warm-up (10 % of
    the steps, at most 100) and cosine decay to 1 % of the peak; the image tower, when
    trained (`trainable["tower"]`), at `image_lr_multiplier` times the head's rate."""
    leaves, treedef = jax.tree.flatten(trainable)
    return _head_optimizer(settings, total_steps, treedef,
                           tuple((tuple(x.shape), jnp.dtype(x.dtype)) for x in leaves))


@functools.lru_cache(maxsize=32)
def _head_optimizer(settings: VqaSettings, total_steps: int, treedef: Any,
                    leaves: tuple[tuple[tuple[int, ...], Any], ...]
                    ) -> optax.GradientTransformation:
    abstract = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    optim_settings = OptimSettings.from_config({
        "learning_rate": float(settings.learning_rate),
        "warmup_steps": max(1, min(100, total_steps // 10)), "end_lr_fraction": 0.01,
        "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": float(settings.weight_decay),
        "grad_clip_norm": 0.0, "no_decay_regex": "",
        "lr_multipliers": ((r"^tower/", float(settings.image_lr_multiplier)),)})
    return optim.make_optimizer(optim_settings, abstract, total_steps)[0]


def make_train_step(head: VqaHead, optimizer: optax.GradientTransformation,
                    image_encoder: ImageEncoder | None) -> Callable:
    """(trainable, opt_state, tables, frozen, rows, weights, key) -> (trainable, opt_state,
    loss), a pure function; `trainable` = {"head": ..., ["tower": image tower params]}."""

    def loss_fn(trainable, tables, frozen, rows, weights, key):
        features = gather_features(tables, rows, trainable.get("tower"), frozen, image_encoder)
        logits = head.apply({"params": trainable["head"]}, features, train=True,
                            rngs={"dropout": key})
        return bce_loss(logits, tables["targets"][rows], weights)

    def step(trainable, opt_state, tables, frozen, rows, weights, key):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, tables, frozen, rows, weights, key)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return step


@functools.lru_cache(maxsize=32)
def make_train_epoch(head: VqaHead, optimizer: optax.GradientTransformation,
                     image_encoder: ImageEncoder | None) -> Callable:
    """One jitted call per epoch: `step` scanned over rows / weights [S, B]; the dropout key
    of global step t is fold_in(key, t). Returns (trainable, opt_state, losses [S])."""
    step = make_train_step(head, optimizer, image_encoder)

    def epoch(trainable, opt_state, tables, frozen, rows, weights, key, first_step):
        def body(carry, batch):
            trainable, opt_state, t = carry
            trainable, opt_state, loss = step(trainable, opt_state, tables, frozen, batch[0],
                                              batch[1], jax.random.fold_in(key, t))
            return (trainable, opt_state, t + 1), loss

        (trainable, opt_state, _), losses = jax.lax.scan(
            body, (trainable, opt_state, first_step), (rows, weights))
        return trainable, opt_state, losses

    return jax.jit(epoch)


@functools.lru_cache(maxsize=32)
def make_predict(head: VqaHead, image_encoder: ImageEncoder | None) -> Callable:
    """jit((trainable, tables, frozen, rows) -> argmax answer index [B])."""

    def predict(trainable, tables, frozen, rows):
        features = gather_features(tables, rows, trainable.get("tower"), frozen, image_encoder)
        return jnp.argmax(head.apply({"params": trainable["head"]}, features, train=False), -1)

    return jax.jit(predict)


def place_tables(tables: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host tables -> arrays replicated over the mesh (gathered by index inside the step)."""
    return {k: sharding.from_host(v, sharding.replicated(mesh)) for k, v in tables.items()}


def init_head(head: VqaHead, tables: dict[str, np.ndarray], seed: int, mesh: Mesh,
              tower: Any = None, frozen: Any = None,
              image_encoder: ImageEncoder | None = None) -> Any:
    """Head params from the seed, traced on the first question's features, replicated."""
    features = gather_features(tables, np.zeros((1,), np.int64), tower, frozen, image_encoder)
    return _head_init(head, mesh)(jax.random.key(seed), features)


@functools.lru_cache(maxsize=32)
def _head_init(head: VqaHead, mesh: Mesh) -> Callable:
    def init(key, features):
        return head.init(key, features, train=False)["params"]

    return jax.jit(init, out_shardings=sharding.replicated(mesh))


@functools.lru_cache(maxsize=32)
def _optimizer_init(optimizer: optax.GradientTransformation) -> Callable:
    return jax.jit(optimizer.init)


@dataclasses.dataclass
class FitResult:
    trainable: dict[str, Any]
    epoch_losses: list[float]
    steps: int


def fit_head(head: VqaHead, settings: VqaSettings, tables: dict[str, np.ndarray],
             train_rows: np.ndarray, mesh: Mesh, *, tower: Any = None, frozen: Any = None,
             image_encoder: ImageEncoder | None = None,
             log: Callable[[str], None] | None = None) -> FitResult:
    """Trains the head (and the image tower when `tower` is given) on questions `train_rows`
    of `tables` (which must hold `targets`) for `settings.epochs` epochs; deterministic.
    `log` gets one progress line per epoch."""
    if len(train_rows) == 0:
        raise UserError(f"{settings.PATH}: no train question has an answer in the vocabulary")
    sharding.check_batch_size(settings.batch_size, mesh, f"{settings.PATH}.batch_size")
    trainable = {"head": init_head(head, tables, settings.seed, mesh, tower, frozen,
                                   image_encoder)}
    if tower is not None:
        trainable["tower"] = tower
    steps_per_epoch = math.ceil(len(train_rows) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    optimizer = head_optimizer(settings, trainable, total)
    opt_state = _optimizer_init(optimizer)(trainable)
    train_epoch = make_train_epoch(head, optimizer, image_encoder)
    device_tables = place_tables(tables, mesh)
    stacked = NamedSharding(mesh, P(None, sharding.BATCH_AXES))
    dropout_key = jax.random.fold_in(jax.random.key(settings.seed), 1)
    epoch_losses = []
    for epoch in range(settings.epochs):
        order = np.random.default_rng([settings.seed, epoch]).permutation(train_rows)
        plan = list(batch_plan(len(order), settings.batch_size))
        rows = np.stack([order[positions] for positions, _ in plan]).astype(np.int32)
        valid = np.stack([v for _, v in plan])
        trainable, opt_state, losses = train_epoch(
            trainable, opt_state, device_tables, frozen or {}, sharding.from_host(rows, stacked),
            sharding.from_host(valid.astype(np.float32), stacked), dropout_key,
            jnp.int32(epoch * steps_per_epoch))
        # The mean over the epoch's questions (each batch's loss is a mean over its real rows).
        sizes = valid.sum(-1)
        epoch_losses.append(float(np.dot(sharding.to_host(losses), sizes) / sizes.sum()))
        if log is not None:
            log(f"epoch {epoch + 1}/{settings.epochs} loss {epoch_losses[-1]:.4f}")
    return FitResult(trainable, epoch_losses, total)


def predict_answers(head: VqaHead, trainable: dict[str, Any], tables: dict[str, np.ndarray],
                    num_questions: int, batch_size: int, mesh: Mesh, *, frozen: Any = None,
                    image_encoder: ImageEncoder | None = None) -> np.ndarray:
    """[num_questions] argmax answer index of every question of `tables`, each exactly once."""
    predict = make_predict(head, image_encoder)
    device_tables = place_tables(tables, mesh)
    batch = sharding.batch_sharding(mesh)
    chunks, seen = [], []
    for positions, valid in batch_plan(num_questions, batch_size):
        out = predict(trainable, device_tables, frozen or {},
                      sharding.from_host(positions.astype(np.int32), batch))
        chunks.append(sharding.to_host(out)[valid])
        seen.append(positions[valid])
    seen = np.concatenate(seen)
    if not np.array_equal(seen, np.arange(num_questions)):
        raise AssertionError("VQA prediction did not cover every question exactly once")
    return np.concatenate(chunks).astype(np.int64)
