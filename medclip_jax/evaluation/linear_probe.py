"""Linear probe on frozen features: L2-regularised multinomial logistic regression in JAX.

The objective is scikit-learn's ``LogisticRegression(C=...)`` (multinomial, lbfgs) written in
mean-loss form::

    L(W, b) = (1/N) sum_i -log softmax(x_i W + b)[y_i] + (l2 / 2) ||W||^2,   l2 = 1 / (C N)

(sklearn minimises ``C * sum of losses + ||W||^2 / 2``; dividing by ``C N`` gives the line
above, so the minimiser is the same). The bias is not penalised, as in sklearn's lbfgs. The
mean form keeps the meaning of ``l2`` independent of the number of training rows, so one grid
serves the full probe and every k-shot size.

The fit is full batch: optax's L-BFGS with a zoom line search, each solve a
``lax.while_loop`` to ``max_iterations`` or until the gradient's L2 norm drops below
``tolerance`` (default 1e-4: sklearn's default ``tol``, which it applies to the largest
gradient component of the same mean-form objective, so ours is the stricter test). One
``jax.jit`` call solves the whole L2 grid of a training set as a regularisation path (a
``lax.scan`` from the largest L2 to the smallest, each solve warm-started from the previous
one; the optimum of each is unique, so the order changes only the iterations needed). Rows are
padded to a power of two (at least 128) with weight 0, and classes to a power of two (at least
8) whose logits are masked to -inf: a padded class has probability 0, so its weights get zero
gradient and stay at zero, and the fit is that of the real classes. Each (rows bucket, feature
dim, classes bucket, grid length) compiles once, reused by every k-shot draw and by the
datasets of the paper's suite (2 to 11 classes: two compiles instead of ten). Parameters start
at zero; softmax gradients sum to zero over classes, so W's columns and b stay centred (sum
over classes 0), sklearn's symmetric parametrisation.

Features are standardised (per feature: minus the mean, over the population standard
deviation; constant features are only centred) with the statistics of the rows being fitted,
then applied to the rows scored. Why: embeddings are not normalised and their scale differs
between methods and checkpoints, so without it the same L2 grid would mean a different
strength for each; it also conditions L-BFGS. ``standardize=False`` fits the raw features.
(Comparing with sklearn like for like: ``StandardScaler`` + ``LogisticRegression``, or both on
the same matrix with ``standardize=False``.)

Protocol (`probe`): fit every L2 value of the grid on train, pick the one with the best
validation top-1 (ties: the larger L2, the simpler model), refit on train + validation with it
(the CLIP / clip_benchmark protocol), score test. Without a validation split the caller carves
one from train with `stratified_carve`. k-shot (`k_shot_probe`): per k and seed, k examples
per class drawn from train, the grid fitted on them, L2 chosen on the (full) validation split,
no refit (it would add the validation rows), scored on test; mean and sample standard
deviation over seeds. Test scores are softmax probabilities, scored by
`metrics.classification_metrics`.
"""

import dataclasses
import functools
import hashlib
import os
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import optax.tree_utils as otu

from medclip_jax.data import sources
from medclip_jax.errors import UserError
from medclip_jax.evaluation import fields, metrics, model_view, zero_shot
from medclip_jax.settings import PROBE_FEATURES, EvalSettings, LinearProbeSettings

#: Metrics averaged over seeds in k-shot mode.
K_SHOT_METRICS = ("top1", "balanced_accuracy", "macro_f1", "macro_auroc")
MIN_ROWS_BUCKET = 128
MIN_CLASSES_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """The solver and the sweep. `l2_grid` holds values of `l2` in the mean-loss objective."""
    # Defaults: config.linear_probe's (`settings.LinearProbeSettings`), their one home.
    l2_grid: tuple[float, ...] = LinearProbeSettings.l2_grid
    max_iterations: int = LinearProbeSettings.max_iterations
    tolerance: float = LinearProbeSettings.tolerance
    standardize: bool = LinearProbeSettings.standardize

    def __post_init__(self):
        if not self.l2_grid or any(not (l >= 0 and np.isfinite(l)) for l in self.l2_grid):
            raise UserError(f"config.linear_probe.l2_grid: needs one or more finite values "
                            f">= 0, got {self.l2_grid}")
        if self.max_iterations < 1:
            raise UserError(f"config.linear_probe.max_iterations: must be >= 1, got "
                            f"{self.max_iterations}")
        if not self.tolerance >= 0:
            raise UserError(f"config.linear_probe.tolerance: must be >= 0, got "
                            f"{self.tolerance}")


