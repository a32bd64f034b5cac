"""Medical VQA as classification over the answers of the training split.

The protocol of medical CLIP papers on VQA-RAD / PathVQA (PubMedCLIP, the benchmark of
arXiv 2406.07450), in pieces that can each be tested alone:

* **Questions.** One example per question: the real datasets store one record per question
  (`questions_from_records`), the synthetic dataset one record per image with a `vqa` sequence
  of question/answer pairs (`expand_image_records`). Answers are compared in the form
  `text_ops.normalize_caption` gives (NFKC, lower-cased, whitespace collapsed, trailing
  punctuation removed) -- the same function the dataset builders use. Questions of one image
  share one row of the image feature table (`image_row`), so an image is embedded once.
* **Answer vocabulary** (`build_vocabulary`): the normalised answers of the train split, most
  frequent first (ties alphabetical), optionally cut to the top `max_answers`. Train
  questions whose answer falls outside it have an all-zero target: they are dropped from
  training and counted (`num_train_dropped`). A test answer outside it can never be predicted:
  it counts as wrong, and their number is reported (`num_unseen_answers`).
* **Soft targets** (`soft_targets`): VQA's min(1, count / 3) over the annotators' answers when a
  question has several, 1.0 on the answer when it has one. VQA-RAD, PathVQA and the synthetic
  dataset have one answer per question, so their targets are one-hot.
* **The head** (`VqaHead`, Flax linen): a fusion module, then an MLP classifier giving one
  logit per answer. `bilinear`: MFB-style low-rank bilinear pooling of the pooled image and
  question embeddings (the Hadamard product of two projections to hidden * factor, summed over
  each group of `factor`). `cross_attention`: the question (its token features, or its pooled
  embedding as a single query) attends over the image's patch tokens (with the class token /
  pooled embedding as one more key) in pre-norm transformer layers; the attended queries are
  mean-pooled over real question tokens. Pooled embeddings are L2-normalised first (the space
  the contrastive loss trained them in).
* **Training** (`fit_head`): binary cross-entropy with logits on the soft targets (summed over
  answers, averaged over questions), AdamW with warm-up + cosine decay, a jitted step, batches
  drawn from a fixed per-epoch permutation (numpy rng seeded by (seed, epoch)), dropout keys
  folded from the seed: the same config gives the same head. Features live on the devices as
  replicated tables; a batch is a vector of question indices, split over the data axis.
  With a frozen image tower the image features are computed once (`encode_split_images`);
  `finetune_image` instead trains the image tower (`image` + `image_proj` params, learning
  rate * `image_lr_multiplier`) on the preprocessed pixels, kept in memory (no augmentation).
* **Metrics** (`vqa_accuracy`, `majority_baseline`, `question_prior_baseline`): exact-match
  accuracy of the argmax answer overall, on closed and on open questions; the majority answer
  of the train split's closed questions (of all questions) scored on the test closed questions
  (all test questions); and a blind per-question prior (the most frequent train answer of the
  same question text), which shows how much of the accuracy needs the image.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medclip_jax import settings as settings_lib
from medclip_jax import sharding
from medclip_jax.data import pipeline
from medclip_jax.data.text_ops import normalize_caption as normalize_answer
from medclip_jax.errors import UserError
from medclip_jax.evaluation import model_view
from medclip_jax.models import DualEncoder

FUSIONS = settings_lib.FUSIONS
QUESTION_FEATURES = settings_lib.QUESTION_FEATURES
CLOSED_TYPES = ("closed", "yes/no", "yes_no", "yesno")
OPEN_TYPES = ("open", "other")
#: Top-level CLIP params that `finetune_image` trains; the rest stays frozen.
IMAGE_TOWER_KEYS = ("image", "image_proj")


# --------------------------------------------------------------------------------------------
# Questions, answers, targets
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Questions:
    """The questions of one split. `image_row[q]` is q's row in the split's image table, whose
    rows are the records `image_records` (sorted record indices) of the split."""

    question: list[str]
    answers: list[tuple[str, ...]]  # normalised; one per annotator (these datasets: one)
    closed: np.ndarray              # [Q] bool
    image_row: np.ndarray           # [Q] int64
    image_records: np.ndarray       # [I] int64, increasing

    def __len__(self) -> int:
        return len(self.question)

    @property
    def answer(self) -> list[str]:
        """The answer accuracy compares with: the most frequent one (ties alphabetical)."""
        return [primary_answer(a) for a in self.answers]


def primary_answer(answers: Sequence[str]) -> str:
    counts = collections.Counter(answers)
    return min(counts, key=lambda a: (-counts[a], a))


def is_closed(answer_type: str, where: str) -> bool:
    """closed (yes/no, limited choice) vs open; anything else is a data error."""
    kind = str(answer_type).strip().lower()
    if kind in CLOSED_TYPES:
        return True
    if kind in OPEN_TYPES:
        return False
    raise UserError(f"{where}: unknown answer_type {answer_type!r}; expected closed or open")


def expand_image_records(vqa: Sequence[dict[str, Sequence[str]]], where: str) -> Questions:
    """Per-image records with a `vqa` sequence {question, answer, answer_type} -> one example
    per question (the synthetic dataset); each image is its own table row."""
    questions, answers, closed, rows = [], [], [], []
    for record, pairs in enumerate(vqa):
        lengths = {len(pairs[k]) for k in ("question", "answer", "answer_type")}
        if len(lengths) != 1:
            raise UserError(f"{where} record {record}: vqa question/answer/answer_type lists "
                            f"differ in length")
        for question, answer, kind in zip(pairs["question"], pairs["answer"],
                                          pairs["answer_type"]):
            questions.append(str(question))
            answers.append((normalize_answer(str(answer)),))
            closed.append(is_closed(kind, f"{where} record {record}"))
            rows.append(record)
    return Questions(questions, answers, np.asarray(closed, bool),
                     np.asarray(rows, np.int64), np.arange(len(vqa), dtype=np.int64))


def questions_from_records(question: Sequence[str], answer: Sequence[str],
                           answer_type: Sequence[str], image_id: Sequence[str],
                           where: str) -> Questions:
    """One record per question (VQA-RAD, PathVQA); records sharing an `image_id` share the
    image row of the first of them."""
    first: dict[str, int] = {}
    image_records: list[int] = []
    rows = np.empty(len(question), np.int64)
    for record, image in enumerate(image_id):
        if str(image) not in first:
            first[str(image)] = len(image_records)
            image_records.append(record)
        rows[record] = first[str(image)]
    closed = np.asarray([is_closed(t, f"{where} record {i}") for i, t in enumerate(answer_type)],
                        bool)
    return Questions([str(q) for q in question], [(normalize_answer(str(a)),) for a in answer],
                     closed, rows, np.asarray(image_records, np.int64))


def build_vocabulary(answers: Sequence[Sequence[str]], max_answers: int = 0) -> list[str]:
    """The train answers, most frequent first (ties alphabetical); the top `max_answers` when
    it is positive."""
    counts = collections.Counter(a for annotator_answers in answers for a in annotator_answers)
    vocab = sorted(counts, key=lambda a: (-counts[a], a))
    return vocab[:max_answers] if max_answers > 0 else vocab


def answer_index(answers: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
    """[Q] index of each answer in the vocabulary, -1 when it is not in it."""
    lookup = {a: i for i, a in enumerate(vocab)}
    return np.asarray([lookup.get(a, -1) for a in answers], np.int64)


def soft_targets(answers: Sequence[Sequence[str]], vocab: Sequence[str]) -> np.ndarray:
    """[Q, A] float32 targets: 1.0 on a single answer; VQA's min(1, count / 3) per answer when
    a question has several annotators' answers. Answers outside the vocabulary get nothing."""
    lookup = {a: i for i, a in enumerate(vocab)}
    targets = np.zeros((len(answers), len(vocab)), np.float32)
    for q, annotator_answers in enumerate(answers):
        counts = collections.Counter(annotator_answers)
        for answer, count in counts.items():
            if answer in lookup:
                score = 1.0 if len(annotator_answers) == 1 else min(1.0, count / 3.0)
                targets[q, lookup[answer]] = score
    return targets


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _mean_or_none(hits: np.ndarray) -> float | None:
    """None for an empty group (shown as missing, never as 0)."""
    return float(np.mean(hits)) if hits.size else None


