"""Image->text and text->image retrieval over a whole test set, in similarity tiles on device.

Positives: an image may have several captions, and one caption string may describe several
images (`build_positives` merges identical strings into one text query). They come as two
-1-padded index arrays: ``image_positives [Ni, P1]`` (texts of each image) and
``text_positives [Nt, P2]`` (images of each text), which must describe the same pairs.

A query's rank is that of its best-scoring positive:

    rank = 1 + #{non-positive candidates scoring strictly higher than the best positive}

Other positives never push it down, and a negative that ties the best positive counts in the
query's favour (a model that cannot separate two candidates is not penalised for the order a
sort would happen to pick). Recall@K is the fraction of queries with rank <= K (1.0 when K is
at least the candidate count); mean and median rank are over the same ranks.

Both directions come from the same tiles ``S = images[a] @ texts[b].T`` of at most
``block_size x block_size``, so device memory is the embeddings plus one tile, never
``Ni x Nt``. Pass 1 finds each query's best positive score from the tiles that hold a positive
pair (for test sets stored in caption order that is about ``N / block_size`` tiles, not all of
them); pass 2 visits every tile and counts, per row and per column, the negatives above it.
Both passes take scores from the same compiled tile function on the same inputs, so a positive
and a negative with identical embeddings score bit-identically and tie exactly as defined.
The last blocks are padded (padding masked out) so that function compiles once.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medclip_jax import sharding
from medclip_jax.data import sources
from medclip_jax.errors import UserError
from medclip_jax.evaluation import embed, fields, model_view
from medclip_jax.settings import EvalSettings

PAD = -1
_PAD_TEXT_ID = -2  # id of padded text columns: never equal to a positive index nor to PAD
DEFAULT_KS = (1, 5, 10, 50, 200)


def _pad_lists(lists: Sequence[Sequence[int]]) -> np.ndarray:
    """Ragged index lists -> [len, max_len] int32, -1 padded (at least one column)."""
    width = max(1, max((len(x) for x in lists), default=1))
    out = np.full((len(lists), width), PAD, np.int32)
    for i, values in enumerate(lists):
        out[i, :len(values)] = values
    return out


def build_positives(captions_per_image: Sequence[Sequence[str] | str]
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Unique text queries and the positive index arrays of a captioned test set.

    Captions are compared after ``strip()`` (exact match otherwise), so a caption shared by
    several images is one text whose positives are all of them. Empty captions are skipped; a
    bare string counts as one caption. Returns ``(texts, image_positives [Ni, P1],
    text_positives [Nt, P2])``, -1 padded, texts in order of first appearance.
    """
    index_of: dict[str, int] = {}
    texts: list[str] = []
    images_of_text: list[list[int]] = []
    texts_of_image: list[list[int]] = []
    for image, captions in enumerate(captions_per_image):
        if isinstance(captions, str):
            captions = [captions]
        mine: list[int] = []
        for caption in captions:
            key = caption.strip()
            if not key:
                continue
            if key not in index_of:
                index_of[key] = len(texts)
                texts.append(key)
                images_of_text.append([])
            t = index_of[key]
            if t not in mine:
                mine.append(t)
                images_of_text[t].append(image)
        if not mine:
            raise UserError(f"retrieval: image {image} has no non-empty caption, so it could "
                            f"never be retrieved")
        texts_of_image.append(mine)
    return texts, _pad_lists(texts_of_image), _pad_lists(images_of_text)


