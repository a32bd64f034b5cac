"""Zero-shot classification: class embeddings from prompt ensembles, cosine scores.

The CLIP recipe: every class name is put into T templates, each prompt is embedded and
L2-normalised, a class's prompts are averaged and the mean is renormalised. Averaging unit
vectors keeps one long or unusual template from dominating the class direction.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medclip_jax.errors import UserError


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
