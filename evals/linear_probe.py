"""Linear probe of a checkpoint's frozen image features on every configured classification task.

    python -m evals.linear_probe --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]
        [--config.linear_probe.k_shots="()"] [--config.linear_probe.features=backbone]

For each dataset of ``config.linear_probe.datasets`` (``name[@config]``, no split: the splits
are ``train_split`` / ``validation_split`` / ``test_split``) and each multi-class task of its
metadata (the records and labels that `evals/zero_shot.py` scores, so both evaluate the same
task): an L2-regularised multinomial logistic regression on the images' features, fitted in JAX
with full-batch L-BFGS (`medclip_jax/evaluation/linear_probe.py` has the objective, the
standardisation and the protocol). The L2 strength is the best validation top-1 of
``l2_grid``; the validation split is carved from train (stratified, ``validation_fraction``,
seeded by ``seed``) when the dataset has no split named ``validation_split`` (or it is empty).
The chosen strength is refitted on train + validation (``refit``) and scored on test. k-shot:
for k in ``k_shots``, ``k_shot_seeds`` draws of k training images per class, each with its own
L2 choice on validation, no refit; mean and sample std over the draws.

Result key ``<name>/<test_split>:<task>`` (the zero-shot key of the same test set and task).
Metrics: top1, balanced_accuracy, macro_f1, macro_auroc (softmax probabilities as scores),
per_class_recall / per_class_auroc, num_samples, num_classes, chance_top1, l2 (chosen),
val_top1, num_train, num_val, val_carved (1 if carved from train), iterations, converged;
k-shot ``k<k>/<metric>_mean`` / ``_std`` for the four metrics and ``k<k>/num_train``.

Features (``features``): ``projected`` (default) = the pooled image embedding after the
projection head, the joint space that zero-shot and retrieval score, so probe and zero-shot
differ only in the classifier; ``backbone`` = the image tower's pooled output before the
projection head (what the CLIP paper probes for its ViTs). They are cached as ``.npy`` under
``cache_dir`` (default ``<output_dir>/features``), one file per (dataset, split, dataset
version, feature kind, checkpoint step), the file name ending in a hash of the training config
and the dataset folder, so a second run (another k, another grid) does not embed again.

`evaluate(loaded, data_dir, config)` is what `evals/run_suite.py` calls in-process.
"""

import dataclasses
import hashlib
import os
import re
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import flags

from evals import common
from medclip_jax.data import sources
from medclip_jax import settings as settings_lib
from medclip_jax.errors import UserError
from medclip_jax.evaluation import fields, linear_probe, model_view, tables, zero_shot

FLAGS = flags.FLAGS
FEATURE_KINDS = settings_lib.PROBE_FEATURES
FIELD = "config.linear_probe"


class _Identity(nn.Module):
    """Stands in for the projection head to read the image tower's pooled output."""

    @nn.compact
    def __call__(self, x):
        return x


def feature_model(loaded: model_view.ModelView, kind: str) -> model_view.ModelView:
    """The loaded model whose `encode_image` returns the requested features."""
    if kind not in FEATURE_KINDS:
        raise UserError(f"{FIELD}.features: {kind!r} is not one of {', '.join(FEATURE_KINDS)}")
    if kind == "projected":
        return loaded
    return dataclasses.replace(loaded, model=loaded.model.clone(image_proj=_Identity()))


def cache_path(cache_dir: str, loaded: model_view.ModelView, data_dir: str, name: str,
               split: str, kind: str, image_field: str = "image") -> str:
    """``<cache_dir>/<name>-<split>-v<version>-<kind>-step<N>-<hash>.npy``."""
    folder = sources.dataset_dir(data_dir, name)
    version = os.path.basename(folder)
    digest = hashlib.sha1((loaded.train_config.to_json_best_effort(sort_keys=True)
                           + "\n" + os.path.abspath(folder) + "\n" + image_field
                           ).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.@\-]+", "_", f"{name}-{split}")
    return os.path.join(cache_dir, f"{safe}-v{version}-{kind}-step{loaded.step}-{digest}.npy")


