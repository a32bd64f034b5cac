"""Linear probe: the JAX L-BFGS fit against scikit-learn, the sweep, the carve, k-shot draws,
the feature cache and the binary end to end on a tiny checkpoint."""

import dataclasses
import json
import os

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from configs import eval as eval_config
from conftest import tiny_config
from helpers import run, subprocess_env
from medclip_jax.errors import UserError
from medclip_jax.evaluation import linear_probe as lp

# Every pure test fits 24-dim features, 6 classes, 2000 iterations at most, and at most 128 or
# 257-512 rows: two compilations of the solve for the whole group.
TIGHT = lp.ProbeSettings(max_iterations=2000, tolerance=1e-6, standardize=False)
SCALED = lp.ProbeSettings(max_iterations=2000, tolerance=1e-6, standardize=True)


def blobs(num: int, num_classes: int = 6, dim: int = 24, seed: int = 0, spread: float = 2.2):
    """Overlapping gaussian blobs (accuracy well below 1), offset, features of unequal scale
    (moderately: the raw-feature comparisons need an optimum both solvers reach)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim))
    labels = np.arange(num) % num_classes
    rng.shuffle(labels)
    x = centers[labels] + spread * rng.normal(size=(num, dim))
    x = x * rng.uniform(0.5, 2.0, size=dim) + rng.normal(size=dim) * 0.5
    return x, labels  # float64: sklearn fits float32 input in float32, less exactly


def mean_objective(x, y, weights, bias, l2):
    """The mean-loss objective in float64 numpy (an independent evaluation)."""
    logits = x.astype(np.float64) @ weights + bias
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(y)), y].mean() + 0.5 * l2 * np.sum(weights ** 2)


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_fit_matches_sklearn_logistic_regression(c):
    x, y = blobs(900)
    train, test = slice(0, 500), slice(500, None)
    l2 = lp.sklearn_l2(c, 500)
    probe = lp.fit_probes(x[train], y[train], 6, [l2], TIGHT)[0]
    ref = LogisticRegression(C=c, max_iter=10_000, tol=1e-10).fit(x[train], y[train])

    ours = np.mean(np.argmax(probe.probabilities(x[test]), axis=1) == y[test])
    theirs = ref.score(x[test], y[test])
    assert 0.4 < theirs < 0.95  # a real-ish problem, not separable
    assert abs(ours - theirs) <= 0.01
    assert probe.converged
    # Measured: coefficients within 5e-6 of sklearn's (relative to the largest), objective
    # within 2e-11, probabilities within 1e-5.
    np.testing.assert_allclose(probe.weights, ref.coef_.T, rtol=0,
                               atol=1e-4 * np.abs(ref.coef_).max())
    centred = ref.intercept_ - ref.intercept_.mean()  # the loss ignores a shift of b
    np.testing.assert_allclose(probe.bias, centred, atol=5e-4)
    ours_loss = mean_objective(x[train], y[train], probe.weights, probe.bias, l2)
    ref_loss = mean_objective(x[train], y[train], ref.coef_.T, ref.intercept_, l2)
    assert ours_loss == pytest.approx(ref_loss, rel=1e-8)
    np.testing.assert_allclose(probe.probabilities(x[test]), ref.predict_proba(x[test]),
                               atol=2e-4)


def test_standardized_fit_matches_scaler_pipeline():
    x, y = blobs(700, seed=3)
    x = x * np.linspace(0.1, 10, 24) + 5  # scaling makes a difference
    c = 0.1
    probe = lp.fit_probes(x[:500], y[:500], 6, [lp.sklearn_l2(c, 500)], SCALED)[0]
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=10_000, tol=1e-10))
    ref.fit(x[:500], y[:500])
    np.testing.assert_allclose(probe.probabilities(x[500:]), ref.predict_proba(x[500:]),
                               atol=2e-4)
    assert abs(np.mean(np.argmax(probe.probabilities(x[500:]), 1) == y[500:])
               - ref.score(x[500:], y[500:])) <= 0.01


@pytest.mark.parametrize("num_classes", [6, 11])
def test_padding_rows_and_classes_do_not_change_the_fit(num_classes):
    """300 rows are padded to 512 with weight 0 and 6 (11) classes to 8 (16) masked ones:
    same optimum as sklearn on the 300 rows and the real classes."""
    x, y = blobs(300, num_classes=num_classes, seed=5)
    assert lp.rows_bucket(300) == 512 and lp.rows_bucket(5) == lp.MIN_ROWS_BUCKET
    assert lp.classes_bucket(2) == lp.classes_bucket(6) == 8 and lp.classes_bucket(11) == 16
    probe = lp.fit_probes(x, y, num_classes, [lp.sklearn_l2(0.5, 300)], TIGHT)[0]
    assert probe.weights.shape == (24, num_classes) and probe.bias.shape == (num_classes,)
    ref = LogisticRegression(C=0.5, max_iter=10_000, tol=1e-10).fit(x, y)
    np.testing.assert_allclose(probe.weights, ref.coef_.T,
                               atol=1e-4 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(probe.bias, ref.intercept_,
                               atol=1e-4 * np.abs(ref.intercept_).max())


def test_sweep_picks_the_best_validation_l2_and_refits_on_train_plus_validation():
    x, y = blobs(900, seed=1, spread=3.0)
    train, val, test = slice(0, 300), slice(300, 500), slice(500, None)
    grid = (1e-4, 1e-2, 1e-1, 3.0)
    settings = dataclasses.replace(SCALED, l2_grid=grid)
    # Independent reference: sklearn on standardised train rows, C = 1 / (l2 N).
    scaler = StandardScaler().fit(x[train])
    val_acc = [LogisticRegression(C=1 / (l2 * 300), max_iter=10_000, tol=1e-10)
               .fit(scaler.transform(x[train]), y[train])
               .score(scaler.transform(x[val]), y[val]) for l2 in grid]
    assert len(set(val_acc)) > 1
    best = max(range(len(grid)), key=lambda i: (val_acc[i], grid[i]))
    result = lp.probe(x[train], y[train], x[val], y[val], x[test], y[test], 6, settings)
    assert result["l2"] == grid[best]
    assert result["val_top1"] == pytest.approx(val_acc[best], abs=0.01)
    assert result["num_train"] == 500 and result["num_samples"] == 400
    ref = make_pipeline(StandardScaler(), LogisticRegression(
        C=1 / (grid[best] * 500), max_iter=10_000, tol=1e-10)).fit(x[:500], y[:500])
    assert abs(result["top1"] - ref.score(x[test], y[test])) <= 0.01
    from sklearn.metrics import roc_auc_score
    assert result["macro_auroc"] == pytest.approx(
        roc_auc_score(y[test], ref.predict_proba(x[test]), multi_class="ovr"), abs=0.01)


def test_warm_started_path_reaches_each_cold_fit():
    """The grid is solved as a path, largest L2 first, each warm-started: same optima."""
    x, y = blobs(900, seed=1, spread=3.0)
    grid = (1e-4, 1e-2, 1e-1, 3.0)
    path = lp.fit_probes(x[:300], y[:300], 6, grid, SCALED)
    for l2, probe in zip(grid, path):
        cold = lp.fit_probes(x[:300], y[:300], 6, [l2], SCALED)[0]
        assert probe.l2 == l2 and probe.converged and cold.converged
        np.testing.assert_allclose(probe.weights, cold.weights,
                                   atol=1e-3 * np.abs(cold.weights).max())


def test_select_breaks_ties_toward_the_larger_l2():
    x, y = blobs(120, seed=2, spread=0.1)  # separable: every l2 is perfect on validation
    probes = lp.fit_probes(x[:60], y[:60], 6, (1e-3, 1e-1), SCALED)
    best, accuracies = lp.select(probes, x[60:], y[60:])
    assert accuracies == [1.0, 1.0] and best == 1


def test_stratified_carve_is_deterministic_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), [50, 30, 11, 2])
    np.random.default_rng(0).shuffle(labels)
    train, val = lp.stratified_carve(labels, 0.2, seed=7)
    again = lp.stratified_carve(labels, 0.2, seed=7)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(val, again[1])
    assert not set(train) & set(val)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(93))
    assert [int(np.sum(labels[val] == c)) for c in range(4)] == [10, 6, 2, 1]
    other = lp.stratified_carve(labels, 0.2, seed=8)[1]
    assert not np.array_equal(val, other)
    with pytest.raises(UserError, match="validation_fraction"):
        lp.stratified_carve(labels, 1.0, seed=0)


def test_k_shot_draws_exactly_k_per_class_and_seeds_differ():
    labels = np.repeat(np.arange(5), 40)
    draws = {}
    for seed in range(5):
        rows = lp.k_shot_indices(labels, 4, seed)
        assert np.bincount(labels[rows], minlength=5).tolist() == [4] * 5
        assert len(np.unique(rows)) == 20
        np.testing.assert_array_equal(rows, lp.k_shot_indices(labels, 4, seed))
        draws[seed] = tuple(rows)
    assert len(set(draws.values())) == 5
    short = np.array([0] * 10 + [1] * 2)
    assert np.bincount(short[lp.k_shot_indices(short, 4, 0)]).tolist() == [4, 2]


def test_k_shot_probe_reports_mean_and_std_per_k():
    x, y = blobs(900, seed=4, spread=1.5)
    settings = dataclasses.replace(SCALED, l2_grid=(1e-3, 1e-1), tolerance=1e-4)
    out = lp.k_shot_probe(x[:300], y[:300], x[300:500], y[300:500], x[500:], y[500:], 6,
                          settings, ks=(1, 16), seeds=(0, 1, 2))
    for k in (1, 16):
        for metric in lp.K_SHOT_METRICS:
            assert f"k{k}/{metric}_mean" in out and out[f"k{k}/{metric}_std"] >= 0
    assert out["k1/num_train"] == 6 and out["k16/num_train"] == 96
    assert out["k16/top1_mean"] > out["k1/top1_mean"] > 1 / 6


def test_settings_reject_impossible_values():
    with pytest.raises(UserError, match="l2_grid"):
        lp.ProbeSettings(l2_grid=())
    with pytest.raises(UserError, match="max_iterations"):
        lp.ProbeSettings(max_iterations=0)


# --- on a tiny checkpoint ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_workdir(tiny_data_dir, tmp_path_factory) -> str:
    """A 2-step tiny CLIP checkpoint (trained in-process, shared by this module)."""
    from medclip_jax import train
    workdir = str(tmp_path_factory.mktemp("lp_run"))
    train.train_and_evaluate(tiny_config(tiny_data_dir, max_steps=2,
                                         **{"eval.every_steps": 0}), workdir)
    return workdir


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> str:
    """One feature cache for the module: the binary's test reads what the first test wrote."""
    return str(tmp_path_factory.mktemp("lp_out"))


