"""GLoRIA: global + local (word / sub-region) contrastive losses (Huang, Shen, Lungren, Yeung
2021, "GLoRIA: A Multimodal Global-Local Representation Learning Framework for Label-efficient
Medical Image Recognition", ICCV 2021; no arXiv id; code github.com/marshuang80/gloria).

Inputs: pooled embeddings v_g (image), t_g (report); sub-region features v_j (j = 1..M, here the
projected patch tokens) and word features w_i (i over the report's words). cos = cosine
similarity. Temperatures tau1 (attention, 4), tau2 (aggregation, 5), tau3 (contrast, 10) are
numbered as in the released code (temp1..temp3) and AttnGAN's DAMSM gammas.

variant = "paper" (temperatures divide):

    s_ij = <w_i, v_j>                       raw dot products, features not normalised
    a_ij = softmax_j(s_ij / tau1)           over the M sub-regions
    c_i  = sum_j a_ij v_j,   R_i = cos(c_i, w_i)
    Z(image, report) = tau2 * log sum_i exp(R_i / tau2)
    global logits = cos(v_g, t_g) / tau3,   local logits = Z / tau3
    L_global = 1/2 (CE_i2t + CE_t2i),       L_local = 1/2 (CE_i2t + CE_t2i)

variant = "code" (gloria/loss/gloria_loss.py, itself from ControlGAN/AttnGAN; default):

    p_ij = softmax_i(s_ij)                  first over the report's words, per sub-region
    a_ij = softmax_j(tau1 * p_ij)           then over sub-regions
    c_i, R_i as above (cosine with the product of norms clamped at 1e-8)
    Z(image, report) = log sum_i exp(tau2 * R_i)
    global logits = tau3 * cos(v_g, t_g),   local logits = tau3 * Z
    L_global = CE_i2t + CE_t2i,             L_local = CE_i2t + CE_t2i   (directions summed)

Total = global_weight * L_global + local_weight * L_local (1.0 each, as the released config).
CE_i2t averages -log softmax over reports of each image's row (diagonal target); CE_t2i the
same over images for each report. Neither variant L2-normalises the features before the
attention dot products (the code's configs set text ``norm: false`` and the image's 1x1-conv
local embedder has no norm); only R and the global score are cosines.

Default "code": the temperature values come from DAMSM (Xu et al. 2018, AttnGAN), where they
multiply; dividing cosines (|R| <= 1) by tau3 = 10 yields logits within about +-0.1 (global)
and a nearly uniform softmax over the batch, which hardly trains; and the released GLoRIA
weights were trained with the code. Caveat on "paper": the paper's text was not retrievable
from our sources, so its form (temperatures divide; the aggregation is a log-sum-exp at
temperature tau2 with the outer factor tau2; the two directions averaged; and which tau the
paper calls tau1..tau3) rests on the description we were given, not on a reading of the PDF,
and should be checked against it. The "code" form was read from the released source.

Words: GLoRIA merges word pieces into words and drops [SEP] and padding; the released
``local_loss`` keeps [CLS] (it slices ``words_emb[:, :, :cap_len]`` with ``cap_len`` = words +
1, a "TODO: remove [SEP]" beside it), while its retrieval scoring uses words + [SEP]. From token
ids alone we cannot merge word pieces, so every real word piece is a "word" here (a gap versus
both paper and code). ``exclude_special_tokens=True`` (default) drops each row's first and last
real token ([CLS], [SEP]); False keeps both. Padding never counts. A report left with no words
gets Z = 0 against every image.

Memory: the local scores are [B, B], but each needs the attention of every word over every
sub-region. They are computed in blocks of ``chunk_size`` reports, each block ([B, c, L, M]
attention, [B, c, L, E] contexts) rematerialised by ``jax.checkpoint`` in the backward pass.
"""

import numbers
from typing import Any

import jax
import jax.numpy as jnp

from medclip_jax.errors import UserError
from medclip_jax.losses.filip import (MASKED, check_chunk_size, columns_from_blocks,
                                      map_text_blocks, real_token_mask, symmetric_cross_entropy)

VARIANTS = ("paper", "code")


