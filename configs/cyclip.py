"""CyCLIP (Goel et al. 2022): the CLIP loss plus in-modal and cross-modal cyclic consistency
terms, weights 0.25 each. `loss.reduction`: "mean" over the N^2 pairs (the paper, default), or
"code" (the authors' released code: that mean times the batch size). Everything else is the shared base setup.

    python -m medclip_jax.main --config configs/cyclip.py:demo --workdir runs/cyclip_demo
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return base.method_config("cyclip", arg)
