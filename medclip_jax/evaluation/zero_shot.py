"""Zero-shot classification: class embeddings from prompt ensembles, cosine scores.

Multi-class tasks (below) and multi-label tasks (CheXpert-style findings, one positive /
negative prompt pair per label: see "Multi-label" further down).

The CLIP recipe: every class name is put into T templates, each prompt is embedded and
L2-normalised, a class's prompts are averaged and the mean is renormalised. Averaging unit
vectors keeps one long or unusual template from dominating the class direction.

`evaluate(view, data_dir, config)` scores every task of the configured datasets (the task
and prompt rules: `evals/zero_shot.py`); the binary and the training loop both call it.
"""

import json
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medclip_jax import settings
from medclip_jax.data import sources
from medclip_jax.errors import UserError
from medclip_jax.evaluation import embed, fields, metrics, model_view
from medclip_jax.settings import EvalSettings


def format_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """C*T prompts in class-major order (class c's T prompts contiguous).

    This is the order `build_classifier` expects after ``reshape(C, T, E)``. Each template
    holds one ``{}`` for the class name.
    """
    if not class_names or not templates:
        raise UserError("zero-shot task needs at least one class name and one template")
    for template in templates:
        if "{}" not in template:
            raise UserError(f"zero-shot template {template!r} has no '{{}}' for the class name")
    return [template.format(name) for name in class_names for template in templates]


def build_classifier(prompt_embeddings) -> np.ndarray:
    """[C, T, E] prompt embeddings -> [E, C] unit class embeddings (prompt ensemble)."""
    if np.ndim(prompt_embeddings) != 3:
        raise ValueError(f"prompt embeddings must be [C, T, E], got {np.shape(prompt_embeddings)}")
    return embed.unit_vectors(np.mean(embed.unit_vectors(prompt_embeddings), axis=1)).T


def zero_shot_scores(image_emb, classifier) -> np.ndarray:
    """[N, C] cosine similarities of images [N, E] (normalised here) with a [E, C] classifier."""
    if np.ndim(image_emb) != 2 or np.shape(image_emb)[1] != np.shape(classifier)[0]:
        raise ValueError(f"image embeddings {np.shape(image_emb)} do not match classifier "
                         f"{np.shape(classifier)}")
    return embed.unit_vectors(image_emb) @ np.asarray(classifier, np.float32)


# --------------------------------------------------------------------------------------------
# Multi-label (CheXpert-style) zero-shot: one positive / negative prompt pair per label
# --------------------------------------------------------------------------------------------
#
# Each label is scored on its own: the image's cosine with the label's positive prompt
# ensemble ("a chest X-ray showing {}.") minus its cosine with the negative ensemble ("a chest
# X-ray with no {}."). The CheXzero-style probability is the softmax over the two cosines at
# the model's logit scale s, i.e. sigmoid(s * (cos_pos - cos_neg)): a strictly increasing
# function of the difference, so it has the same AUROC. We score AUROC on the difference
# itself, because the float32 sigmoid saturates to exactly 1.0 at s = 100 for differences
# above ~0.17 and would turn distinct scores into ties (`positive_probability` gives the
# probability where one is wanted).
#
# Targets come from the record's label vector: 1 positive, 0 negative, -1 uncertain, NaN not
# mentioned. NaN is always excluded; uncertain is excluded (default), or read as negative
# ("U-Zeros") or positive ("U-Ones") as in the CheXpert paper. A label's AUROC uses only the
# records whose target is known; a label without both classes among them has no AUROC and is
# listed in ``skipped_labels``; ``mean_auroc`` averages the labels that have one.

UNCERTAIN_POLICIES = settings.UNCERTAIN_POLICIES


