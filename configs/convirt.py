"""ConVIRT (Zhang et al. 2020): asymmetric InfoNCE (lambda = 0.75) at a fixed temperature 0.1,
with 2-layer MLP projection heads. Everything else is the shared base setup.

    python -m medclip_jax.main --config configs/convirt.py:demo --workdir runs/convirt_demo
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    config = base.apply_preset(base.get_base_config(), arg)
    config.method = "convirt"
    config.loss = ml_collections.ConfigDict({"temperature": 0.1, "image_to_text_weight": 0.75,
                                          "duplicate_captions": False})
    config.model.projection = "mlp"
    config.model.projection_hidden_dim = 2 * config.model.embed_dim
    return config