@dataclasses.dataclass(frozen=True)
class Probe:
    """A fitted probe: standardisation, then softmax(x W + b)."""
    weights: np.ndarray  # [D, C], in standardised feature units
    bias: np.ndarray     # [C]
    mean: np.ndarray     # [D]
    scale: np.ndarray    # [D]
    l2: float
    iterations: int
    grad_norm: float
    converged: bool

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax class probabilities [N, C] (float64)."""
        logits = standardized(x, self.mean, self.scale) @ self.weights + self.bias
        logits = logits - logits.max(axis=1, keepdims=True)
        expd = np.exp(logits)
        return expd / expd.sum(axis=1, keepdims=True)


def sklearn_l2(c: float, num_rows: int) -> float:
    """The `l2` of the mean-loss objective equal to sklearn's ``C`` on `num_rows` rows."""
    return 1.0 / (c * num_rows)


def standardizer(x: np.ndarray, enabled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per feature, as sklearn's StandardScaler; identity when disabled."""
    x = np.asarray(x, np.float64)
    if not enabled:
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    std = x.std(axis=0)
    return x.mean(axis=0), np.where(std > 0, std, 1.0)


def standardized(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float64) - mean) / scale


def objective(params: dict[str, jax.Array], x: jax.Array, labels: jax.Array,
              row_weights: jax.Array, l2: jax.Array, class_mask: jax.Array) -> jax.Array:
    """Weighted mean cross-entropy + (l2 / 2) ||W||^2; weight-0 rows and classes outside
    `class_mask` are padding."""
    logits = jnp.where(class_mask, x @ params["w"] + params["b"], -jnp.inf)
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    return (jnp.sum(row_weights * nll) / jnp.sum(row_weights)
            + 0.5 * l2 * jnp.sum(jnp.square(params["w"])))


def _lbfgs(fun, init: dict[str, jax.Array], tolerance: jax.Array, max_iterations: int
           ) -> tuple[dict[str, jax.Array], jax.Array]:
    """L-BFGS + zoom line search from `init` until the gradient norm < tolerance."""
    solver = optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=30))
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                       value_fn=fun)
        return optax.apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        grad_norm = otu.tree_norm(otu.tree_get(state, "grad"))
        return (count == 0) | ((count < max_iterations) & (grad_norm >= tolerance))

    params, state = jax.lax.while_loop(keep_going, step, (init, solver.init(init)))
    return params, otu.tree_get(state, "count")


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def _solve_path(x: jax.Array, labels: jax.Array, row_weights: jax.Array, class_mask: jax.Array,
                l2s: jax.Array, tolerance: jax.Array, init: dict[str, jax.Array], *,
                max_iterations: int):
    """Solves for every l2 of `l2s` [G] in order, each solve warm-started from the previous
    one (a regularisation path: give `l2s` in decreasing order), the first from `init`.
    Returns params with a leading [G] axis, iterations [G] and final gradient norms [G]."""
    def one(params, l2):
        def fun(p):
            return objective(p, x, labels, row_weights, l2, class_mask)
        params, count = _lbfgs(fun, params, tolerance, max_iterations)
        return params, (params, count, otu.tree_norm(jax.grad(fun)(params)))
    return jax.lax.scan(one, init, l2s)[1]


def rows_bucket(num_rows: int) -> int:
    """Padded row count: the next power of two, at least MIN_ROWS_BUCKET (fewer compiles)."""
    return max(MIN_ROWS_BUCKET, _next_power_of_two(num_rows))


