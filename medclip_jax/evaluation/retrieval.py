"""Image->text and text->image retrieval over a whole test set, in similarity tiles.

Positives: an image may have several captions, and one caption string may describe several
images (`build_positives` merges identical strings into one text). A query's rank is

    rank = 1 + #{non-positive candidates scoring strictly higher than its best positive}

so ties between a positive and a negative count in the query's favour. Recall@K is the fraction
of queries with rank <= K; mean and median rank are over the same ranks.

Both directions come from the same tiles ``S = images[a] @ texts[b].T`` of at most
``block_size x block_size``, so memory is bounded by one tile whatever the test set size. Two
passes over the tiles: the first finds each query's best positive score, the second counts the
negatives above it. Scores in both passes come from the same compiled tile function, so a
positive is compared with negatives computed in exactly the same arithmetic.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PAD = -1
DEFAULT_KS = (1, 5, 10, 50, 200)


def _pad_lists(lists: Sequence[Sequence[int]]) -> np.ndarray:
    width = max(1, max((len(x) for x in lists), default=1))
    out = np.full((len(lists), width), PAD, np.int64)
    for i, values in enumerate(lists):
        out[i, :len(values)] = values
    return out


def build_positives(captions_per_image: Sequence[Sequence[str]]
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Unique texts (identical strings after strip() merged) and padded positive index arrays.

    Returns ``(texts, image_positives [Ni, P1], text_positives [Nt, P2])``, -1 padded.
    """
    index_of: dict[str, int] = {}
    texts: list[str] = []
    images_of_text: list[list[int]] = []
    texts_of_image: list[list[int]] = []
    for image, captions in enumerate(captions_per_image):
        if not captions:
            raise ValueError(f"image {image} has no caption: it could never be retrieved")
        mine: list[int] = []
        for caption in captions:
            key = caption.strip()
            if key not in index_of:
                index_of[key] = len(texts)
                texts.append(key)
                images_of_text.append([])
            t = index_of[key]
            if t not in mine:
                mine.append(t)
                images_of_text[t].append(image)
        texts_of_image.append(mine)
    return texts, _pad_lists(texts_of_image), _pad_lists(images_of_text)


