"""What every evaluation binary shares: load a checkpoint's model, embed texts, write results."""

import dataclasses
import json
import os
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from medclip_jax import checkpointing, sharding, train
from medclip_jax.data import pipeline, tokenizers
from medclip_jax.evaluation import embed
from medclip_jax.models import DualEncoder, build_model, presets


@dataclasses.dataclass
class LoadedModel:
    train_config: ml_collections.ConfigDict
    step: int
    mesh: Mesh
    model: DualEncoder
    params: Any
    tokenizer: tokenizers.Tokenizer


def load_model(workdir: str, step: int | None = None,
               mesh_axes: dict[str, int] | None = None) -> LoadedModel:
    """Rebuilds the model from the config saved with the checkpoint and restores its params."""
    config_dict, step = checkpointing.restore_config(workdir, step)
    train_config = ml_collections.ConfigDict(config_dict)
    train_config.model = presets.saved_model_config(train_config.model, train_config.method)
    mesh = sharding.make_mesh(mesh_axes or dict(train_config.mesh))
    tokenizer = tokenizers.load_tokenizer(train_config.data.tokenizer)
    model = build_model(train_config.model, train_config.method)
    abstract = train.with_shardings(
        train.abstract_params(model, train_config.model),
        train.param_shardings(model, train_config, mesh))
    params, step = checkpointing.restore_params(workdir, abstract, step)
    return LoadedModel(train_config, step, mesh, model, params, tokenizer)


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


def embed_texts(loaded: LoadedModel, texts: Sequence[str], global_batch_size: int) -> np.ndarray:
    """[len(texts), E] text embeddings, in order."""
    batches = text_batches(texts, loaded.tokenizer, loaded.train_config.model.text.max_len,
                           global_batch_size)
    out = embed.embed_batches(loaded.model, loaded.params, batches, loaded.mesh, images=False)
    return out["text_emb"]


def embed_split_images(loaded: LoadedModel, data_dir: str, name: str, split: str,
                       global_batch_size: int, image_field: str = "image") -> np.ndarray:
    """[N, E] image embeddings of every record of a split, in record order.

    Reads only the split's `image_field` (and ids): the training config sets the image
    preprocessing, never which fields are read (`medclip_jax.evaluation.fields`).
    """
    model_cfg = loaded.train_config.model
    batches = pipeline.make_eval_iterator(
        data_dir, name, split, image_size=model_cfg.image.image_size,
        max_len=model_cfg.text.max_len, tokenizer=None,
        global_batch_size=global_batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), data_config=loaded.train_config.data,
        image_field=image_field)
    return embed.embed_batches(loaded.model, loaded.params, batches, loaded.mesh,
                               texts=False)["image_emb"]


def write_results(output_dir: str, name: str, results: dict[str, Any], table: str) -> str:
    """Writes `<name>.json` and `<name>.md` (process 0 only); returns the JSON path."""
    path = os.path.join(output_dir, f"{name}.json")
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        with open(os.path.join(output_dir, f"{name}.md"), "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return path