def classes_bucket(num_classes: int) -> int:
    """Padded class count: the next power of two, at least MIN_CLASSES_BUCKET."""
    return max(MIN_CLASSES_BUCKET, _next_power_of_two(num_classes))


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _padded_columns(values: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """`values` (or zeros) in float32, zero-padded along the last axis to `shape`."""
    out = np.zeros(shape, np.float32)
    if values is not None:
        out[..., :values.shape[-1]] = values
    return out


def _checked_labels(labels: np.ndarray, num_classes: int, field: str) -> np.ndarray:
    labels = np.asarray(labels)
    as_int = labels.astype(np.int64)
    if labels.ndim != 1 or (as_int != labels).any() or (len(labels) and (
            as_int.min() < 0 or as_int.max() >= num_classes)):
        raise UserError(f"{field}: labels must be class indices in [0, {num_classes}); got "
                        f"{np.unique(labels)[:10].tolist()}")
    return as_int


def fit_probe_sets(sets: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int,
                   l2s: Sequence[float], settings: ProbeSettings,
                   inits: Sequence[Probe | None] | None = None) -> list[list[Probe]]:
    """For each training set (features [N, D], labels [N]), one probe per L2 value, in the
    order of `l2s`: one jitted call per set, along a warm-started path from the largest L2
    to the smallest. `inits` (optional, per set) warm-starts the first solve from a probe.

    Sets are solved one after the other, not vmapped: a vmapped while loop runs every member
    until the slowest stops, 5x slower on CPU for k-shot sets (measured)."""
    order = np.argsort(-np.asarray(l2s, np.float64), kind="stable")
    padded_classes = classes_bucket(num_classes)
    class_mask = np.arange(padded_classes) < num_classes
    path_l2s = np.asarray(l2s, np.float32)[order]
    out = []
    for i, (x, labels) in enumerate(sets):
        x = np.asarray(x)
        labels = _checked_labels(labels, num_classes, "labels")
        if x.ndim != 2 or len(x) != len(labels) or not len(x):
            raise ValueError(f"features {x.shape} must be [N, D] with N = {len(labels)} > 0")
        mean, scale = standardizer(x, settings.standardize)
        padded = rows_bucket(len(x))
        xs = np.zeros((padded, x.shape[1]), np.float32)
        xs[:len(x)] = standardized(x, mean, scale)
        ys = np.zeros(padded, np.int32)
        ys[:len(x)] = labels
        row_weights = (np.arange(padded) < len(x)).astype(np.float32)
        start = inits[i] if inits else None
        init = {"w": _padded_columns(None if start is None else start.weights,
                                     (x.shape[1], padded_classes)),
                "b": _padded_columns(None if start is None else start.bias,
                                     (padded_classes,))}
        params, counts, grad_norms = jax.device_get(_solve_path(
            xs, ys, row_weights, class_mask, path_l2s, np.float32(settings.tolerance), init,
            max_iterations=settings.max_iterations))
        probes: list[Probe | None] = [None] * len(l2s)
        for g, original in enumerate(order):
            grad_norm = float(grad_norms[g])
            probes[original] = Probe(
                np.asarray(params["w"][g, :, :num_classes], np.float64),
                np.asarray(params["b"][g, :num_classes], np.float64),
                mean, scale, float(l2s[original]), int(counts[g]), grad_norm,
                grad_norm < settings.tolerance)
        out.append(probes)
    return out


def fit_probes(x: np.ndarray, labels: np.ndarray, num_classes: int, l2s: Sequence[float],
               settings: ProbeSettings, init: Probe | None = None) -> list[Probe]:
    """One probe per L2 value on the same rows (see `fit_probe_sets`)."""
    return fit_probe_sets([(x, labels)], num_classes, l2s, settings, [init])[0]


def select(probes: Sequence[Probe], val_x: np.ndarray, val_labels: np.ndarray
           ) -> tuple[int, list[float]]:
    """Index of the probe with the best validation top-1 (ties: the largest L2) and the
    validation top-1 of each."""
    val_labels = np.asarray(val_labels)
    accuracies = [float(np.mean(np.argmax(p.probabilities(val_x), axis=1) == val_labels))
                  for p in probes]
    best = max(range(len(probes)), key=lambda i: (accuracies[i], probes[i].l2))
    return best, accuracies


def stratified_carve(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of row indices into (train, validation).

    Each class gives round(fraction * n) of its rows to validation (at least one when it has
    two or more, never all), drawn with a generator keyed by (seed, class); both index arrays
    come back sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"config.linear_probe.validation_fraction: must be in (0, 1), got "
                        f"{fraction}")
    labels = np.asarray(labels)
    val = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        take = min(max(int(round(fraction * len(rows))), 1), len(rows) - 1)
        rng = np.random.default_rng([seed, int(c)])
        val.append(rng.permutation(rows)[:take])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def k_shot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k rows per class present (all of a class's rows when it has fewer), sorted; the draw
    is keyed by (seed, k, class), so seeds differ and a seed is reproducible."""
    if k < 1:
        raise UserError(f"config.linear_probe.k_shots: k must be >= 1, got {k}")
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, k, int(c)])
        chosen.append(rng.choice(rows, size=min(k, len(rows)), replace=False))
    return np.sort(np.concatenate(chosen))


def score(probe: Probe, x: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """classification_metrics of the probe's softmax probabilities."""
    return metrics.classification_metrics(probe.probabilities(x), labels)


def _require_validation(val_y: np.ndarray) -> None:
    if not len(val_y):
        raise UserError("config.linear_probe: no validation rows to choose the L2 strength "
                        "(raise validation_fraction or name a validation_split)")


def probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
          test_x: np.ndarray, test_y: np.ndarray, num_classes: int, settings: ProbeSettings,
          refit: bool = True) -> dict[str, Any]:
    """The full-data probe: sweep on validation, refit on train + validation, test metrics.

    Besides the test metrics: ``l2`` (chosen), ``val_top1`` (at it), ``num_train`` (rows of the
    final fit), ``iterations`` and ``converged`` of the final fit.
    """
    test_y = _checked_labels(test_y, num_classes, "test labels")
    _require_validation(val_y)
    candidates = fit_probes(train_x, train_y, num_classes, settings.l2_grid, settings)
    best, val_top1 = select(candidates, val_x, val_y)
    chosen = candidates[best]
    num_train = len(train_y)
    if refit:
        chosen = fit_probes(np.concatenate([train_x, val_x]),
                            np.concatenate([train_y, val_y]), num_classes, [chosen.l2],
                            settings, init=chosen)[0]
        num_train += len(val_y)
    out = score(chosen, test_x, test_y)
    out.update(l2=chosen.l2, val_top1=val_top1[best], num_train=num_train,
               iterations=chosen.iterations, converged=chosen.converged)
    return out


def k_shot_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                 val_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                 settings: ProbeSettings, ks: Sequence[int], seeds: Sequence[int]
                 ) -> dict[str, float]:
    """``k<k>/<metric>_mean`` and ``_std`` (sample std over seeds; 0 for one seed) per k, and
    ``k<k>/num_train`` (rows per fit: k per class, fewer where a class has fewer)."""
    if not seeds:
        raise UserError("config.linear_probe.k_shot_seeds: needs at least one seed")
    test_y = _checked_labels(test_y, num_classes, "test labels")
    _require_validation(val_y)
    draws = [(k, seed, k_shot_indices(train_y, k, seed)) for k in ks for seed in seeds]
    train_y = np.asarray(train_y)
    fits = fit_probe_sets([(train_x[rows], train_y[rows]) for _, _, rows in draws],
                          num_classes, settings.l2_grid, settings)
    per_k: dict[int, dict[str, list[float]]] = {k: {m: [] for m in K_SHOT_METRICS} for k in ks}
    num_train = {}
    for (k, _, rows), candidates in zip(draws, fits):
        best, _ = select(candidates, val_x, val_y)
        result = score(candidates[best], test_x, test_y)
        for m in K_SHOT_METRICS:
            per_k[k][m].append(result[m])
        num_train[k] = int(len(rows))
    out: dict[str, float] = {}
    for k in ks:
        for m, values in per_k[k].items():
            values = np.asarray(values, np.float64)
            out[f"k{k}/{m}_mean"] = float(np.mean(values))
            out[f"k{k}/{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[f"k{k}/num_train"] = num_train[k]
    return out


# --------------------------------------------------------------------------------------------
# A dataset's tasks probed on a model view's features (the `evals/linear_probe.py` protocol)
# --------------------------------------------------------------------------------------------

FEATURE_KINDS = PROBE_FEATURES
FIELD = "config.linear_probe"


class _Identity(nn.Module):
    """Stands in for the projection head to read the image tower's pooled output."""

    @nn.compact
    def __call__(self, x):
        return x


def feature_model(view: model_view.ModelView, kind: str) -> model_view.ModelView:
    """The view model whose `encode_image` returns the requested features."""
    if kind not in FEATURE_KINDS:
        raise UserError(f"{FIELD}.features: {kind!r} is not one of {', '.join(FEATURE_KINDS)}")
    if kind == "projected":
        return view
    return dataclasses.replace(view, model=view.model.clone(image_proj=_Identity()))


def cache_path(cache_dir: str, view: model_view.ModelView, data_dir: str, name: str,
               split: str, kind: str, image_field: str = "image") -> str:
    """``<cache_dir>/<name>-<split>-v<version>-<kind>-step<N>-<hash>.npy``."""
    folder = sources.dataset_dir(data_dir, name)
    version = os.path.basename(folder)
    digest = hashlib.sha1((view.train_config.to_json_best_effort(sort_keys=True)
                           + "\n" + os.path.abspath(folder) + "\n" + image_field
                           ).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.@\-]+", "_", f"{name}-{split}")
    return os.path.join(cache_dir, f"{safe}-v{version}-{kind}-step{view.step}-{digest}.npy")


def split_features(view: model_view.ModelView, data_dir: str, name: str, split: str,
                   kind: str, batch_size: int, cache_dir: str | None,
                   image_field: str = "image") -> np.ndarray:
    """[N, D] features of every record of a split, read from the cache or embedded (and
    cached by process 0; written to a temporary name, then renamed, so never half a file)."""
    num = sources.num_records(data_dir, name, split)
    path = (cache_path(cache_dir, view, data_dir, name, split, kind, image_field)
            if cache_dir else None)
    if path and os.path.exists(path):
        features = np.load(path)
        if features.shape[0] == num:
            return features
    features = model_view.embed_split_images(feature_model(view, kind), data_dir, name, split,
                                         batch_size, image_field=image_field)
    if len(features) != num:
        raise AssertionError(f"embedded {len(features)} images but {name}/{split} has {num}")
    if path and jax.process_index() == 0:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}.npy"
        np.save(tmp, features)
        os.replace(tmp, path)
    return features


