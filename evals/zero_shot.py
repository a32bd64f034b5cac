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

`evaluate(loaded, data_dir, config)` is what `evals/run_suite.py` calls in-process.
"""

import json
import os
import sys
from typing import Any, Sequence

import ml_collections
import numpy as np
from absl import flags

from evals import common
from medclip_jax.data import sources
from medclip_jax.errors import UserError
from medclip_jax.evaluation import fields, metrics, model_view, tables, zero_shot

FLAGS = flags.FLAGS
TASK_TYPES = ("multiclass", "multilabel")
PROMPT_KEYS = ("class_names", "templates", "positive_templates", "negative_templates")


def task_records(task_name: str, task: dict[str, Any], modalities: np.ndarray | None,
                 num_records: int) -> np.ndarray:
    """Indices of the records a task is scored on."""
    modality = task.get("modality", task_name)
    if modalities is not None and modality in set(modalities.tolist()):
        return np.flatnonzero(modalities == modality)
    return np.arange(num_records)


def task_type(spec: str, task_name: str, task: dict[str, Any]) -> str:
    kind = task.get("type", "multiclass")
    if kind not in TASK_TYPES:
        raise UserError(f"{spec}: metadata tasks[{task_name!r}].type is {kind!r}; expected "
                        f"{' or '.join(TASK_TYPES)}")
    return kind


def label_field(task: dict[str, Any]) -> str:
    return task.get("label_field", "label")


def read_prompts_file(path: str) -> dict[str, dict[str, list[str]]]:
    """``config.zero_shot.prompts``: {key: {prompt entry: list of strings}}, checked."""
    where = "config.zero_shot.prompts"
    if not path:
        return {}
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{where}: cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: {path} must hold a JSON object keyed by dataset[:task]")
    for key, entry in data.items():
        bad = ([k for k in entry if k not in PROMPT_KEYS] if isinstance(entry, dict)
               else ["(not an object)"])
        lists_ok = isinstance(entry, dict) and all(
            isinstance(v, list) and v and all(isinstance(x, str) for x in v)
            for v in entry.values())
        if bad or not lists_ok:
            raise UserError(f"{where}: {path} entry {key!r} must map some of "
                            f"{', '.join(PROMPT_KEYS)} to non-empty lists of strings")
    return data


def prompt_keys(name: str, task_name: str) -> list[str]:
    """The prompt-file keys that apply to a task, least specific first."""
    dataset = name.split("@", 1)[0]
    keys = [dataset, name, f"{dataset}:{task_name}", f"{name}:{task_name}"]
    return list(dict.fromkeys(keys))


def with_prompts(name: str, task_name: str, task: dict[str, Any],
                 templates: Sequence[str], prompts: dict[str, dict[str, list[str]]]
                 ) -> dict[str, Any]:
    """The task with the eval config's class names / templates in place of the metadata's."""
    task = dict(task)
    if templates and task.get("type", "multiclass") == "multiclass":
        task["templates"] = [str(t) for t in templates]
    for key in prompt_keys(name, task_name):
        task.update(prompts.get(key, {}))
    for key in ("templates", "positive_templates", "negative_templates"):
        for template in task.get(key, []):
            if "{}" not in template:
                raise UserError(f"{name}: task {task_name!r} template {template!r} has no '{{}}' "
                                f"for the class name")
    return task


def check_class_names(name: str, task_name: str, task: dict[str, Any],
                      original: dict[str, Any]) -> None:
    """Overridden class names must keep the metadata's count (labels are indices into them)."""
    key = "class_names" if task.get("type", "multiclass") == "multiclass" else None
    if key is None or len(task.get(key, [])) == len(original.get(key, [])):
        return
    raise UserError(f"config.zero_shot.prompts: {name} task {task_name!r} has "
                    f"{len(original.get(key, []))} classes ({', '.join(original.get(key, []))}), "
                    f"but the override names {len(task[key])}")