def positives_from_pairs(image_of_text: Sequence[int], num_images: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Positive index arrays when text t describes exactly image `image_of_text[t]`."""
    texts_of_image: list[list[int]] = [[] for _ in range(num_images)]
    for t, image in enumerate(image_of_text):
        texts_of_image[int(image)].append(t)
    return _pad_lists(texts_of_image), _pad_lists([[int(i)] for i in image_of_text])


@jax.jit
def _tile_scores(images, texts, image_positives, text_ids, image_valid, text_valid):
    """Similarity tile and its masks: positive pairs, and comparable negative pairs."""
    scores = jnp.dot(images, texts.T, precision=jax.lax.Precision.HIGHEST)
    positive = jnp.any(image_positives[:, :, None] == text_ids[None, None, :], axis=1)
    valid = image_valid[:, None] & text_valid[None, :]
    return scores, positive & valid, ~positive & valid


@jax.jit
def _tile_best_positive(images, texts, image_positives, text_ids, image_valid, text_valid):
    scores, positive, _ = _tile_scores(images, texts, image_positives, text_ids, image_valid,
                                       text_valid)
    masked = jnp.where(positive, scores, -jnp.inf)
    return masked.max(axis=1), masked.max(axis=0)


@jax.jit
def _tile_counts(images, texts, image_positives, text_ids, image_valid, text_valid,
                 image_best, text_best):
    scores, _, negative = _tile_scores(images, texts, image_positives, text_ids, image_valid,
                                       text_valid)
    i2t = jnp.sum((scores > image_best[:, None]) & negative, axis=1, dtype=jnp.int32)
    t2i = jnp.sum((scores > text_best[None, :]) & negative, axis=0, dtype=jnp.int32)
    return i2t, t2i


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _padded_blocks(x: np.ndarray, block: int, fill) -> list[np.ndarray]:
    count = -(-len(x) // block)
    padded = np.full((count * block, *x.shape[1:]), fill, dtype=x.dtype)
    padded[:len(x)] = x
    return [padded[i * block:(i + 1) * block] for i in range(count)]


def retrieval_ranks(image_emb, text_emb, image_positives: np.ndarray,
                    text_positives: np.ndarray, block_size: int = 1024
                    ) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of each image's and each text's best positive (see module docstring)."""
    image_emb, text_emb = _normalize(image_emb), _normalize(text_emb)
    num_images, num_texts = len(image_emb), len(text_emb)
    image_positives = np.asarray(image_positives, np.int32)
    if len(image_positives) != num_images or len(text_positives) != num_texts:
        raise ValueError("positive index arrays do not match the embeddings")
    if (np.asarray(image_positives) == PAD).all(axis=1).any() or \
            (np.asarray(text_positives) == PAD).all(axis=1).any():
        raise ValueError("every image and every text needs at least one positive")
    block = max(1, min(block_size, max(num_images, num_texts)))
    image_blocks = _padded_blocks(image_emb, block, 0.0)
    pos_blocks = _padded_blocks(image_positives, block, PAD)
    image_valid = _padded_blocks(np.ones(num_images, bool), block, False)
    text_blocks = _padded_blocks(text_emb, block, 0.0)
    text_ids = _padded_blocks(np.arange(num_texts, dtype=np.int32), block, -2)
    text_valid = _padded_blocks(np.ones(num_texts, bool), block, False)

    image_best = [np.full(block, -np.inf, np.float32) for _ in image_blocks]
    text_best = [np.full(block, -np.inf, np.float32) for _ in text_blocks]
    for a in range(len(image_blocks)):
        for b in range(len(text_blocks)):
            row, col = _tile_best_positive(image_blocks[a], text_blocks[b], pos_blocks[a],
                                           text_ids[b], image_valid[a], text_valid[b])
            image_best[a] = np.maximum(image_best[a], np.asarray(row))
            text_best[b] = np.maximum(text_best[b], np.asarray(col))

    image_counts = [np.zeros(block, np.int64) for _ in image_blocks]
    text_counts = [np.zeros(block, np.int64) for _ in text_blocks]
    for a in range(len(image_blocks)):
        for b in range(len(text_blocks)):
            i2t, t2i = _tile_counts(image_blocks[a], text_blocks[b], pos_blocks[a], text_ids[b],
                                    image_valid[a], text_valid[b], image_best[a], text_best[b])
            image_counts[a] += np.asarray(i2t)
            text_counts[b] += np.asarray(t2i)
    image_ranks = np.concatenate(image_counts)[:num_images] + 1
    text_ranks = np.concatenate(text_counts)[:num_texts] + 1
    return image_ranks, text_ranks


def recall_summary(ranks: np.ndarray, ks: Sequence[int], prefix: str) -> dict[str, float]:
    out = {f"{prefix}_R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out[f"{prefix}_mean_rank"] = float(np.mean(ranks))
    out[f"{prefix}_median_rank"] = float(np.median(ranks))
    return out


def retrieval_metrics(image_emb, text_emb, image_positives: np.ndarray,
                      text_positives: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
                      block_size: int = 1024, return_ranks: bool = False) -> dict:
    """Recall@K, mean and median rank in both directions (keys ``i2t_R@1``, ``t2i_...``)."""
    image_ranks, text_ranks = retrieval_ranks(image_emb, text_emb, image_positives,
                                              text_positives, block_size)
    out = {**recall_summary(image_ranks, ks, "i2t"), **recall_summary(text_ranks, ks, "t2i"),
           "num_images": int(len(image_ranks)), "num_texts": int(len(text_ranks))}
    if return_ranks:
        out["i2t_ranks"], out["t2i_ranks"] = image_ranks, text_ranks
    return out