def cosine(x: jax.Array, y: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Cosine over the last axis, the product of norms clamped (as the released code).

    Clamped on squares, so a zero vector (padding) has a zero gradient rather than NaN.
    """
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    squared_norms = jnp.sum(x * x, axis=-1) * jnp.sum(y * y, axis=-1)
    return jnp.sum(x * y, axis=-1) * jax.lax.rsqrt(jnp.maximum(squared_norms, eps * eps))


def _local_block(regions: jax.Array, words: jax.Array, mask: jax.Array, variant: str,
                 tau1: float, tau2: float) -> jax.Array:
    """Z of every image against c reports: regions [B, M, E], words [c, L, E] -> [B, c]."""
    scores = jnp.einsum("bme,cle->bclm", regions, words)
    word_mask = mask[None, :, :, None]
    if variant == "paper":
        logits = scores / tau1
    else:
        over_words = jax.nn.softmax(jnp.where(word_mask, scores, MASKED), axis=2)
        logits = tau1 * over_words
    attention = jax.nn.softmax(logits, axis=-1)
    context = jnp.einsum("bclm,bme->bcle", attention, regions)
    relevance = cosine(context, words[None])  # [B, c, L]
    present = mask[None]
    if variant == "paper":
        z = tau2 * jax.nn.logsumexp(jnp.where(present, relevance / tau2, MASKED), axis=-1)
    else:
        z = jax.nn.logsumexp(jnp.where(present, tau2 * relevance, MASKED), axis=-1)
    return jnp.where(jnp.any(mask, axis=-1)[None], z, 0.0)


def local_scores(region_emb: jax.Array, word_emb: jax.Array, word_mask: jax.Array,
                 variant: str = "code", attention_temperature: float = 4.0,
                 aggregation_temperature: float = 5.0, chunk_size: int = 8) -> jax.Array:
    """[B_img, B_rep] word-level matching scores Z, computed over blocks of reports."""
    check_variant(variant)
    blocks = map_text_blocks(
        lambda w, m: _local_block(region_emb.astype(jnp.float32), w.astype(jnp.float32), m,
                                  variant, attention_temperature, aggregation_temperature),
        chunk_size, word_emb, word_mask)
    return columns_from_blocks(blocks, word_emb.shape[0])


def check_variant(variant: Any) -> None:
    if variant not in VARIANTS:
        raise UserError(f"config.loss.variant must be one of {VARIANTS}, got {variant!r}")


def _check_knobs(variant, attention_temperature, aggregation_temperature,
                 contrastive_temperature, global_weight, local_weight, chunk_size) -> None:
    check_variant(variant)
    check_chunk_size(chunk_size)
    for name, value in (("attention_temperature", attention_temperature),
                        ("aggregation_temperature", aggregation_temperature),
                        ("contrastive_temperature", contrastive_temperature)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise UserError(f"config.loss.{name} must be > 0, got {value!r}")
    for name, value in (("global_weight", global_weight), ("local_weight", local_weight)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
            raise UserError(f"config.loss.{name} must be >= 0, got {value!r}")


def gloria_loss(image_emb: jax.Array, text_emb: jax.Array, region_emb: jax.Array,
                word_emb: jax.Array, text_mask: jax.Array, variant: str = "code",
                attention_temperature: float = 4.0, aggregation_temperature: float = 5.0,
                contrastive_temperature: float = 10.0, global_weight: float = 1.0,
                local_weight: float = 1.0, exclude_special_tokens: bool = True,
                chunk_size: int = 8) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GLoRIA loss. Pooled [B, E] embeddings, regions [B, M, E], words [B, L, E], mask [B, L]."""
    _check_knobs(variant, attention_temperature, aggregation_temperature,
                 contrastive_temperature, global_weight, local_weight, chunk_size)
    mask = real_token_mask(text_mask, exclude_special_tokens)
    global_cos = cosine(image_emb[:, None, :], text_emb[None, :, :])
    local = local_scores(region_emb, word_emb, mask, variant, attention_temperature,
                         aggregation_temperature, chunk_size)
    if variant == "paper":
        global_logits = global_cos / contrastive_temperature
        local_logits = local / contrastive_temperature
        combine = lambda a, b: 0.5 * (a + b)  # noqa: E731
    else:
        global_logits = contrastive_temperature * global_cos
        local_logits = contrastive_temperature * local
        combine = lambda a, b: a + b  # noqa: E731
    global_i2t, global_t2i = symmetric_cross_entropy(global_logits, global_logits.T)
    local_i2t, local_t2i = symmetric_cross_entropy(local_logits, local_logits.T)
    global_loss = combine(global_i2t, global_t2i)
    local_loss = combine(local_i2t, local_t2i)
    targets = jnp.arange(local_logits.shape[0])
    metrics = {
        "global_loss": global_loss,
        "local_loss": local_loss,
        "global_loss_i2t": global_i2t,
        "global_loss_t2i": global_t2i,
        "local_loss_i2t": local_i2t,
        "local_loss_t2i": local_t2i,
        "i2t_batch_acc": jnp.mean(jnp.argmax(global_logits, axis=1) == targets),
        "t2i_batch_acc": jnp.mean(jnp.argmax(global_logits, axis=0) == targets),
        "local_i2t_batch_acc": jnp.mean(jnp.argmax(local_logits, axis=1) == targets),
        "local_t2i_batch_acc": jnp.mean(jnp.argmax(local_logits, axis=0) == targets),
    }
    return global_weight * global_loss + local_weight * local_loss, metrics


def gloria_loss_from_outputs(outputs: Any, variant: str = "code",
                             attention_temperature: float = 4.0,
                             aggregation_temperature: float = 5.0,
                             contrastive_temperature: float = 10.0, global_weight: float = 1.0,
                             local_weight: float = 1.0, exclude_special_tokens: bool = True,
                             chunk_size: int = 8) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Registry adapter: pooled embeddings, projected patch tokens as sub-regions, projected
    text tokens as words. The model's learnable logit scale is not used (fixed temperatures)."""
    return gloria_loss(outputs.image_emb, outputs.text_emb, outputs.image_token_emb,
                       outputs.text_token_emb, outputs.text_mask, variant,
                       attention_temperature, aggregation_temperature, contrastive_temperature,
                       global_weight, local_weight, exclude_special_tokens, chunk_size)
