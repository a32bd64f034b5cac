"""Zero-shot classification of a checkpoint on every task of the configured datasets.

    python -m evals.zero_shot --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]

Each dataset's metadata names its tasks (``metadata["tasks"][<task name>]``). A task covers the
records whose ``modality`` equals the task's ``modality`` entry (or the task's name, when that
is one of the dataset's modalities), else every record. Two task types:

``"type": "multiclass"`` (the default when ``type`` is absent)::

    {"class_names": [...], "templates": ["a chest x-ray showing {}.", ...]}

  labels from the record field ``label`` (or the task's ``label_field``), class indices into
  ``class_names``. Class embeddings are prompt ensembles; scores are cosines; the prediction
  is the argmax, also for two-class tasks. Metrics: top1, balanced_accuracy, macro_f1,
  macro_auroc, num_samples, num_classes, chance_top1.

``"type": "multilabel"`` (CheXpert-style findings: several labels per image, each present,
absent, uncertain or not mentioned)::

    {"type": "multilabel",
     "label_field": "chexpert",            # record field: float [L_all] of 1 / 0 / -1 / NaN
                                           #   (required)
     "columns": ["Atelectasis", ...],      # that field's column names, in order (optional:
                                           #   default = labels)
     "labels": ["Atelectasis", ...],       # the columns scored (a subset, in any order)
     "class_names": ["atelectasis", ...],  # natural-language name per label (default: labels)
     "positive_templates": ["a chest X-ray showing {}.", ...],
     "negative_templates": ["a chest X-ray with no {}.", ...]}

  Each label gets a positive and a negative prompt ensemble; its score is
  cos(image, positive) - cos(image, negative), which orders images exactly as the softmax
  over the pair at the model's logit scale does (see medclip_jax/evaluation/zero_shot.py).
  Metrics: ``auroc/<label>`` over the records whose target is known, ``mean_auroc`` over the
  labels with both classes present, ``skipped_labels`` (labels with one class only),
  ``positives/<label>``, ``negatives/<label>``, ``num_labels``, ``num_samples``. NaN (not
  mentioned) is never a target; -1 (uncertain) is excluded, or read as negative or positive
  with ``--config.zero_shot.multilabel_uncertain=exclude|negative|positive``.

Fields: images from ``image``, labels from each task's ``label_field`` (else ``label``), both
overridable per dataset with ``config.fields`` (`medclip_jax/evaluation/fields.py`); never the
training config's fields.

Prompts: the class names and templates come from the dataset's metadata unless the eval config
overrides them, so prompt sets can be compared without rebuilding a dataset:

* ``config.zero_shot.templates``: templates for every multi-class task (``()`` = the
  metadata's), e.g. ``--config.zero_shot.templates="('a photo of {}.',)"``;
* ``config.zero_shot.prompts``: a JSON file ``{key: {"class_names": [...], "templates": [...],
  "positive_templates": [...], "negative_templates": [...]}}`` (any subset of the entries),
  where ``key`` is ``dataset``, ``dataset@config``, ``dataset:task`` or
  ``dataset@config:task``; more specific keys win, and the file wins over
  ``zero_shot.templates``. Class names must keep the metadata's number and order (labels index
  them).

The evaluation itself is `medclip_jax.evaluation.zero_shot.evaluate(view, data_dir, config)`,
which `evals/run_suite.py` and training (``config.eval.evaluators``) call too.
"""

from typing import Any

from absl import flags

from evals import common
from medclip_jax.evaluation import tables, zero_shot

FLAGS = flags.FLAGS


def is_multilabel(result: dict[str, Any]) -> bool:
    return "mean_auroc" in result


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: the multi-class tasks' table, then the multi-label tasks' (where any)."""
    parts = []
    multiclass = {k: r for k, r in results.items() if not is_multilabel(r)}
    multilabel = {k: r for k, r in results.items() if is_multilabel(r)}
    if multiclass or not multilabel:
        header = ["task", "n", "top1", "chance", "balanced_acc", "macro_f1", "macro_auroc"]
        rows = [[name, r["num_samples"], r["top1"], r["chance_top1"], r["balanced_accuracy"],
                 r["macro_f1"], r["macro_auroc"]] for name, r in multiclass.items()]
        parts.append(tables.markdown_table(header, rows))
    for name, r in multilabel.items():
        labels = [k.split("/", 1)[1] for k in r if k.startswith("auroc/")]
        rows = [[label, r[f"positives/{label}"], r[f"negatives/{label}"], r[f"auroc/{label}"]]
                for label in labels]
        rows.append(["**mean**", "", "", r["mean_auroc"]])
        skipped = ", ".join(r["skipped_labels"]) or "none"
        parts.append(f"{name} (multi-label, {r['num_samples']} images; labels with one class "
                     f"only, not scored: {skipped})\n\n"
                     + tables.markdown_table(["label", "positives", "negatives", "auroc"], rows))
    return "\n\n".join(parts)


def run() -> None:
    loaded, data_dir, output_dir = common.load()
    results = zero_shot.evaluate(loaded, data_dir, FLAGS.config)
    common.publish(output_dir, "zero_shot", "Zero-shot classification", loaded.step, results,
                   table(results))


if __name__ == "__main__":
    common.run_binary(run)