def probe_settings_of(lp: LinearProbeSettings) -> ProbeSettings:
    return ProbeSettings(
        l2_grid=tuple(float(v) for v in lp.l2_grid), max_iterations=int(lp.max_iterations),
        tolerance=float(lp.tolerance), standardize=bool(lp.standardize))


def dataset_name(entry: str) -> str:
    if not isinstance(entry, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+(@[A-Za-z0-9_.\-]+)?",
                                                      entry):
        raise UserError(f"{FIELD}.datasets: {entry!r} is not a dataset name 'name[@config]' "
                        f"(no split: the splits are {FIELD}.train_split / validation_split / "
                        f"test_split)")
    return entry


def multiclass_tasks(name: str, meta: dict[str, Any],
                     config: ml_collections.ConfigDict | None = None
                     ) -> dict[str, dict[str, Any]]:
    """The dataset's multi-class tasks (multi-label ones have no single label to probe), with
    the eval config's label-field overrides, exactly as zero-shot scores them."""
    tasks = zero_shot.dataset_tasks(name, meta, config, f"{FIELD}.datasets")
    chosen = {t: task for t, task in tasks.items()
              if zero_shot.task_type(name, t, task) == "multiclass"}
    if not chosen:
        raise UserError(f"{FIELD}.datasets: {name} has no multi-class task to probe")
    return chosen