def vqa_accuracy(predictions: np.ndarray, targets: np.ndarray, closed: np.ndarray
                 ) -> dict[str, Any]:
    """Exact-match accuracy of predicted answer indices against target indices (-1: an answer
    outside the vocabulary, always wrong), overall / closed / open."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    closed = np.asarray(closed, bool)
    if predictions.shape != targets.shape or closed.shape != targets.shape:
        raise ValueError("predictions, targets and closed must have the same shape")
    hits = (predictions == targets) & (targets >= 0)
    return {"accuracy": _mean_or_none(hits), "closed_accuracy": _mean_or_none(hits[closed]),
            "open_accuracy": _mean_or_none(hits[~closed]),
            "num_questions": int(targets.size), "num_closed": int(closed.sum()),
            "num_open": int((~closed).sum()), "num_unseen_answers": int((targets < 0).sum())}


def majority_baseline(train_answers: Sequence[str], train_closed: np.ndarray,
                      test_answers: Sequence[str], test_closed: np.ndarray) -> dict[str, Any]:
    """Always answering the train split's most frequent answer: that of its closed questions
    on the test closed questions, that of all its questions on all test questions."""
    train_closed, test_closed = np.asarray(train_closed, bool), np.asarray(test_closed, bool)
    train_answers, test_answers = np.asarray(train_answers, object), np.asarray(test_answers,
                                                                                 object)
    out: dict[str, Any] = {}
    for name, train_rows, test_rows in (("majority", slice(None), slice(None)),
                                        ("majority_closed", train_closed, test_closed)):
        vocab = build_vocabulary([(a,) for a in train_answers[train_rows]], 1)
        answer = vocab[0] if vocab else None
        out[f"{name}_answer"] = answer
        out[f"{name}_accuracy"] = _mean_or_none(test_answers[test_rows] == answer)
    return out


def question_prior_baseline(train_questions: Sequence[str], train_answers: Sequence[str],
                            test_questions: Sequence[str], test_answers: Sequence[str],
                            test_closed: np.ndarray) -> dict[str, Any]:
    """A blind answerer: the most frequent train answer of the same question text (the train
    split's overall most frequent answer for a question never seen in train). What a head
    could reach from the question alone, without looking at the image."""
    by_question: dict[str, list[tuple[str]]] = collections.defaultdict(list)
    for question, answer in zip(train_questions, train_answers):
        by_question[question].append((answer,))
    fallback = build_vocabulary([(a,) for a in train_answers], 1)
    prior = {q: build_vocabulary(answers, 1)[0] for q, answers in by_question.items()}
    hits = np.asarray([prior.get(q, fallback[0] if fallback else None) == a
                       for q, a in zip(test_questions, test_answers)], bool)
    test_closed = np.asarray(test_closed, bool)
    return {"question_prior_accuracy": _mean_or_none(hits),
            "question_prior_closed_accuracy": _mean_or_none(hits[test_closed])}


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


def batch_plan(num: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions [B], valid [B]) covering 0..num-1 once each; the last batch is padded with
    position 0 and valid=False, so every batch has the same shape (one compilation)."""
    for start in range(0, num, batch_size):
        positions = np.arange(start, start + batch_size)
        valid = positions < num
        yield np.where(valid, positions, 0), valid


def put(x: np.ndarray, target: NamedSharding) -> jax.Array:
    """A host array that every process holds whole -> a global array with `target` sharding."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, target, lambda index: x[index])


# --------------------------------------------------------------------------------------------
# The head (Flax linen)
# --------------------------------------------------------------------------------------------


def l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


class BilinearFusion(nn.Module):
    """MFB: z = SumPool_k(U^T x * V^T q) over pooled image x and question q, then LayerNorm
    (in place of MFB's power + L2 normalisation: the same bounded scale, smooth at 0)."""
    hidden_dim: int
    factor: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, image: jax.Array, question: jax.Array, *, train: bool) -> jax.Array:
        width = self.hidden_dim * self.factor
        joint = nn.Dense(width, name="image")(image) * nn.Dense(width, name="question")(question)
        joint = nn.Dropout(self.dropout)(joint, deterministic=not train)
        joint = joint.reshape(*joint.shape[:-1], self.hidden_dim, self.factor).sum(-1)
        return nn.LayerNorm(name="ln")(joint)


class CrossAttentionLayer(nn.Module):
    """Pre-norm cross-attention (queries over keys/values) + MLP, both residual."""
    hidden_dim: int
    num_heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, queries: jax.Array, keys: jax.Array, *, train: bool) -> jax.Array:
        attended = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=self.hidden_dim, out_features=self.hidden_dim,
            dropout_rate=self.dropout, deterministic=not train, name="attn")(
            nn.LayerNorm(name="ln_q")(queries), nn.LayerNorm(name="ln_kv")(keys))
        queries = queries + attended
        hidden = nn.Dense(2 * self.hidden_dim, name="fc1")(nn.LayerNorm(name="ln_mlp")(queries))
        hidden = nn.Dropout(self.dropout)(nn.gelu(hidden), deterministic=not train)
        return queries + nn.Dense(self.hidden_dim, name="fc2")(hidden)


