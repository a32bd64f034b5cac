"""SigLIP (Zhai et al. 2023): the pairwise sigmoid loss with a learnable temperature t = exp(t')
and bias b, initialised at t' = log 10 and b = -10 (the paper's values). The temperature is not
clamped (max_logit_scale far above anything reached). ``loss.implementation``: "global" (the
[N, N] logits under jit) or "ring" (shard_map + ppermute over the data axes, per-device logits
[b, b]); both give the same loss and gradients. ``loss.duplicate_captions=True`` labels pairs
with identical captions +1 (both implementations). Everything else is the shared base setup.

    python -m medclip_jax.main --config configs/siglip.py:demo --workdir runs/siglip_demo
    ... --config.loss.implementation=ring
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    config = base.apply_preset(base.get_base_config(), arg)
    config.method = "siglip"
    config.loss = ml_collections.ConfigDict({"implementation": "global",
                                          "duplicate_captions": False})
    config.model.init_logit_scale = 10.0
    config.model.max_logit_scale = 1e6
    config.model.init_logit_bias = -10.0
    # Starting from CLIP weights keeps SigLIP's own t' = log 10, b = -10 (CLIP's scale of 100
    # would saturate the sigmoid at the start).
    config.init.logit_scale = False
    return config
