"""Zero-shot classification: class embeddings from prompt ensembles, cosine scores."""

from typing import Sequence

import jax.numpy as jnp
import numpy as np


def format_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """C*T prompts in class-major order: class c's T prompts are contiguous."""
    return [template.format(name) for name in class_names for template in templates]


def _normalize(x, axis: int = -1):
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def build_classifier(prompt_embeddings) -> np.ndarray:
    """[C, T, E] prompt embeddings -> [E, C]: mean of unit prompt vectors, renormalised."""
    class_emb = _normalize(jnp.mean(_normalize(prompt_embeddings), axis=1))
    return np.asarray(class_emb.T)


def zero_shot_scores(image_emb, classifier) -> np.ndarray:
    """[N, C] cosine similarities between images and class embeddings."""
    return np.asarray(_normalize(image_emb) @ jnp.asarray(classifier, jnp.float32))
