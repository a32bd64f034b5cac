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
padded to a power of two (at least 128) with weight 0, so each (rows bucket, feature dim,
classes, grid length) compiles once, reused by every k-shot draw. Parameters start at zero;
softmax gradients sum to zero over classes, so W's columns and b stay centred (sum over
classes 0), sklearn's symmetric parametrisation.

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
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from medclip_jax.errors import UserError
from medclip_jax.settings import LinearProbeSettings
from medclip_jax.evaluation import metrics

#: Metrics averaged over seeds in k-shot mode.
K_SHOT_METRICS = ("top1", "balanced_accuracy", "macro_f1", "macro_auroc")
MIN_ROWS_BUCKET = 128


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
              row_weights: jax.Array, l2: jax.Array) -> jax.Array:
    """Weighted mean cross-entropy + (l2 / 2) ||W||^2; weight-0 rows are padding."""
    log_probs = jax.nn.log_softmax(x @ params["w"] + params["b"])
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
def _solve_path(x: jax.Array, labels: jax.Array, row_weights: jax.Array, l2s: jax.Array,
                tolerance: jax.Array, init: dict[str, jax.Array], *, max_iterations: int):
    """Solves for every l2 of `l2s` [G] in order, each solve warm-started from the previous
    one (a regularisation path: give `l2s` in decreasing order), the first from `init`.
    Returns params with a leading [G] axis, iterations [G] and final gradient norms [G]."""
    def one(params, l2):
        def fun(p):
            return objective(p, x, labels, row_weights, l2)
        params, count = _lbfgs(fun, params, tolerance, max_iterations)
        return params, (params, count, otu.tree_norm(jax.grad(fun)(params)))
    return jax.lax.scan(one, init, l2s)[1]


def rows_bucket(num_rows: int) -> int:
    """Padded row count: the next power of two, at least MIN_ROWS_BUCKET (fewer compiles)."""
    return max(MIN_ROWS_BUCKET, 1 << max(0, int(num_rows - 1).bit_length()))


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
        init = {"w": np.zeros((x.shape[1], num_classes), np.float32) if start is None
                else start.weights.astype(np.float32),
                "b": np.zeros(num_classes, np.float32) if start is None
                else start.bias.astype(np.float32)}
        params, counts, grad_norms = jax.device_get(_solve_path(
            xs, ys, row_weights, path_l2s, np.float32(settings.tolerance), init,
            max_iterations=settings.max_iterations))
        probes: list[Probe | None] = [None] * len(l2s)
        for g, original in enumerate(order):
            grad_norm = float(grad_norms[g])
            probes[original] = Probe(
                np.asarray(params["w"][g], np.float64), np.asarray(params["b"][g], np.float64),
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