class CrossAttentionFusion(nn.Module):
    """Question queries [B, L, Dq] (mask [B, L]) attend over the image's pooled embedding and
    patch tokens [B, N, Di]; output: the mean of the attended queries over real tokens."""
    hidden_dim: int
    num_heads: int
    num_layers: int = 1
    dropout: float = 0.0

    @nn.compact
    def __call__(self, image_pooled: jax.Array, image_tokens: jax.Array, queries: jax.Array,
                 query_mask: jax.Array, *, train: bool) -> jax.Array:
        keys = jnp.concatenate([nn.Dense(self.hidden_dim, name="image_pooled")(image_pooled)[:, None],
                                nn.Dense(self.hidden_dim, name="image_tokens")(image_tokens)],
                               axis=1)
        x = nn.Dense(self.hidden_dim, name="question")(queries)
        for i in range(self.num_layers):
            x = CrossAttentionLayer(self.hidden_dim, self.num_heads, self.dropout,
                                    name=f"layer_{i}")(x, keys, train=train)
        weights = query_mask.astype(x.dtype)[..., None]
        pooled = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return nn.LayerNorm(name="ln")(pooled)


class VqaHead(nn.Module):
    """Fusion, then Dense -> GELU -> dropout -> Dense: one logit per answer of the vocabulary.

    `features`: image_pooled [B, Ei], question_pooled [B, Eq] (both L2-normalised here), and for
    cross_attention image_tokens [B, N, Wi] plus question_tokens [B, L, Wq] / question_mask
    [B, L] (or, with question_features="pooled", the pooled question as the only query).
    """
    num_answers: int
    # No defaults: `HeadSettings.head` gives every field from config.vqa (settings.VqaSettings).
    fusion: str
    question_features: str
    hidden_dim: int
    bilinear_factor: int
    num_heads: int
    num_layers: int
    classifier_hidden_dim: int
    dropout: float

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], *, train: bool = False) -> jax.Array:
        image = l2_normalize(features["image_pooled"].astype(jnp.float32))
        question = l2_normalize(features["question_pooled"].astype(jnp.float32))
        if self.fusion == "bilinear":
            fused = BilinearFusion(self.hidden_dim, self.bilinear_factor, self.dropout,
                                   name="fusion")(image, question, train=train)
        elif self.fusion == "cross_attention":
            if self.question_features == "tokens":
                queries = features["question_tokens"].astype(jnp.float32)
                mask = features["question_mask"]
            else:
                queries, mask = question[:, None], jnp.ones(question.shape[:1] + (1,), jnp.int32)
            fused = CrossAttentionFusion(self.hidden_dim, self.num_heads, self.num_layers,
                                         self.dropout, name="fusion")(
                image, features["image_tokens"].astype(jnp.float32), queries, mask, train=train)
        else:
            raise ValueError(f"unknown fusion {self.fusion!r}; expected one of {FUSIONS}")
        hidden = nn.gelu(nn.Dense(self.classifier_hidden_dim, name="classifier_fc1")(fused))
        hidden = nn.Dropout(self.dropout)(hidden, deterministic=not train)
        return nn.Dense(self.num_answers, name="classifier_fc2")(hidden)


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeadSettings(settings_lib.VqaSettings):
    """`config.vqa` (defaults and checks: `settings.VqaSettings`), able to build its head."""

    def head(self, num_answers: int) -> VqaHead:
        """The head with this config's values for every VqaHead field (matched by name)."""
        shared = {f.name for f in dataclasses.fields(VqaHead)} & \
            {f.name for f in dataclasses.fields(self)}
        return VqaHead(num_answers, **{name: getattr(self, name) for name in shared})


