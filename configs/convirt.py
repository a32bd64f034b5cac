"""ConVIRT (Zhang et al. 2020): asymmetric InfoNCE (lambda = 0.75) at a fixed temperature 0.1,
with 2-layer MLP projection heads. Everything else is the shared base setup.

    python -m medclip_jax.main --config configs/convirt.py:demo --workdir runs/convirt_demo
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return base.method_config("convirt", arg)
