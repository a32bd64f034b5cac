"""GLoRIA (Huang et al. 2021): global image-report InfoNCE plus a local loss in which every word
attends over image sub-region features (ViT patch tokens here, the paper's CNN feature-map cells),
word-context cosines are aggregated by log-sum-exp into an image-report score, and InfoNCE runs
over those scores in both directions. Fixed temperatures 4 / 5 / 10 (no learnable scale).
Patch and word features get their own linear heads (``model.token_projection = "separate"``).
``loss.variant``: "code" (default: the released code, where the temperatures multiply) or
"paper"; see ``medclip_jax/losses/gloria.py``. Everything else is the shared base setup.

    python -m medclip_jax.main --config configs/gloria.py:demo --workdir runs/gloria_demo
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return base.method_config("gloria", arg)