def positives_from_pairs(image_ids_per_text: Sequence[int], num_images: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(image_positives, text_positives)`` when text t describes only image
    ``image_ids_per_text[t]`` (an image may have several texts)."""
    ids = np.asarray(image_ids_per_text, np.int64).reshape(-1)
    if len(ids) and (ids.min() < 0 or ids.max() >= num_images):
        raise ValueError(f"image ids must be in [0, {num_images})")
    texts_of_image: list[list[int]] = [[] for _ in range(num_images)]
    for t, image in enumerate(ids):
        texts_of_image[int(image)].append(t)
    return _pad_lists(texts_of_image), ids.astype(np.int32)[:, None]


def _normalize_rows(x) -> np.ndarray:
    """float32 unit rows, on the host: identical inputs give bit-identical rows."""
    x = sharding.to_host(x).astype(np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"embeddings must be a non-empty [N, E] array, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    return embed.unit_vectors(x)


def _pair_codes(positives: np.ndarray, num_queries: int, code_of) -> np.ndarray:
    """Sorted unique codes of a positive array's (query, candidate) pairs."""
    rows = np.repeat(np.arange(num_queries), positives.shape[1]).reshape(positives.shape)
    keep = positives != PAD
    return np.unique(code_of(rows[keep].astype(np.int64), positives[keep].astype(np.int64)))


def _checked_positives(image_positives, text_positives, num_images: int, num_texts: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Validates shapes, ranges and that both arrays hold the same pairs; returns
    image_positives as int32 and the (image, text) pairs as an [M, 2] array."""
    image_positives = np.asarray(image_positives)
    text_positives = np.asarray(text_positives)
    for name, pos, rows, cols in (("image_positives", image_positives, num_images, num_texts),
                                  ("text_positives", text_positives, num_texts, num_images)):
        if pos.ndim != 2 or len(pos) != rows:
            raise ValueError(f"{name} must be [{rows}, P], got {pos.shape}")
        if pos.size and (pos.min() < PAD or pos.max() >= cols):
            raise ValueError(f"{name} holds indices outside [0, {cols}) other than -1 padding")
        if (pos == PAD).all(axis=1).any():
            raise ValueError(f"every query needs at least one positive: {name} row "
                             f"{int(np.flatnonzero((pos == PAD).all(axis=1))[0])} has none")
    from_images = _pair_codes(image_positives, num_images, lambda i, t: i * num_texts + t)
    from_texts = _pair_codes(text_positives, num_texts, lambda t, i: i * num_texts + t)
    if not np.array_equal(from_images, from_texts):
        raise ValueError("image_positives and text_positives describe different pairs")
    pairs = np.stack([from_images // num_texts, from_images % num_texts], axis=1)
    return image_positives.astype(np.int32), pairs


def _blocks(x: np.ndarray, block: int, fill) -> list[jax.Array]:
    """Device blocks of `block` rows, the last one padded with `fill`."""
    count = -(-len(x) // block)
    padded = np.full((count * block, *x.shape[1:]), fill, dtype=x.dtype)
    padded[:len(x)] = x
    return [jax.device_put(padded[i * block:(i + 1) * block]) for i in range(count)]


@jax.jit
def _similarity_tile(images, texts, image_positives, text_ids, image_valid, text_valid):
    """Scores [Bi, Bt] of a tile and its positive and negative masks (padding in neither)."""
    scores = jnp.matmul(images, texts.T, precision=jax.lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32)
    positive = jnp.any(image_positives[:, :, None] == text_ids[None, None, :], axis=1)
    valid = image_valid[:, None] & text_valid[None, :]
    return scores, positive & valid, ~positive & valid


@jax.jit
def _update_best(scores, positive, image_best, text_best):
    """Running max of each row's and column's positive scores."""
    masked = jnp.where(positive, scores, -jnp.inf)
    return (jnp.maximum(image_best, masked.max(axis=1)),
            jnp.maximum(text_best, masked.max(axis=0)))


@jax.jit
def _update_counts(scores, negative, image_best, text_best, image_count, text_count):
    """Adds each row's and column's negatives scoring strictly above its best positive."""
    above_row = (scores > image_best[:, None]) & negative
    above_col = (scores > text_best[None, :]) & negative
    return (image_count + jnp.sum(above_row, axis=1, dtype=jnp.int32),
            text_count + jnp.sum(above_col, axis=0, dtype=jnp.int32))


def retrieval_ranks(image_emb, text_emb, image_positives, text_positives,
                    block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks ``(i2t [Ni], t2i [Nt])`` of each query's best positive (module docstring).

    Embeddings may be numpy or jax Arrays (sharded too); they are normalised here.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    images, texts = _normalize_rows(image_emb), _normalize_rows(text_emb)
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"image {images.shape} and text {texts.shape} embeddings differ in E")
    num_images, num_texts = len(images), len(texts)
    image_positives, pairs = _checked_positives(image_positives, text_positives,
                                                num_images, num_texts)
    bi, bt = min(block_size, num_images), min(block_size, num_texts)
    image_blocks = _blocks(images, bi, 0.0)
    positive_blocks = _blocks(image_positives, bi, PAD)
    image_valid = _blocks(np.ones(num_images, bool), bi, False)
    text_blocks = _blocks(texts, bt, 0.0)
    text_ids = _blocks(np.arange(num_texts, dtype=np.int32), bt, _PAD_TEXT_ID)
    text_valid = _blocks(np.ones(num_texts, bool), bt, False)

    def tile(a: int, b: int):
        return _similarity_tile(image_blocks[a], text_blocks[b], positive_blocks[a],
                                text_ids[b], image_valid[a], text_valid[b])

    image_best = [jnp.full(bi, -jnp.inf, jnp.float32) for _ in image_blocks]
    text_best = [jnp.full(bt, -jnp.inf, jnp.float32) for _ in text_blocks]
    positive_tiles = np.unique(np.stack([pairs[:, 0] // bi, pairs[:, 1] // bt], axis=1), axis=0)
    for a, b in positive_tiles.tolist():
        scores, positive, _ = tile(a, b)
        image_best[a], text_best[b] = _update_best(scores, positive, image_best[a], text_best[b])

    image_count = [jnp.zeros(bi, jnp.int32) for _ in image_blocks]
    text_count = [jnp.zeros(bt, jnp.int32) for _ in text_blocks]
    for a in range(len(image_blocks)):
        for b in range(len(text_blocks)):
            scores, _, negative = tile(a, b)
            image_count[a], text_count[b] = _update_counts(
                scores, negative, image_best[a], text_best[b], image_count[a], text_count[b])
    i2t = np.concatenate([np.asarray(c) for c in image_count])[:num_images].astype(np.int64)
    t2i = np.concatenate([np.asarray(c) for c in text_count])[:num_texts].astype(np.int64)
    return i2t + 1, t2i + 1


def recall_summary(ranks: np.ndarray, ks: Sequence[int], prefix: str) -> dict[str, float]:
    """``{prefix}_R@K`` for each K, ``{prefix}_mean_rank`` and ``{prefix}_median_rank``."""
    out = {f"{prefix}_R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out[f"{prefix}_mean_rank"] = float(np.mean(ranks))
    out[f"{prefix}_median_rank"] = float(np.median(ranks))
    return out


def retrieval_metrics(image_emb, text_emb, image_positives, text_positives,
                      ks: Sequence[int] = DEFAULT_KS, block_size: int = 1024,
                      return_ranks: bool = False) -> dict:
    """Recall@K, mean and median rank in both directions, computed in tiles.

    Keys: ``i2t_R@K`` and ``t2i_R@K`` for each K, ``{i2t,t2i}_{mean,median}_rank`` (floats),
    ``num_images``, ``num_texts`` (ints); with `return_ranks`, also ``i2t_ranks`` [Ni] and
    ``t2i_ranks`` [Nt] (int64 numpy arrays).
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    i2t, t2i = retrieval_ranks(image_emb, text_emb, image_positives, text_positives, block_size)
    out = {**recall_summary(i2t, ks, "i2t"), **recall_summary(t2i, ks, "t2i"),
           "num_images": int(len(i2t)), "num_texts": int(len(t2i))}
    if return_ranks:
        out["i2t_ranks"], out["t2i_ranks"] = i2t, t2i
    return out


# --------------------------------------------------------------------------------------------
# A dataset's captions, evaluated on a model view
# --------------------------------------------------------------------------------------------

def captions_per_image(annotations: dict[str, np.ndarray], field: str | None = None
                       ) -> list[list[str]]:
    """All captions of each record from `field` (default: ``captions`` if loaded, else
    ``caption``), which holds a string or a list of strings per record."""
    field = field or ("captions" if "captions" in annotations else "caption")
    return [[str(c) for c in v] if isinstance(v, (list, tuple, np.ndarray)) else [str(v)]
            for v in annotations[field]]


def caption_retrieval_metrics(image_emb: np.ndarray, captions: Sequence[Sequence[str]],
                              embed_texts: Callable[[list[str]], np.ndarray],
                              ks: Sequence[int], block_size: int = 1024) -> dict[str, float]:
    """`retrieval_metrics` of images against their captions (`build_positives`: identical
    captions are one text), `embed_texts` embedding the distinct texts: the computation of
    the retrieval evaluator and of training's validation."""
    texts, image_positives, text_positives = build_positives(captions)
    return retrieval_metrics(image_emb, embed_texts(texts), image_positives, text_positives,
                             ks=ks, block_size=block_size)


def evaluate_dataset(view: model_view.ModelView, data_dir: str, spec: str, batch_size: int,
                     ks: tuple[int, ...], block_size: int,
                     overrides: tuple[fields.FieldOverride, ...] = ()) -> dict[str, Any]:
    """Retrieval over `spec`'s own caption field (`fields.caption_field`), whatever field the
    checkpoint was trained on."""
    entry = sources.parse_mixture(spec, field="config.retrieval.datasets")[0]
    available = sources.read_builder(sources.dataset_dir(data_dir, entry.name)).info.features
    caption_field = fields.caption_field(entry.name, available.keys(), overrides)
    image_field = fields.image_field(entry.name, available.keys(), overrides)
    annotations = sources.load_annotations(data_dir, entry.name, entry.split,
                                           fields=[caption_field])
    image_emb = model_view.embed_split_images(view, data_dir, entry.name, entry.split,
                                              batch_size, image_field=image_field)
    result = caption_retrieval_metrics(
        image_emb, captions_per_image(annotations, caption_field),
        lambda texts: model_view.embed_texts(view, texts, batch_size), ks, block_size)
    return {k: (float(v) if isinstance(v, (float, np.floating)) else int(v))
            for k, v in result.items()}


def evaluate(view: model_view.ModelView, data_dir: str,
             config: "ml_collections.ConfigDict | EvalSettings") -> dict[str, dict[str, Any]]:
    """Every dataset of ``config.retrieval.datasets``: {spec: {"i2t_R@K", "t2i_R@K", ...}}.

    `config`: the eval config (`configs/eval.py`) or its parsed `EvalSettings`."""
    config = EvalSettings.from_config(config)
    ks = config.retrieval.ks
    overrides = fields.parse_overrides(config.fields)
    return {spec: evaluate_dataset(view, data_dir, spec, config.batch_size, ks,
                                   config.retrieval.block_size, overrides)
            for spec in config.retrieval.datasets}
