"""Zero-shot classification of a checkpoint on every task of the configured datasets.

    python -m evals.zero_shot --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]

Each dataset's metadata names its tasks with their class names and modality-appropriate prompt
templates. A task covers the records whose ``modality`` equals the task's ``modality`` entry (or
the task's name, when that is one of the dataset's modalities), else every record. Class
embeddings are prompt ensembles; scores are cosines; the prediction is the argmax, also for
two-class tasks.
"""

from typing import Any

import numpy as np
from absl import flags

from evals import common
from medclip_jax.data import sources
from medclip_jax.errors import UserError
from medclip_jax.evaluation import metrics, runner, zero_shot

FLAGS = flags.FLAGS


def task_records(task_name: str, task: dict[str, Any], modalities: np.ndarray | None,
                 num_records: int) -> np.ndarray:
    """Indices of the records a task is scored on."""
    modality = task.get("modality", task_name)
    if modalities is not None and modality in set(modalities.tolist()):
        return np.flatnonzero(modalities == modality)
    return np.arange(num_records)


def evaluate_dataset(loaded: runner.LoadedModel, data_dir: str, spec: str,
                     batch_size: int) -> dict[str, dict[str, Any]]:
    entry = sources.parse_mixture(spec, field="config.zero_shot.datasets")[0]
    meta = sources.dataset_metadata(data_dir, entry.name)
    tasks = (meta or {}).get("tasks")
    if not tasks:
        raise UserError(f"config.zero_shot.datasets: {spec} has no zero-shot tasks "
                        f"(class names and templates) in its metadata")
    annotations = sources.load_annotations(data_dir, entry.name, entry.split)
    image_emb = runner.embed_split_images(loaded, data_dir, entry.name, entry.split,
                                          batch_size)
    labels = np.asarray(annotations["label"])
    modalities = annotations.get("modality")
    if len(image_emb) != len(labels):
        raise AssertionError(f"embedded {len(image_emb)} images but {spec} has {len(labels)}")
    results = {}
    for task_name, task in tasks.items():
        rows = task_records(task_name, task, None if modalities is None
                            else np.asarray(modalities).astype(str), len(labels))
        class_names, templates = list(task["class_names"]), list(task["templates"])
        prompts = zero_shot.format_prompts(class_names, templates)
        prompt_emb = runner.embed_texts(loaded, prompts, batch_size)
        classifier = zero_shot.build_classifier(
            prompt_emb.reshape(len(class_names), len(templates), -1))
        scores = np.asarray(zero_shot.zero_shot_scores(image_emb[rows], classifier))
        task_metrics = metrics.classification_metrics(scores, labels[rows])
        task_metrics["num_classes"] = len(class_names)
        task_metrics["chance_top1"] = 1.0 / len(class_names)
        results[f"{spec}:{task_name}"] = task_metrics
    return results


def run() -> None:
    loaded, data_dir, output_dir = common.load()
    config = FLAGS.config
    results = {}
    for spec in config.zero_shot.datasets:
        results.update(evaluate_dataset(loaded, data_dir, spec, config.batch_size))
    header = ["task", "n", "top1", "chance", "balanced_acc", "macro_f1", "macro_auroc"]
    rows = [[name, r["num_samples"], r["top1"], r["chance_top1"], r["balanced_accuracy"],
             r["macro_f1"], r["macro_auroc"]] for name, r in results.items()]
    table = runner.markdown_table(header, rows)
    common.publish(output_dir, "zero_shot", "Zero-shot classification", loaded.step, results, table)


if __name__ == "__main__":
    common.run_binary(run)