@pytest.mark.slow
def test_features_are_cached_and_a_second_run_does_not_embed(tiny_data_dir, tiny_workdir,
                                                             feature_cache, monkeypatch):
    from medclip_jax.evaluation import linear_probe as lp_eval
    from medclip_jax.evaluation import model_view
    loaded = model_view.from_checkpoint(tiny_workdir)
    config = eval_config.get_config("tiny")
    config.linear_probe.k_shots = (1,)
    calls = []
    real = model_view.embed_split_images

    def counting(loaded_model, data_dir, name, split, batch_size, **kwargs):
        calls.append(split)
        return real(loaded_model, data_dir, name, split, batch_size, **kwargs)

    monkeypatch.setattr(model_view, "embed_split_images", counting)
    first = lp_eval.evaluate(loaded, tiny_data_dir, config, feature_cache)
    assert sorted(calls) == ["test", "train", "validation"]
    cache_dir = os.path.join(feature_cache, "features")
    cached = sorted(os.listdir(cache_dir))
    assert len(cached) == 3 and all(f"-projected-step{loaded.step}-" in f for f in cached)
    assert all("-v1.0.0-" in f for f in cached)
    second = lp_eval.evaluate(loaded, tiny_data_dir, config, feature_cache)
    assert len(calls) == 3
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)

    # Another feature kind is another cache entry; for a linear head, projected = backbone @ W.
    name = "synthetic_medical@tiny"
    backbone = lp_eval.split_features(loaded, tiny_data_dir, name, "test", "backbone", 16,
                                      cache_dir)
    assert len(calls) == 4 and len(os.listdir(cache_dir)) == 4
    projected = lp_eval.split_features(loaded, tiny_data_dir, name, "test", "projected", 16,
                                       cache_dir)
    assert len(calls) == 4
    kernel = np.asarray(loaded.params["image_proj"]["kernel"])
    np.testing.assert_allclose(backbone @ kernel, projected, rtol=1e-4, atol=1e-4)

    assert set(first) == {f"{name}/test:chest_xray", f"{name}/test:histopathology"}
    chest = first[f"{name}/test:chest_xray"]
    assert chest["num_samples"] == 24 and chest["num_classes"] == 5
    assert chest["num_train"] == 48 + 16 and chest["val_carved"] == 0
    assert {"top1", "balanced_accuracy", "macro_f1", "macro_auroc", "k1/top1_mean",
            "k1/macro_auroc_std"} <= set(chest)