def split_features(loaded: model_view.ModelView, data_dir: str, name: str, split: str,
                   kind: str, batch_size: int, cache_dir: str | None,
                   image_field: str = "image") -> np.ndarray:
    """[N, D] features of every record of a split, read from the cache or embedded (and
    cached by process 0; written to a temporary name, then renamed, so never half a file)."""
    num = sources.num_records(data_dir, name, split)
    path = (cache_path(cache_dir, loaded, data_dir, name, split, kind, image_field)
            if cache_dir else None)
    if path and os.path.exists(path):
        features = np.load(path)
        if features.shape[0] == num:
            return features
    features = model_view.embed_split_images(feature_model(loaded, kind), data_dir, name, split,
                                         batch_size, image_field=image_field)
    if len(features) != num:
        raise AssertionError(f"embedded {len(features)} images but {name}/{split} has {num}")
    if path and jax.process_index() == 0:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}.npy"
        np.save(tmp, features)
        os.replace(tmp, path)
    return features


def settings(lp: ml_collections.ConfigDict) -> linear_probe.ProbeSettings:
    return linear_probe.ProbeSettings(
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


def evaluate_dataset(loaded: model_view.ModelView, data_dir: str, name: str,
                     config: ml_collections.ConfigDict, cache_dir: str | None
                     ) -> dict[str, dict[str, Any]]:
    lp = config.linear_probe
    name = dataset_name(name)
    probe_settings = settings(lp)
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
        features = split_features(loaded, data_dir, name, split, lp.features,
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
            train_idx, val_idx = linear_probe.stratified_carve(y, float(lp.validation_fraction),
                                                               int(lp.seed))
            arrays["train"], arrays["val"] = (x[train_idx], y[train_idx]), (x[val_idx],
                                                                            y[val_idx])
        splits_xy = (*arrays["train"], *arrays["val"], *arrays["test"])
        result = linear_probe.probe(*splits_xy, num_classes, probe_settings,
                                    refit=bool(lp.refit))
        if lp.k_shots:
            result.update(linear_probe.k_shot_probe(*splits_xy, num_classes, probe_settings,
                                                    [int(k) for k in lp.k_shots], seeds))
        result.update(num_classes=num_classes, chance_top1=1.0 / num_classes,
                      num_val=int(len(arrays["val"][1])), val_carved=int(carve))
        results[f"{name}/{lp.test_split}:{task_name}"] = result
    return results


def evaluate(loaded: model_view.ModelView, data_dir: str, config: ml_collections.ConfigDict,
             output_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """Every multi-class task of ``config.linear_probe.datasets``: {"<name>/<test>:<task>":
    metrics}. Features are cached in ``linear_probe.cache_dir``, else
    ``<output_dir>/features`` (output_dir: the argument, else ``config.output_dir``, else
    ``<--workdir>/eval``), else not at all."""
    config = common.settings(config)
    lp = config.linear_probe
    output_dir = output_dir or config.output_dir or (
        os.path.join(FLAGS.workdir, "eval") if FLAGS.is_parsed() and FLAGS.workdir else "")
    cache_dir = lp.cache_dir or (os.path.join(output_dir, "features") if output_dir else None)
    results = {}
    for name in lp.datasets:
        results.update(evaluate_dataset(loaded, data_dir, name, config, cache_dir))
    return results


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: the full probe's metrics, then k-shot top-1 (mean ± std) per k."""
    ks = sorted({int(m.split("/")[0][1:]) for r in results.values() for m in r
                 if re.fullmatch(r"k\d+/top1_mean", m)})
    header = ["task", "n", "top1", "chance", "balanced_acc", "macro_f1", "macro_auroc", "l2",
              *[f"{k}-shot top1" for k in ks]]
    rows = [[name, r["num_samples"], r["top1"], r["chance_top1"], r["balanced_accuracy"],
             r["macro_f1"], r["macro_auroc"], f"{r['l2']:.0e}",
             *[f"{r[f'k{k}/top1_mean']:.3f} ± {r[f'k{k}/top1_std']:.3f}"
               if f"k{k}/top1_mean" in r else "" for k in ks]]
            for name, r in results.items()]
    return tables.markdown_table(header, rows)


def run() -> None:
    loaded, data_dir, output_dir = common.load()
    results = evaluate(loaded, data_dir, FLAGS.config, output_dir)
    common.publish(output_dir, "linear_probe", "Linear probe", loaded.step, results,
                   table(results))


if __name__ == "__main__":
    common.run_binary(run)
