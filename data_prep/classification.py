"""The record schema and metadata every classification dataset shares (zero-shot + linear probe).

Records: ``id``, ``image``, ``label`` (a ClassLabel over the prompt-ready class names),
``class_name`` (that name), ``source_label`` (the publisher's own label string, e.g. "ADI"),
plus a builder's extra fields (patient / lesion / slide ids, ...).

Metadata (``info.metadata``): ``tasks`` = {task: {class_names, templates}} as the zero-shot
binary reads it, ``source_labels`` (publisher label -> class index), ``split_rule`` (how the
splits were made: official, or the deterministic rule with its seed), ``source``.

Prompt templates are per imaging modality; ``{}`` takes a class name. They follow the style of
the templates published with medical CLIP models (radiology: "a chest X-ray showing {}.";
pathology: "an H&E image of {}.") and are stored with the data so a benchmark run is
reproducible from the dataset folder alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow_datasets as tfds

from data_prep import core

TEMPLATES: dict[str, list[str]] = {
    "histopathology": [
        "an H&E image of {}.",
        "an H&E stained image of {}.",
        "a histopathology image of {}.",
        "a histopathological image showing {}.",
        "a microscopy image of {} tissue.",
        "a pathology slide showing {}.",
    ],
    "dermatology": [
        "a dermoscopic image of {}.",
        "a dermatoscopy image showing {}.",
        "a clinical photograph of a skin lesion with {}.",
        "a close-up photo of {} on the skin.",
        "a skin lesion diagnosed as {}.",
    ],
    "chest_xray": [
        "a chest X-ray showing {}.",
        "a chest radiograph with {}.",
        "a frontal chest X-ray with findings of {}.",
        "a pediatric chest X-ray showing {}.",
    ],
    "retinal_oct": [
        "an optical coherence tomography image of the retina showing {}.",
        "a retinal OCT scan with {}.",
        "an OCT image of {}.",
    ],
    "fundus": [
        "a retinal fundus photograph with {}.",
        "a fundus image showing {}.",
        "a color fundus photo of an eye with {}.",
    ],
    "breast_ultrasound": [
        "a breast ultrasound image showing a {} lesion.",
        "an ultrasound of the breast with {} findings.",
        "a breast sonogram of a {} tumour.",
    ],
    "blood_cell": [
        "a microscopy image of a {}.",
        "a blood smear showing a {}.",
        "a peripheral blood cell image of a {}.",
    ],
    "kidney_cell": [
        "a microscopy image of kidney cortex cells: {}.",
        "a kidney tissue image of {}.",
        "a fluorescence microscopy image of {} in the kidney.",
    ],
    "abdominal_ct": [
        "a CT image of the {}.",
        "an abdominal CT scan showing the {}.",
        "a computed tomography slice of the {}.",
    ],
}


def templates(modality: str) -> list[str]:
    if modality not in TEMPLATES:
        raise KeyError(f"no prompt templates for modality {modality!r}; have {', '.join(TEMPLATES)}")
    return list(TEMPLATES[modality])


def label_features(class_names: Sequence[str]) -> dict[str, tfds.features.FeatureConnector]:
    return {"label": tfds.features.ClassLabel(names=list(class_names)),
            "class_name": tfds.features.Text(),
            "source_label": tfds.features.Text()}


def task_metadata(task: str, class_names: Sequence[str], template_list: Sequence[str],
                  source_labels: dict[str, int], split_rule: str, source: str,
                  **extra: Any) -> dict[str, Any]:
    return {"tasks": {task: {"class_names": list(class_names),
                             "templates": list(template_list)}},
            "source_labels": dict(source_labels), "split_rule": split_rule,
            "source": source, **extra}


def label_fields(class_names: Sequence[str], source_labels: dict[str, int],
                 source_label: str) -> dict[str, Any]:
    """The label fields of one record; `source_label` must be a key of `source_labels`."""
    index = source_labels[source_label]
    return {"label": index, "class_name": class_names[index], "source_label": source_label}


def add_labelled(scan: core.Scan, split: str, item_id: str, image: Any, where: str,
                 class_names: Sequence[str], source_labels: dict[str, int], source_label: str,
                 **extra: Any) -> None:
    """Adds an item, or rejects it (``unknown_label``) when its label is not a known one."""
    if source_label not in source_labels:
        scan.reject(split, item_id, where, "unknown_label",
                    f"label {source_label!r} is not one of {', '.join(source_labels)}")
        return
    scan.add(core.Item(split, item_id, image,
                       {**label_fields(class_names, source_labels, source_label), **extra},
                       path=where))