def settings_from_config(vqa: Any) -> HeadSettings:
    """Reads and checks `config.vqa` once (unknown names and impossible values fail here)."""
    return HeadSettings.from_config(vqa)


# --------------------------------------------------------------------------------------------
# Training and prediction
# --------------------------------------------------------------------------------------------

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


@functools.lru_cache(maxsize=32)
def make_optimizer(settings: HeadSettings, total_steps: int) -> optax.GradientTransformation:
    """AdamW (decay on matrices only) with linear warm-up and cosine decay, for a trainable
    tree {"head": ..., ["tower": ...]}: the image tower, when trained, at
    `image_lr_multiplier` times the head's rate."""

    def adamw(scale: float) -> optax.GradientTransformation:
        peak = float(settings.learning_rate) * scale
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps=max(1, min(100, total_steps // 10)),
            decay_steps=max(total_steps, 2), end_value=peak * 0.01)
        return optax.adamw(schedule, weight_decay=float(settings.weight_decay),
                           mask=lambda tree: jax.tree.map(lambda x: x.ndim > 1, tree))

    def labels(trainable: dict[str, Any]) -> dict[str, Any]:
        return {key: jax.tree.map(lambda _, key=key: key, value)
                for key, value in trainable.items()}

    return optax.multi_transform(
        {"head": adamw(1.0), "tower": adamw(float(settings.image_lr_multiplier))}, labels)


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
    return {k: put(v, sharding.replicated(mesh)) for k, v in tables.items()}


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


def fit_head(head: VqaHead, settings: HeadSettings, tables: dict[str, np.ndarray],
             train_rows: np.ndarray, mesh: Mesh, *, tower: Any = None, frozen: Any = None,
             image_encoder: ImageEncoder | None = None,
             log: Callable[[str], None] | None = None) -> FitResult:
    """Trains the head (and the image tower when `tower` is given) on questions `train_rows`
    of `tables` (which must hold `targets`) for `settings.epochs` epochs; deterministic.
    `log` gets one progress line per epoch."""
    if len(train_rows) == 0:
        raise UserError("config.vqa: no train question has an answer in the vocabulary")
    sharding.check_batch_size(settings.batch_size, mesh, "config.vqa.batch_size")
    trainable = {"head": init_head(head, tables, settings.seed, mesh, tower, frozen,
                                   image_encoder)}
    if tower is not None:
        trainable["tower"] = tower
    steps_per_epoch = math.ceil(len(train_rows) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    optimizer = make_optimizer(settings, total)
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
            trainable, opt_state, device_tables, frozen or {}, put(rows, stacked),
            put(valid.astype(np.float32), stacked), dropout_key,
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
                      put(positions.astype(np.int32), batch))
        chunks.append(sharding.to_host(out)[valid])
        seen.append(positions[valid])
    seen = np.concatenate(seen)
    if not np.array_equal(seen, np.arange(num_questions)):
        raise AssertionError("VQA prediction did not cover every question exactly once")
    return np.concatenate(chunks).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Features from the checkpoint (padded, masked, batch-sharded)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _tower_encoders(model: DualEncoder, mesh: Mesh) -> tuple[Callable, Callable]:
    """Jitted (pooled embedding, token features) of each tower, cached per (model, mesh) so
    every split and dataset reuses one compilation."""
    batch = sharding.batch_sharding(mesh)

    def image(params, images):
        return model.apply({"params": params}, images, method=DualEncoder.encode_image)

    def text(params, ids, mask):
        return model.apply({"params": params}, ids, mask, method=DualEncoder.encode_text)

    return (jax.jit(image, out_shardings=(batch, batch)),
            jax.jit(text, out_shardings=(batch, batch)))


def encode_questions(loaded: Any, texts: Sequence[str], global_batch_size: int, *,
                     tokens: bool) -> dict[str, np.ndarray]:
    """pooled [U, E] text embeddings of `texts` (in order); with `tokens`, also the text
    tower's token features [U, L, W] and mask [U, L], L cut to the longest real question."""
    mesh = loaded.mesh
    encode = _tower_encoders(loaded.model, mesh)[1]
    pooled, token_chunks, masks, index = [], [], [], []
    for local in model_view.text_batches(texts, loaded.tokenizer,
                                         loaded.train_config.model.text.max_len,
                                         global_batch_size):
        arrays = sharding.to_global_batch(local, mesh)
        valid = sharding.to_host(arrays["valid"]).astype(bool)
        emb, token_features = encode(loaded.params, arrays["text_ids"], arrays["text_mask"])
        pooled.append(sharding.to_host(emb)[valid])
        index.append(sharding.to_host(arrays["index"])[valid])
        if tokens:
            token_chunks.append(sharding.to_host(token_features)[valid])
            masks.append(sharding.to_host(arrays["text_mask"])[valid])
    index = np.concatenate(index)
    if not np.array_equal(np.sort(index), np.arange(len(texts))):
        raise AssertionError("question encoding did not cover every question exactly once")
    order = np.argsort(index, kind="stable")
    out = {"question_pooled": np.concatenate(pooled)[order].astype(np.float32)}
    if tokens:
        mask = np.concatenate(masks)[order].astype(np.int32)
        length = max(int(mask.sum(-1).max()), 1)
        out["question_tokens"] = np.concatenate(token_chunks)[order][:, :length].astype(
            np.float32)
        out["question_mask"] = mask[:, :length]
    return out


def encode_split_images(loaded: Any, data_dir: str, name: str, split: str,
                        global_batch_size: int, records: np.ndarray, *, tokens: bool,
                        pixels: bool, image_field: str = "image") -> dict[str, np.ndarray]:
    """Image features of records `records` (sorted) of a split, in that order: the projected
    pooled embedding [I, E] and, with `tokens`, the patch tokens [I, N, W]; with `pixels`, the
    preprocessed images [I, H, W, 3] instead (for a trained tower, encoded in the step)."""
    model, mesh = loaded.model, loaded.mesh
    batches = pipeline.make_eval_iterator(
        data_dir, name, split, image_size=loaded.train_config.model.image.image_size,
        max_len=loaded.train_config.model.text.max_len, tokenizer=None,
        global_batch_size=global_batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), data_config=loaded.train_config.data,
        image_field=image_field)
    encode = _tower_encoders(model, mesh)[0]
    wanted = np.zeros(int(records.max()) + 1 if len(records) else 0, bool)
    wanted[records] = True
    chunks: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for local in batches:
        arrays = sharding.to_global_batch(
            {k: local[k] for k in ("image", "valid", "index")}, mesh)
        index = sharding.to_host(arrays["index"])
        keep = sharding.to_host(arrays["valid"]).astype(bool)
        keep &= (index >= 0) & (index < len(wanted))
        keep[keep] = wanted[index[keep]]
        chunks["index"].append(index[keep])
        if pixels:
            chunks["pixels"].append(sharding.to_host(arrays["image"])[keep])
            continue
        emb, patch_tokens = encode(loaded.params, arrays["image"])
        chunks["image_pooled"].append(sharding.to_host(emb)[keep])
        if tokens:
            chunks["image_tokens"].append(sharding.to_host(patch_tokens)[keep])
    index = np.concatenate(chunks.pop("index"))
    if not np.array_equal(index, records):
        raise AssertionError(f"embedded records of {name}/{split} do not match the wanted ones")
    return {k: np.concatenate(v).astype(np.float32) for k, v in chunks.items()}