def split_annotations(data_dir: str, name: str, split: str, tasks: dict[str, Any]
                      ) -> dict[str, np.ndarray]:
    """The label fields the tasks use, and `modality` where the dataset has it."""
    available = set(sources.read_builder(sources.dataset_dir(data_dir, name))
                    .info.features.keys())
    wanted = {zero_shot.label_field(task) for task in tasks.values()}
    missing = sorted(wanted - available)
    if missing:
        raise UserError(f"{FIELD}.datasets: {name} has no label field(s) {', '.join(missing)} "
                        f"(fields: {', '.join(sorted(available))})")
    return sources.load_annotations(data_dir, name, split,
                                    fields=sorted(wanted | ({"modality"} & available)))


def task_rows(task_name: str, task: dict[str, Any], annotations: dict[str, np.ndarray]
              ) -> np.ndarray:
    modalities = annotations.get("modality")
    num = len(next(iter(annotations.values())))
    return zero_shot.task_records(
        task_name, task, None if modalities is None else np.asarray(modalities).astype(str),
        num)


def evaluate_dataset(view: model_view.ModelView, data_dir: str, name: str,
                     config: ml_collections.ConfigDict, cache_dir: str | None
                     ) -> dict[str, dict[str, Any]]:
    lp = config.linear_probe
    name = dataset_name(name)
    probe_settings = probe_settings_of(lp)
    tasks = multiclass_tasks(name, sources.dataset_metadata(data_dir, name), config)
    info = sources.read_builder(sources.dataset_dir(data_dir, name)).info
    splits = set(info.splits.keys())
    image_field = fields.image_field(name, info.features.keys(),
                                     fields.parse_overrides(config.fields))
    carve = not lp.validation_split or lp.validation_split not in splits
    split_names = {"train": lp.train_split, "test": lp.test_split}
    if not carve:
        split_names["val"] = lp.validation_split
    data = {}
    for role, split in split_names.items():
        annotations = split_annotations(data_dir, name, split, tasks)
        features = split_features(view, data_dir, name, split, lp.features,
                                  config.batch_size, cache_dir, image_field)
        data[role] = (annotations, features)
    seeds = [int(lp.seed) + s for s in range(int(lp.k_shot_seeds))]
    results = {}
    for task_name, task in tasks.items():
        num_classes = len(task["class_names"])
        arrays = {}
        for role, (annotations, features) in data.items():
            rows = task_rows(task_name, task, annotations)
            labels = np.asarray(annotations[zero_shot.label_field(task)])[rows]
            arrays[role] = (features[rows], labels)
        if carve:
            x, y = arrays["train"]
            train_idx, val_idx = stratified_carve(y, float(lp.validation_fraction),
                                                               int(lp.seed))
            arrays["train"], arrays["val"] = (x[train_idx], y[train_idx]), (x[val_idx],
                                                                            y[val_idx])
        splits_xy = (*arrays["train"], *arrays["val"], *arrays["test"])
        result = probe(*splits_xy, num_classes, probe_settings,
                                    refit=bool(lp.refit))
        if lp.k_shots:
            result.update(k_shot_probe(*splits_xy, num_classes, probe_settings,
                                                    [int(k) for k in lp.k_shots], seeds))
        result.update(num_classes=num_classes, chance_top1=1.0 / num_classes,
                      num_val=int(len(arrays["val"][1])), val_carved=int(carve))
        results[f"{name}/{lp.test_split}:{task_name}"] = result
    return results


def evaluate(view: model_view.ModelView, data_dir: str,
             config: "ml_collections.ConfigDict | EvalSettings",
             output_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """Every multi-class task of ``config.linear_probe.datasets``: {"<name>/<test>:<task>":
    metrics}. Features are cached in ``linear_probe.cache_dir``, else
    ``<output_dir>/features`` (output_dir: the argument, else ``config.output_dir``), else
    not at all. `config`: the eval config or its parsed `EvalSettings`."""
    config = EvalSettings.from_config(config)
    lp = config.linear_probe
    output_dir = output_dir or config.output_dir
    cache_dir = lp.cache_dir or (os.path.join(output_dir, "features") if output_dir else None)
    results = {}
    for name in lp.datasets:
        results.update(evaluate_dataset(view, data_dir, name, config, cache_dir))
    return results
