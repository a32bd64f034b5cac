"""A model's parameter tree without allocating it: shapes, dtypes and shardings.

Training initialises into these shardings and checkpoints restore into them, so both read
them from here.
"""

from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from medclip_jax import sharding
from medclip_jax.settings import ShardingSettings
from medclip_jax.models.dual_encoder import DualEncoder, init_params


def abstract_params(model: DualEncoder, model_config: ml_collections.ConfigDict) -> Any:
    """Param shapes and dtypes, without allocating anything."""
    return jax.eval_shape(
        lambda rng: init_params(model, rng, model_config.image.image_size,
                                model_config.text.max_len),
        jax.random.key(0))


def param_shardings(model: DualEncoder, config: ml_collections.ConfigDict, mesh: Mesh,
                    abstract: Any | None = None) -> Any:
    """Each param's sharding on `mesh` from the training config's ``sharding`` section
    (`abstract`: the model's `abstract_params`, when the caller has them already)."""
    rules = ShardingSettings.from_config(config.get("sharding"))
    if abstract is None:
        abstract = abstract_params(model, config.model)
    return sharding.tree_shardings(abstract, rules.rules, mesh, rules.fsdp_min_size)


def sharded_abstract_params(model: DualEncoder, config: ml_collections.ConfigDict,
                            mesh: Mesh) -> Any:
    """Shapes, dtypes and shardings: what a checkpoint's params are restored into."""
    abstract = abstract_params(model, config.model)
    return sharding.with_shardings(abstract, param_shardings(model, config, mesh, abstract))
