"""Zero-shot classification: class embeddings from prompt ensembles, cosine scores.

Multi-class tasks (below) and multi-label tasks (CheXpert-style findings, one positive /
negative prompt pair per label: see "Multi-label" further down).

The CLIP recipe: every class name is put into T templates, each prompt is embedded and
L2-normalised, a class's prompts are averaged and the mean is renormalised. Averaging unit
vectors keeps one long or unusual template from dominating the class direction.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medclip_jax import settings
from medclip_jax.errors import UserError
from medclip_jax.evaluation import metrics


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


def _normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """Unit L2 norm along `axis` (zero vectors stay zero instead of becoming NaN)."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def build_classifier(prompt_embeddings) -> np.ndarray:
    """[C, T, E] prompt embeddings -> [E, C] unit class embeddings (prompt ensemble)."""
    if np.ndim(prompt_embeddings) != 3:
        raise ValueError(f"prompt embeddings must be [C, T, E], got {np.shape(prompt_embeddings)}")
    class_emb = _normalize(jnp.mean(_normalize(prompt_embeddings), axis=1))
    return np.asarray(class_emb.T)


def zero_shot_scores(image_emb, classifier) -> np.ndarray:
    """[N, C] cosine similarities of images [N, E] (normalised here) with a [E, C] classifier."""
    if np.ndim(image_emb) != 2 or np.shape(image_emb)[1] != np.shape(classifier)[0]:
        raise ValueError(f"image embeddings {np.shape(image_emb)} do not match classifier "
                         f"{np.shape(classifier)}")
    classifier = jnp.asarray(classifier, jnp.float32)
    return np.asarray(jnp.matmul(_normalize(image_emb), classifier,
                                 precision=jax.lax.Precision.HIGHEST))


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