def dataset_tasks(name: str, meta: dict[str, Any] | None,
                  config: ml_collections.ConfigDict | None, field: str
                  ) -> dict[str, dict[str, Any]]:
    """The dataset's tasks as the evaluation scores them: metadata tasks with the eval config's
    prompts and label-field overrides applied (each task gets an explicit ``label_field``).
    `field` names the config field for the error when the metadata has no tasks."""
    tasks = (meta or {}).get("tasks")
    if not tasks:
        raise UserError(f"{field}: {name} has no zero-shot tasks (class names and templates) "
                        f"in its metadata")
    config = common.settings(config)
    templates = config.zero_shot.templates
    prompts = read_prompts_file(config.zero_shot.prompts)
    overrides = fields.parse_overrides(config.fields)
    out = {}
    for task_name, task in tasks.items():
        resolved = with_prompts(name, task_name, task, templates, prompts)
        check_class_names(name, task_name, resolved, task)
        if resolved.get("type", "multiclass") == "multiclass":
            resolved["label_field"] = fields.label_field(name, task.get("label_field"),
                                                         overrides)
        out[task_name] = resolved
    return out


def multilabel_task(spec: str, task_name: str, task: dict[str, Any]) -> dict[str, Any]:
    """A multilabel task's entries, checked: labels, class names, column indices, templates."""
    where = f"{spec}: metadata tasks[{task_name!r}]"
    for key in ("label_field", "labels", "positive_templates", "negative_templates"):
        if not task.get(key):
            raise UserError(f"{where} has no {key!r}; a multilabel task needs label_field, "
                            f"labels, positive_templates and negative_templates")
    labels = [str(label) for label in task["labels"]]
    columns = [str(c) for c in task.get("columns", labels)]
    missing = [label for label in labels if label not in columns]
    if missing:
        raise UserError(f"{where}.labels {missing} are not in its columns {columns}")
    class_names = [str(n) for n in task.get("class_names", labels)]
    if len(class_names) != len(labels):
        raise UserError(f"{where}.class_names has {len(class_names)} names for "
                        f"{len(labels)} labels")
    return {"labels": labels, "class_names": class_names,
            "columns": [columns.index(label) for label in labels],
            "num_columns": len(columns), "label_field": label_field(task),
            "positive_templates": list(task["positive_templates"]),
            "negative_templates": list(task["negative_templates"])}


