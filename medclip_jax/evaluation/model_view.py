"""The model as evaluators see it: frozen facts, from a checkpoint or from the running train state.

An evaluator reads only a `ModelView` (the training config it was trained with, the step, the
mesh, the module, its params and the tokenizer), so the same `evaluate(view, data_dir,
settings)` runs in the `evals/` binaries (`from_checkpoint`) and inside the training loop
(`from_train_state`). The embedding helpers below are the evaluators' shared view of the data.
"""

import dataclasses
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from medclip_jax import checkpointing, sharding
from medclip_jax.data import pipeline, tokenizers
from medclip_jax.evaluation import embed
from medclip_jax.models import DualEncoder, build_model, presets
from medclip_jax.models import params as model_params


@dataclasses.dataclass(frozen=True)
class ModelView:
    train_config: ml_collections.ConfigDict
    step: int
    mesh: Mesh
    model: DualEncoder
    params: Any
    tokenizer: tokenizers.Tokenizer


def from_checkpoint(workdir: str, step: int | None = None,
                    mesh_axes: dict[str, int] | None = None) -> ModelView:
    """Rebuilds the model from the config saved with the checkpoint and restores its params
    (`step` None = the latest; `mesh_axes` None = the training config's mesh). A damaged
    step, or params holding NaN/Inf, is one `UserError` line naming the step and the item
    (or tensor) and the other steps `--step` can pick (`checkpointing.restore_params`)."""
    config_dict, step = checkpointing.restore_config(workdir, step)
    train_config = ml_collections.ConfigDict(config_dict)
    train_config.model = presets.saved_model_config(train_config.model, train_config.method)
    mesh = sharding.make_mesh(mesh_axes or dict(train_config.mesh))
    tokenizer = tokenizers.load_tokenizer(train_config.data.tokenizer)
    model = build_model(train_config.model, train_config.method)
    abstract = model_params.sharded_abstract_params(model, train_config, mesh)
    params, step = checkpointing.restore_params(workdir, abstract, step)
    return ModelView(train_config, step, mesh, model, params, tokenizer)


def from_train_state(run: Any, state: Any) -> ModelView:
    """The view of a training run (`train.Run`: resolved config, mesh, model, tokenizer) at
    `state` (`train.TrainState`), without copying its params."""
    return ModelView(run.config, int(state.step), run.mesh, run.model, state.params,
                     run.tokenizer)


def text_batches(texts: Sequence[str], tokenizer: tokenizers.Tokenizer, max_len: int,
                 global_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of padded global batches of tokenised texts, with valid/index."""
    count, index = jax.process_count(), jax.process_index()
    local = global_batch_size // count
    for start in range(0, len(texts), global_batch_size):
        ids = np.arange(start + index * local, start + (index + 1) * local)
        valid = ids < len(texts)
        chunk = [texts[i] if ok else "" for i, ok in zip(ids, valid)]
        token_ids, mask = tokenizer(chunk, max_len)
        yield {"text_ids": token_ids, "text_mask": mask, "valid": valid,
               "index": np.where(valid, ids, -1).astype(np.int64)}


def embed_texts(view: ModelView, texts: Sequence[str], global_batch_size: int) -> np.ndarray:
    """[len(texts), E] text embeddings, in order."""
    batches = text_batches(texts, view.tokenizer, view.train_config.model.text.max_len,
                           global_batch_size)
    out = embed.embed_batches(view.model, view.params, batches, view.mesh, images=False)
    return out["text_emb"]


def embed_split(view: ModelView, data_dir: str, name: str, split: str, global_batch_size: int,
                image_field: str = "image", *, images: bool = True, tokens: bool = False,
                pixels: bool = False, records: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
    """`embed.embed_batches` over a split's images (every record, or the sorted `records`).

    Reads only the split's `image_field` (and ids): the training config sets the image
    preprocessing, never which fields are read (`medclip_jax.evaluation.fields`).
    """
    model_cfg = view.train_config.model
    batches = pipeline.make_eval_iterator(
        data_dir, name, split, image_size=model_cfg.image.image_size,
        max_len=model_cfg.text.max_len, tokenizer=None,
        global_batch_size=global_batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), data_config=view.train_config.data,
        image_field=image_field)
    return embed.embed_batches(view.model, view.params, batches, view.mesh, images=images,
                               texts=False, tokens=tokens, pixels=pixels, records=records)


def embed_split_images(view: ModelView, data_dir: str, name: str, split: str,
                       global_batch_size: int, image_field: str = "image") -> np.ndarray:
    """[N, E] image embeddings of every record of a split, in record order."""
    return embed_split(view, data_dir, name, split, global_batch_size,
                       image_field)["image_emb"]
