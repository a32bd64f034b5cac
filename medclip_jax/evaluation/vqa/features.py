"""The VQA head's feature tables for one split, from the shared embedding loop.

A split's questions become tables the head gathers from by index (`fit.gather_features`): each
distinct question text and each image is embedded once (`embed.embed_batches`, with token
features when the fusion needs them), and per-question rows point into those tables.
"""

import numpy as np

from medclip_jax.evaluation import embed, model_view
from medclip_jax.evaluation.vqa.questions import Questions
from medclip_jax.settings import VqaSettings


def encode_questions(view: model_view.ModelView, texts: list[str], global_batch_size: int, *,
                     tokens: bool) -> dict[str, np.ndarray]:
    """`question_pooled` [U, E] text embeddings of `texts` (in order); with `tokens`, also the
    text tower's `question_tokens` [U, L, W] and `question_mask` [U, L], L cut to the longest
    real question."""
    batches = model_view.text_batches(texts, view.tokenizer,
                                      view.train_config.model.text.max_len, global_batch_size)
    out = embed.embed_batches(view.model, view.params, batches, view.mesh, images=False,
                              tokens=tokens, records=np.arange(len(texts)))
    tables = {"question_pooled": out["text_emb"].astype(np.float32)}
    if tokens:
        mask = out["text_mask"].astype(np.int32)
        length = max(int(mask.sum(-1).max()), 1)
        tables["question_tokens"] = out["text_tokens"][:, :length].astype(np.float32)
        tables["question_mask"] = mask[:, :length]
    return tables


def encode_split_images(view: model_view.ModelView, data_dir: str, name: str, split: str,
                        global_batch_size: int, records: np.ndarray, *, tokens: bool,
                        pixels: bool, image_field: str = "image") -> dict[str, np.ndarray]:
    """Image features of records `records` (sorted) of a split, in that order: the projected
    `image_pooled` [I, E] and, with `tokens`, the patch tokens `image_tokens` [I, N, W]; with
    `pixels`, the preprocessed `pixels` [I, H, W, 3] instead (for a trained tower, encoded in
    the step)."""
    out = model_view.embed_split(view, data_dir, name, split, global_batch_size, image_field,
                                 images=not pixels, tokens=tokens and not pixels,
                                 pixels=pixels, records=records)
    renamed = {"image_emb": "image_pooled", "image_tokens": "image_tokens", "pixels": "pixels"}
    return {renamed[k]: v.astype(np.float32) for k, v in out.items() if k in renamed}


def split_tables(view: model_view.ModelView, data_dir: str, name: str, split: str,
                 questions: Questions, settings: VqaSettings,
                 batch_size: int) -> dict[str, np.ndarray]:
    """Every table the head reads for one split: `image_row` / `question_row` [Q] per question,
    and the question and image features they index."""
    texts = list(dict.fromkeys(questions.question))
    lookup = {text: i for i, text in enumerate(texts)}
    tables = {"image_row": questions.image_row.astype(np.int32),
              "question_row": np.asarray([lookup[q] for q in questions.question], np.int32)}
    tables.update(encode_questions(view, texts, batch_size,
                                   tokens=settings.needs_question_tokens))
    tables.update(encode_split_images(view, data_dir, name, split, batch_size,
                                      questions.image_records,
                                      tokens=settings.needs_image_tokens,
                                      pixels=settings.finetune_image))
    return tables