def tied_classes(loaded: model_view.ModelView, class_names: list[str],
                 prompts: list[str]) -> list[list[str]]:
    """Groups of classes whose prompts are identical once tokenised (a class name truncated
    away by the text length): their scores tie, whatever the model."""
    max_len = loaded.train_config.model.text.max_len
    ids, _ = loaded.tokenizer(prompts, max_len)
    per_class = np.asarray(ids).reshape(len(class_names), -1)
    groups: dict[bytes, list[str]] = {}
    for name, row in zip(class_names, per_class):
        groups.setdefault(row.tobytes(), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def class_embeddings(loaded: model_view.ModelView, class_names: list[str],
                     templates: list[str], batch_size: int) -> np.ndarray:
    """[E, C] prompt-ensemble embeddings of the class names (warns when classes tie)."""
    prompts = zero_shot.format_prompts(class_names, templates)
    for names in tied_classes(loaded, class_names, prompts):
        print(f"warning: zero-shot classes {', '.join(names)} have identical prompts after "
              f"tokenisation to config.model.text.max_len="
              f"{loaded.train_config.model.text.max_len} tokens; their scores tie "
              f"(shorter templates via config.zero_shot.templates, or a longer text length)",
              file=sys.stderr, flush=True)
    prompt_emb = model_view.embed_texts(loaded, prompts, batch_size)
    return zero_shot.build_classifier(prompt_emb.reshape(len(class_names), len(templates), -1))


def multiclass_metrics(loaded: model_view.ModelView, task: dict[str, Any], image_emb: np.ndarray,
                       labels: np.ndarray, batch_size: int) -> dict[str, Any]:
    class_names, templates = list(task["class_names"]), list(task["templates"])
    classifier = class_embeddings(loaded, class_names, templates, batch_size)
    scores = np.asarray(zero_shot.zero_shot_scores(image_emb, classifier))
    task_metrics = metrics.classification_metrics(scores, labels)
    task_metrics["num_classes"] = len(class_names)
    task_metrics["chance_top1"] = 1.0 / len(class_names)
    return task_metrics


def multilabel_metrics(loaded: model_view.ModelView, task: dict[str, Any], image_emb: np.ndarray,
                       values: np.ndarray, batch_size: int, uncertain: str) -> dict[str, Any]:
    """`zero_shot.multilabel_auroc` of one checked multilabel task (see `multilabel_task`)."""
    positive = class_embeddings(loaded, task["class_names"], task["positive_templates"],
                                batch_size)
    negative = class_embeddings(loaded, task["class_names"], task["negative_templates"],
                                batch_size)
    scores = zero_shot.multilabel_scores(image_emb, positive, negative)
    return zero_shot.multilabel_auroc(scores, values[:, task["columns"]], task["labels"],
                                      uncertain)


def label_values(annotations: dict[str, np.ndarray], field: str, width: int,
                 spec: str) -> np.ndarray:
    """The [N, width] float label vectors of a multilabel field."""
    values = np.asarray(np.stack(list(annotations[field])) if len(annotations[field]) else
                        np.zeros((0, width)), np.float64)
    if values.ndim != 2 or values.shape[1] != width:
        raise UserError(f"{spec}: field {field!r} has shape {values.shape[1:]}, but the task "
                        f"lists {width} columns")
    return values


def needed_fields(spec: str, tasks: dict[str, Any], available: set[str]) -> list[str]:
    """The annotation fields the tasks read (and ``modality`` where the dataset has it)."""
    wanted = {label_field(t) for t in tasks.values()}
    missing = sorted(wanted - available)
    if missing:
        raise UserError(f"{spec}: its zero-shot tasks read field(s) {', '.join(missing)}, "
                        f"which the dataset does not have (fields: {', '.join(sorted(available))})")
    return sorted(wanted | ({"modality"} & available))


def evaluate_dataset(loaded: model_view.ModelView, data_dir: str, spec: str, batch_size: int,
                     uncertain: str = "exclude",
                     config: ml_collections.ConfigDict | None = None
                     ) -> dict[str, dict[str, Any]]:
    """`spec`'s tasks; `config` (the eval config) supplies prompt and field overrides."""
    entry = sources.parse_mixture(spec, field="config.zero_shot.datasets")[0]
    tasks = dataset_tasks(entry.name, sources.dataset_metadata(data_dir, entry.name), config,
                          "config.zero_shot.datasets")
    kinds = {name: task_type(spec, name, task) for name, task in tasks.items()}
    checked = {name: multilabel_task(spec, name, task) for name, task in tasks.items()
               if kinds[name] == "multilabel"}
    available = set(sources.read_builder(sources.dataset_dir(data_dir, entry.name))
                    .info.features.keys())
    overrides = fields.parse_overrides(common.settings(config).fields)
    image_field = fields.image_field(entry.name, available, overrides)
    annotations = sources.load_annotations(data_dir, entry.name, entry.split,
                                           fields=needed_fields(spec, tasks, available))
    num_records = len(next(iter(annotations.values())))
    image_emb = model_view.embed_split_images(loaded, data_dir, entry.name, entry.split,
                                          batch_size, image_field=image_field)
    if len(image_emb) != num_records:
        raise AssertionError(f"embedded {len(image_emb)} images but {spec} has {num_records}")
    modalities = annotations.get("modality")
    results = {}
    for task_name, task in tasks.items():
        rows = task_records(task_name, task, None if modalities is None
                            else np.asarray(modalities).astype(str), num_records)
        if kinds[task_name] == "multilabel":
            ml = checked[task_name]
            values = label_values(annotations, ml["label_field"], ml["num_columns"], spec)
            results[f"{spec}:{task_name}"] = multilabel_metrics(
                loaded, ml, image_emb[rows], values[rows], batch_size, uncertain)
        else:
            labels = np.asarray(annotations[label_field(task)])
            results[f"{spec}:{task_name}"] = multiclass_metrics(
                loaded, task, image_emb[rows], labels[rows], batch_size)
    return results


def evaluate(loaded: model_view.ModelView, data_dir: str,
             config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """Every task of every dataset in ``config.zero_shot.datasets``: {"<spec>:<task>": metrics}."""
    config = common.settings(config)
    uncertain = config.zero_shot.multilabel_uncertain
    results = {}
    for spec in config.zero_shot.datasets:
        results.update(evaluate_dataset(loaded, data_dir, spec, config.batch_size, uncertain,
                                        config))
    return results


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
    results = evaluate(loaded, data_dir, FLAGS.config)
    common.publish(output_dir, "zero_shot", "Zero-shot classification", loaded.step, results,
                   table(results))


if __name__ == "__main__":
    common.run_binary(run)
