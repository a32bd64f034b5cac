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
    config = base.apply_preset(base.get_base_config(), arg)
    config.method = "gloria"
    config.loss = ml_collections.ConfigDict(dict(
        variant="code", attention_temperature=4.0, aggregation_temperature=5.0,
        contrastive_temperature=10.0, global_weight=1.0, local_weight=1.0,
        exclude_special_tokens=True, chunk_size=8))
    config.model.token_projection = "separate"
    return config
