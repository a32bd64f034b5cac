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
    return base.method_config("siglip", arg)
