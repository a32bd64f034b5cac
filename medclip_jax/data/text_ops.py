"""Host-side text ops (numpy): token-dropout text views, BERT-style MLM inputs, caption identity.

Both take one packed row (`ids`, `mask` int [L], right-padded, as `tokenizers.pack` makes it:
``prefix specials + content + suffix specials + padding``) and touch only the content: the
prefix / suffix specials ([CLS]/[SEP], BOS/EOS) and the padding are never dropped or masked.

* `drop_tokens` (DeCLIP's text views, Li et al. 2022, arXiv 2110.05208): each content token is
  dropped independently with probability p, then the row is re-packed left-aligned, so the end
  token still sits at ``mask.sum() - 1`` (where EOS pooling reads). A non-empty content always
  keeps at least one token.
* `mask_tokens` (BERT, Devlin et al. 2019, arXiv 1810.04805, as DeCLIP's text self-supervision):
  content positions are selected, then each selected token becomes [MASK] with probability 0.8,
  a random non-special token with 0.1, and stays unchanged with 0.1. Selection:

  - ``"bernoulli"`` (default): each content token independently with probability p (the
    per-token rule of the masked-LM collators used by CLIP-family code); more than
    `max_predictions` -> a random `max_predictions` of them; none -> one at random;
  - ``"fixed"``: BERT's released ``create_pretraining_data.py``: exactly
    ``min(max_predictions, max(1, round(p * n)))`` positions, n = real tokens including the
    specials (as that script counts), drawn uniformly from the content.

  Returns the corrupted row and `max_predictions` slots of (position, original id, weight);
  unused slots are (0, 0, 0). Positions are in increasing order.

Caption identity (the duplicate-caption contrastive targets, `medclip_jax.losses.clip`):

* `normalize_caption`: Unicode NFKC, lower-cased, whitespace runs collapsed to one space,
  surrounding whitespace and trailing ``. , ; : ! ?`` removed (the rule of
  `data_prep.vqa.normalize_answer`, plus NFKC so full-width and compatibility forms match).
  "No acute cardiopulmonary process." == "no  acute cardiopulmonary process"; inner
  punctuation, digits and word order still distinguish captions.
* `caption_hashes`: 64 bits of BLAKE2b of the normalised UTF-8 text per caption, as two int32
  columns (JAX is 32-bit by default). 64 bits because a batch of n distinct captions collides
  with probability ~ n^2 / 2^(bits + 1): ~0.12 for 32 bits at n = 32k, ~3e-11 for 64 bits.
  An unkeyed digest (not Python's per-process salted `hash`) is the same on every host and run.
"""

import hashlib
import unicodedata
from typing import Sequence

import numpy as np

SELECTIONS = ("bernoulli", "fixed")
MASK_FRACTION = 0.8  # of the selected tokens -> [MASK]
RANDOM_FRACTION = 0.1  # -> a random token; the rest (0.1) stay unchanged
TRAILING_PUNCTUATION = ".,;:!?"  # removed from the end of a caption by `normalize_caption`


def content_span(mask: np.ndarray, num_prefix: int, num_suffix: int) -> tuple[int, int]:
    """[start, stop) of the content tokens in a right-padded row."""
    length = int(np.asarray(mask).sum())
    return num_prefix, max(num_prefix, length - num_suffix)


def drop_tokens(ids: np.ndarray, mask: np.ndarray, num_prefix: int, num_suffix: int,
                drop_prob: float, rng: np.random.Generator, *, pad_id: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each content token dropped with `drop_prob` (at least one kept), re-packed left-aligned."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    start, stop = content_span(mask, num_prefix, num_suffix)
    length = int(mask.sum())
    keep = rng.random(stop - start) >= drop_prob
    if stop > start and not keep.any():
        keep[rng.integers(stop - start)] = True
    tokens = np.concatenate([ids[:start], ids[start:stop][keep], ids[stop:length]])
    out_ids = np.full_like(ids, pad_id)
    out_mask = np.zeros_like(mask)
    out_ids[:len(tokens)] = tokens
    out_mask[:len(tokens)] = 1
    return out_ids, out_mask


def select_positions(num_content: int, num_real: int, mask_prob: float, max_predictions: int,
                     selection: str, rng: np.random.Generator) -> np.ndarray:
    """Sorted content offsets to predict (see the module docstring for the two rules)."""
    if num_content == 0:
        return np.zeros(0, np.int64)
    if selection == "fixed":
        count = min(max_predictions, max(1, int(round(num_real * mask_prob))), num_content)
        return np.sort(rng.permutation(num_content)[:count])
    if selection != "bernoulli":
        raise ValueError(f"unknown MLM selection {selection!r}; expected one of {SELECTIONS}")
    chosen = np.flatnonzero(rng.random(num_content) < mask_prob)
    if len(chosen) == 0:
        chosen = np.array([rng.integers(num_content)])
    if len(chosen) > max_predictions:
        chosen = np.sort(rng.choice(chosen, max_predictions, replace=False))
    return chosen


def mask_tokens(ids: np.ndarray, mask: np.ndarray, num_prefix: int, num_suffix: int, *,
                mask_prob: float, max_predictions: int, mask_id: int,
                random_ids: Sequence[int] | np.ndarray, rng: np.random.Generator,
                selection: str = "bernoulli"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mlm_ids [L], positions [P], labels [P], weights [P]) for one row, P = max_predictions.

    `random_ids`: the vocabulary a "random token" is drawn from (non-special ids).
    """
    ids, mask = np.asarray(ids), np.asarray(mask)
    start, stop = content_span(mask, num_prefix, num_suffix)
    offsets = select_positions(stop - start, int(mask.sum()), mask_prob, max_predictions,
                               selection, rng)
    picked = start + offsets
    count = len(picked)
    action = rng.random(count)
    replacements = np.asarray(random_ids)[rng.integers(len(random_ids), size=count)]
    mlm_ids = ids.copy()
    to_mask = action < MASK_FRACTION
    to_random = (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)
    mlm_ids[picked[to_mask]] = mask_id
    mlm_ids[picked[to_random]] = replacements[to_random]
    positions = np.zeros(max_predictions, ids.dtype)
    labels = np.zeros(max_predictions, ids.dtype)
    weights = np.zeros(max_predictions, ids.dtype)
    positions[:count] = picked
    labels[:count] = ids[picked]
    weights[:count] = 1
    return mlm_ids, positions, labels, weights


def random_token_ids(vocab_size: int, special_ids: frozenset[int] | set[int]) -> np.ndarray:
    """The ids MLM may draw as random replacements: the vocabulary minus its specials."""
    ids = np.arange(vocab_size, dtype=np.int32)
    return ids[~np.isin(ids, np.fromiter(special_ids, np.int64, len(special_ids)))]


def normalize_caption(caption: str) -> str:
    """The form in which two captions count as the same text (see the module docstring)."""
    text = " ".join(unicodedata.normalize("NFKC", caption).lower().split())
    return text.rstrip(TRAILING_PUNCTUATION + " ")


def caption_hashes(captions: Sequence[str]) -> np.ndarray:
    """[n, 2] int32: 64-bit digests of the normalised captions; equal rows = same caption."""
    digests = b"".join(hashlib.blake2b(normalize_caption(c).encode("utf-8"),
                                       digest_size=8).digest() for c in captions)
    return np.frombuffer(digests, dtype="<i4").reshape(len(captions), 2).astype(np.int32)