def multilabel_classifiers(positive_emb, negative_emb) -> tuple[np.ndarray, np.ndarray]:
    """[L, Tp, E] and [L, Tn, E] prompt embeddings -> ([E, L], [E, L]) unit label embeddings."""
    if np.shape(positive_emb)[0] != np.shape(negative_emb)[0]:
        raise ValueError(f"positive {np.shape(positive_emb)} and negative "
                         f"{np.shape(negative_emb)} prompts cover different label counts")
    return build_classifier(positive_emb), build_classifier(negative_emb)


def multilabel_scores(image_emb, positive_classifier, negative_classifier) -> np.ndarray:
    """[N, L] per-label scores cos(image, positive) - cos(image, negative)."""
    return (zero_shot_scores(image_emb, positive_classifier)
            - zero_shot_scores(image_emb, negative_classifier))


def positive_probability(scores, logit_scale: float) -> np.ndarray:
    """softmax([s*cos_pos, s*cos_neg])[0] = sigmoid(s * score): the label's probability."""
    return np.asarray(jax.nn.sigmoid(jnp.float32(logit_scale) * jnp.asarray(scores,
                                                                            jnp.float32)))


def binary_targets(values, uncertain: str = "exclude") -> tuple[np.ndarray, np.ndarray]:
    """Label values [N, L] (1 / 0 / -1 / NaN) -> (targets int8 [N, L], known bool [N, L]).

    Unknown entries get target 0 and known False; callers must mask with `known`.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise UserError(f"config.zero_shot.multilabel_uncertain: {uncertain!r} is not one of "
                        f"{', '.join(UNCERTAIN_POLICIES)}")
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise ValueError(f"label values must be [N, L], got {values.shape}")
    nan = np.isnan(values)
    bad = ~nan & ~np.isin(values, (1.0, 0.0, -1.0))
    if bad.any():
        raise UserError(f"multi-label values must be 1, 0, -1 or NaN; got "
                        f"{np.unique(values[bad])[:5].tolist()}")
    positive = values == 1.0
    known = ~nan & (values != -1.0)
    if uncertain != "exclude":
        known |= values == -1.0
        if uncertain == "positive":
            positive |= values == -1.0
    return (positive & known).astype(np.int8), known


def multilabel_auroc(scores, values, labels: Sequence[str],
                     uncertain: str = "exclude") -> dict:
    """Per-label AUROC of scores [N, L] against label values [N, L] (see the notes above).

    Returns ``auroc/<label>``, ``positives/<label>`` and ``negatives/<label>`` for every label
    with both classes among its known records, ``mean_auroc`` over those (NaN if none),
    ``num_labels`` (how many were scored), ``skipped_labels`` (the others, in label order) and
    ``num_samples`` (records with at least one known target).
    """
    scores = np.asarray(scores, np.float64)
    targets, known = binary_targets(values, uncertain)
    if scores.shape != targets.shape or scores.shape[1] != len(labels):
        raise ValueError(f"scores {scores.shape}, values {targets.shape} and {len(labels)} "
                         f"labels do not match")
    out: dict = {}
    aurocs, skipped = [], []
    for column, label in enumerate(labels):
        rows = known[:, column]
        auroc = metrics.binary_auroc(scores[rows, column], targets[rows, column])
        if np.isnan(auroc):
            skipped.append(label)
            continue
        positives = int(targets[rows, column].sum())
        out[f"auroc/{label}"] = auroc
        out[f"positives/{label}"] = positives
        out[f"negatives/{label}"] = int(rows.sum()) - positives
        aurocs.append(auroc)
    out["mean_auroc"] = float(np.mean(aurocs)) if aurocs else float("nan")
    out["num_labels"] = len(aurocs)
    out["skipped_labels"] = skipped
    out["num_samples"] = int(known.any(axis=1).sum())
    return out


# --------------------------------------------------------------------------------------------
# A dataset's tasks, evaluated on a model view
# --------------------------------------------------------------------------------------------

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
    config = EvalSettings.from_config(config)
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


def tied_classes(view: model_view.ModelView, class_names: list[str],
                 prompts: list[str]) -> list[list[str]]:
    """Groups of classes whose prompts are identical once tokenised (a class name truncated
    away by the text length): their scores tie, whatever the model."""
    max_len = view.train_config.model.text.max_len
    ids, _ = view.tokenizer(prompts, max_len)
    per_class = np.asarray(ids).reshape(len(class_names), -1)
    groups: dict[bytes, list[str]] = {}
    for name, row in zip(class_names, per_class):
        groups.setdefault(row.tobytes(), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def class_embeddings(view: model_view.ModelView, class_names: list[str],
                     templates: list[str], batch_size: int) -> np.ndarray:
    """[E, C] prompt-ensemble embeddings of the class names (warns when classes tie)."""
    prompts = format_prompts(class_names, templates)
    for names in tied_classes(view, class_names, prompts):
        print(f"warning: zero-shot classes {', '.join(names)} have identical prompts after "
              f"tokenisation to config.model.text.max_len="
              f"{view.train_config.model.text.max_len} tokens; their scores tie "
              f"(shorter templates via config.zero_shot.templates, or a longer text length)",
              file=sys.stderr, flush=True)
    prompt_emb = model_view.embed_texts(view, prompts, batch_size)
    return build_classifier(prompt_emb.reshape(len(class_names), len(templates), -1))


def multiclass_metrics(view: model_view.ModelView, task: dict[str, Any], image_emb: np.ndarray,
                       labels: np.ndarray, batch_size: int) -> dict[str, Any]:
    class_names, templates = list(task["class_names"]), list(task["templates"])
    classifier = class_embeddings(view, class_names, templates, batch_size)
    scores = np.asarray(zero_shot_scores(image_emb, classifier))
    task_metrics = metrics.classification_metrics(scores, labels)
    task_metrics["num_classes"] = len(class_names)
    task_metrics["chance_top1"] = 1.0 / len(class_names)
    return task_metrics


def multilabel_metrics(view: model_view.ModelView, task: dict[str, Any], image_emb: np.ndarray,
                       values: np.ndarray, batch_size: int, uncertain: str) -> dict[str, Any]:
    """`multilabel_auroc` of one checked multilabel task (see `multilabel_task`)."""
    positive = class_embeddings(view, task["class_names"], task["positive_templates"],
                                batch_size)
    negative = class_embeddings(view, task["class_names"], task["negative_templates"],
                                batch_size)
    scores = multilabel_scores(image_emb, positive, negative)
    return multilabel_auroc(scores, values[:, task["columns"]], task["labels"], uncertain)


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


def evaluate_dataset(view: model_view.ModelView, data_dir: str, spec: str, batch_size: int,
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
    overrides = fields.parse_overrides(EvalSettings.from_config(config).fields)
    image_field = fields.image_field(entry.name, available, overrides)
    annotations = sources.load_annotations(data_dir, entry.name, entry.split,
                                           fields=needed_fields(spec, tasks, available))
    num_records = len(next(iter(annotations.values())))
    image_emb = model_view.embed_split_images(view, data_dir, entry.name, entry.split,
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
                view, ml, image_emb[rows], values[rows], batch_size, uncertain)
        else:
            labels = np.asarray(annotations[label_field(task)])
            results[f"{spec}:{task_name}"] = multiclass_metrics(
                view, task, image_emb[rows], labels[rows], batch_size)
    return results


def evaluate(view: model_view.ModelView, data_dir: str,
             config: "ml_collections.ConfigDict | EvalSettings") -> dict[str, dict[str, Any]]:
    """Every task of every dataset in ``config.zero_shot.datasets``: {"<spec>:<task>": metrics}.

    `config`: the eval config (`configs/eval.py`) or its parsed `EvalSettings`."""
    config = EvalSettings.from_config(config)
    uncertain = config.zero_shot.multilabel_uncertain
    results = {}
    for spec in config.zero_shot.datasets:
        results.update(evaluate_dataset(view, data_dir, spec, config.batch_size, uncertain,
                                        config))
    return results
