"""VSE++ (Faghri et al. 2018): hinge triplet loss on cosine similarities with the hardest
negative of the global batch, margin 0.2; `--config.loss.max_violation=False` gives VSE0 (the
sum over all negatives); `loss.reduction`: "mean" over the batch (default) or "sum" (the
authors' released code). Everything else is the shared base setup.

    python -m medclip_jax.main --config configs/vse.py:demo --workdir runs/vse_demo
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return base.method_config("vse", arg)
