"""FILIP: token-wise late-interaction contrastive loss (Yao et al. 2022, ICLR, arXiv 2111.07783).

With L2-normalised image patch tokens x_ik (k = 1..N, no class token), text tokens y_jr
(r over the REAL tokens of text j, padding excluded) and logit scale s:

    sim_i2t[i, j] = 1/N      sum_k  max_r <x_ik, y_jr>     (each patch picks its best word)
    sim_t2i[j, i] = 1/|r_j|  sum_r  max_k <y_jr, x_ik>     (each word picks its best patch)
    L = 1/2 * [ CE_rows(s * sim_i2t) + CE_rows(s * sim_t2i) ],  targets on the diagonal

where CE_rows averages -log softmax(row)[diagonal] over the B rows. The two matrices differ (a
mean over a different token axis), so neither is the transpose of the other. Padding never
wins a max nor counts in a mean (one of the paper's changes to ColBERT's late interaction,
with the mean instead of ColBERT's sum; Section 3.1).

Special tokens (``exclude_special_tokens``, default False): the paper's texts start with [BOS]
and end with [EOS] and only padding is dropped; the only public implementation of the loss we
found, Huawei MindFormers' ``FilipLossCell`` (the authors' company), masks only padding ids,
so BOS/EOS take part. True drops the first and the last real token of each row instead.

Memory: the token products of the global batch would be [B, N, B, L]. They are computed in
blocks of ``chunk_size`` texts ([B, N, c, L] each, ``jax.lax.map``), every block rematerialised
by ``jax.checkpoint`` so the backward pass keeps no block's product; only the [B, B] similarity
matrices persist. Remainders are padded with empty texts and dropped.

Token subset (``token_keep_fraction``; the paper's "training efficiency" paragraph, Section 3.1:
before node communication each local worker keeps the 25% of tokens with the highest
token-wise maximum similarity against all texts (resp. images) of that worker; MindFormers
does the same with ``top_token_percent``). Our rule, with stop-gradient scores:

    score(x_ik) = max over texts j of the batch, real r:  <x_ik, y_jr>
    score(y_jr) = max over images i of the batch, all k:  <y_jr, x_ik>
    keep per image the top floor(f * N) patches, per text the top floor(f * L) tokens
    (at least 1; padding scores -inf so it is kept only when a row has fewer real tokens,
    and stays masked), then compute the loss above on the kept tokens only.

Where ours differs: (1) the paper (and MindFormers) scores against the texts/images of the
local worker group, before the all-gather; we score against the whole batch this function
sees (the global batch under `jax.jit`), which does not depend on the device count.
(2) MindFormers zeroes padded features, so padding can be selected when real scores are
negative; ours never prefers padding. (3) MindFormers applies the image fraction to both
modalities; we use one fraction for both, as the paper states (25%). (4) The paper's fp16
features and MindFormers' label smoothing (0.1) and logit clip (+-100) are not reproduced.
With f = 1 nothing is selected and the full loss is computed.
"""

import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp

from medclip_jax.errors import UserError
from medclip_jax.losses.clip import l2_normalize

# Fill value for masked similarities: loses every max and vanishes under exp, yet stays finite
# so that an all-masked row has a finite (then discarded) reduction and no NaN gradient.
MASKED = -1e30


def check_chunk_size(chunk_size: Any) -> None:
    if (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
            or chunk_size < 1):
        raise UserError(f"config.loss.chunk_size must be an integer >= 1, got {chunk_size!r}")


def real_token_mask(text_mask: jax.Array, exclude_special_tokens: bool) -> jax.Array:
    """[B, L] bool of the tokens that count; optionally without each row's first/last real one.

    Rows with two or fewer real tokens become empty when special tokens are excluded.
    """
    if not isinstance(exclude_special_tokens, bool):
        raise UserError("config.loss.exclude_special_tokens must be True or False, got "
                        f"{exclude_special_tokens!r}")
    mask = jnp.asarray(text_mask) > 0
    if not exclude_special_tokens:
        return mask
    length = mask.shape[1]
    positions = jnp.arange(length)[None, :]
    first = jnp.argmax(mask, axis=1)[:, None]
    last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)[:, None]
    return mask & (positions != first) & (positions != last)