@pytest.mark.slow
def test_validation_is_carved_when_the_dataset_has_no_such_split(tiny_data_dir, tiny_workdir,
                                                                feature_cache):
    from medclip_jax.evaluation import linear_probe as lp_eval
    from medclip_jax.evaluation import model_view
    loaded = model_view.from_checkpoint(tiny_workdir)
    config = eval_config.get_config("tiny")
    config.linear_probe.validation_split = "dev"
    config.linear_probe.k_shots = ()
    result = lp_eval.evaluate(loaded, tiny_data_dir, config, feature_cache)
    chest = result["synthetic_medical@tiny/test:chest_xray"]
    assert chest["val_carved"] == 1 and chest["num_val"] == 10  # 48 rows, 5 classes, 20 %
    assert chest["num_train"] == 48 and not any(k.startswith("k1/") for k in chest)
    config.linear_probe.datasets = ("synthetic_medical@tiny/train",)
    with pytest.raises(UserError, match="config.linear_probe.datasets"):
        lp_eval.evaluate(loaded, tiny_data_dir, config, feature_cache)
    config.linear_probe.datasets = ("synthetic_medical@tiny",)
    config.linear_probe.features = "pooled"
    with pytest.raises(UserError, match="config.linear_probe.features"):
        lp_eval.evaluate(loaded, tiny_data_dir, config, feature_cache)


@pytest.mark.slow
def test_binary_end_to_end_on_a_tiny_checkpoint(tiny_data_dir, tiny_workdir, feature_cache):
    """The real binary; it reads the features cached by the first test when that ran."""
    cache_dir = os.path.join(feature_cache, "features")
    result = run([os.sys.executable, "-m", "evals.linear_probe", "--workdir", tiny_workdir,
                  "--config", "configs/eval.py:tiny", f"--config.data_dir={tiny_data_dir}",
                  f"--config.linear_probe.cache_dir={cache_dir}"],
                 subprocess_env(num_devices=2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Linear probe, checkpoint step 2" in result.stdout and "1-shot top1" in result.stdout
    written = json.load(open(os.path.join(tiny_workdir, "eval", "linear_probe_step2.json")))
    assert written["step"] == 2
    for task in ("chest_xray", "histopathology"):
        metrics = written["results"][f"synthetic_medical@tiny/test:{task}"]
        assert 0 <= metrics["top1"] <= 1 and "k2/top1_std" in metrics
    assert os.path.exists(os.path.join(tiny_workdir, "eval", "linear_probe_step2.md"))