def map_text_blocks(block: Callable, chunk_size: int, *text_arrays: jax.Array) -> Any:
    """Runs `block(*arrays_of_c_texts)` over blocks of the texts' leading axis.

    Each block is rematerialised in the backward pass. The last block is padded with zeros
    (a zero mask makes a padded text empty). Outputs are stacked: [num_blocks, ...].
    """
    check_chunk_size(chunk_size)
    num_texts = text_arrays[0].shape[0]
    size = min(chunk_size, num_texts)
    num_blocks = -(-num_texts // size)
    pad = num_blocks * size - num_texts

    def to_blocks(x):
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((num_blocks, size) + x.shape[1:])

    rematerialised = jax.checkpoint(lambda arrays: block(*arrays))
    return jax.lax.map(rematerialised, tuple(to_blocks(x) for x in text_arrays))


def columns_from_blocks(blocks: jax.Array, num_texts: int) -> jax.Array:
    """[num_blocks, B, c] per-block columns -> [B, num_texts]."""
    n, rows, size = blocks.shape
    return jnp.transpose(blocks, (1, 0, 2)).reshape(rows, n * size)[:, :num_texts]


def rows_from_blocks(blocks: jax.Array, num_texts: int) -> jax.Array:
    """[num_blocks, c, ...] per-block rows -> [num_texts, ...]."""
    return blocks.reshape((-1,) + blocks.shape[2:])[:num_texts]


def _similarity_block(image: jax.Array, text: jax.Array, mask: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """Late interaction of all images with c texts: ([B, c] i2t, [c, B] t2i)."""
    products = jnp.einsum("bne,cle->bncl", image, text)
    best_word = jnp.max(jnp.where(mask[None, None], products, MASKED), axis=-1)  # [B, N, c]
    best_word = jnp.where(jnp.any(mask, axis=-1)[None, None], best_word, 0.0)
    i2t = jnp.mean(best_word, axis=1)
    best_patch = jnp.max(products, axis=1)  # [B, c, L]
    counts = jnp.maximum(jnp.sum(mask, axis=-1), 1)
    t2i = jnp.sum(jnp.where(mask[None], best_patch, 0.0), axis=-1) / counts[None]
    return i2t, t2i.T


def filip_similarities(image_tokens: jax.Array, text_tokens: jax.Array, mask: jax.Array,
                       chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """[B, B] sim_i2t (rows images) and sim_t2i (rows texts) of L2-normalised tokens."""
    num_texts = text_tokens.shape[0]
    i2t, t2i = map_text_blocks(lambda y, m: _similarity_block(image_tokens, y, m),
                               chunk_size, text_tokens, mask)
    return columns_from_blocks(i2t, num_texts), rows_from_blocks(t2i, num_texts)


def _score_block(image: jax.Array, text: jax.Array, mask: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """Token-wise max similarity against c texts: ([B, N] per patch, [c, L] per word)."""
    products = jnp.einsum("bne,cle->bncl", image, text)
    patch_scores = jnp.max(jnp.where(mask[None, None], products, MASKED), axis=(2, 3))
    word_scores = jnp.max(products, axis=(0, 1))
    return patch_scores, word_scores


def token_scores(image_tokens: jax.Array, text_tokens: jax.Array, mask: jax.Array,
                 chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """Selection scores over the whole batch, without gradient: [B, N] patches, [B, L] words."""
    image_tokens = jax.lax.stop_gradient(image_tokens)
    text_tokens = jax.lax.stop_gradient(text_tokens)
    patch, word = map_text_blocks(lambda y, m: _score_block(image_tokens, y, m),
                                  chunk_size, text_tokens, mask)
    return jnp.max(patch, axis=0), rows_from_blocks(word, text_tokens.shape[0])


def keep_count(fraction: float, num_tokens: int) -> int:
    """floor(fraction * num_tokens), at least 1 (the epsilon absorbs 0.29 * 100 = 28.999...)."""
    return max(1, int(math.floor(fraction * num_tokens + 1e-9)))


def select_tokens(image_tokens: jax.Array, text_tokens: jax.Array, mask: jax.Array,
                  fraction: float, chunk_size: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The paper's token subset: top patches per image and top words per text by their
    token-wise maximum similarity over the batch. Returns ([B, K, E], [B, K', E], [B, K'])."""
    patch_scores, word_scores = token_scores(image_tokens, text_tokens, mask, chunk_size)
    _, patch_index = jax.lax.top_k(patch_scores, keep_count(fraction, image_tokens.shape[1]))
    word_scores = jnp.where(mask, word_scores, -jnp.inf)
    _, word_index = jax.lax.top_k(word_scores, keep_count(fraction, text_tokens.shape[1]))
    image_tokens = jnp.take_along_axis(image_tokens, patch_index[..., None], axis=1)
    text_tokens = jnp.take_along_axis(text_tokens, word_index[..., None], axis=1)
    return image_tokens, text_tokens, jnp.take_along_axis(mask, word_index, axis=1)


def check_fraction(token_keep_fraction: Any) -> None:
    if (isinstance(token_keep_fraction, bool)
            or not isinstance(token_keep_fraction, numbers.Real)
            or not 0.0 < token_keep_fraction <= 1.0):
        raise UserError("config.loss.token_keep_fraction must be in (0, 1], got "
                        f"{token_keep_fraction!r}")


def symmetric_cross_entropy(logits_i2t: jax.Array, logits_t2i: jax.Array
                            ) -> tuple[jax.Array, jax.Array]:
    """Row-wise CE with diagonal targets for each direction's own [B, B] logits."""
    diagonal = jnp.arange(logits_i2t.shape[0])
    loss_i2t = -jnp.mean(jax.nn.log_softmax(logits_i2t, axis=1)[diagonal, diagonal])
    loss_t2i = -jnp.mean(jax.nn.log_softmax(logits_t2i, axis=1)[diagonal, diagonal])
    return loss_i2t, loss_t2i


def filip_loss(image_tokens: jax.Array, text_tokens: jax.Array, text_mask: jax.Array,
               logit_scale: jax.Array, chunk_size: int = 8, token_keep_fraction: float = 1.0,
               exclude_special_tokens: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """FILIP loss. Tokens [B, N, E] / [B, L, E] (normalised here), mask [B, L], scale scalar."""
    check_chunk_size(chunk_size)
    check_fraction(token_keep_fraction)
    mask = real_token_mask(text_mask, exclude_special_tokens)
    image, text = l2_normalize(image_tokens), l2_normalize(text_tokens)
    if token_keep_fraction < 1.0:
        image, text, mask = select_tokens(image, text, mask, token_keep_fraction, chunk_size)
    sim_i2t, sim_t2i = filip_similarities(image, text, mask, chunk_size)
    scale = jnp.asarray(logit_scale, jnp.float32)
    logits_i2t, logits_t2i = scale * sim_i2t, scale * sim_t2i
    loss_i2t, loss_t2i = symmetric_cross_entropy(logits_i2t, logits_t2i)
    targets = jnp.arange(logits_i2t.shape[0])
    metrics = {
        "loss_i2t": loss_i2t,
        "loss_t2i": loss_t2i,
        "i2t_batch_acc": jnp.mean(jnp.argmax(logits_i2t, axis=1) == targets),
        "t2i_batch_acc": jnp.mean(jnp.argmax(logits_t2i, axis=1) == targets),
    }
    return 0.5 * (loss_i2t + loss_t2i), metrics


def filip_loss_from_outputs(outputs: Any, chunk_size: int = 8, token_keep_fraction: float = 1.0,
                            exclude_special_tokens: bool = False
                            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Registry adapter: projected patch/text tokens, the text mask and the learnable scale."""
    return filip_loss(outputs.image_token_emb, outputs.text_token_emb, outputs.text_mask,
                      outputs.logit_scale, chunk_size, token_keep_fraction,
                      exclude_special_tokens)
