"""SLIP (Mu et al. 2022): the CLIP loss plus SimCLR's NT-Xent between two augmented views of each
image, passed through the image tower and SLIP's own 3-layer MLP head (not the CLIP
projection); SSL temperature 0.1, SSL weight 1.0. The pipeline adds the two SimCLR views
(``data.image_views = 2``, recipe in ``data.view_augment``: random resized crop 0.08-1, colour
jitter, grayscale, blur, flip). Everything else is the shared base setup.

    python -m medclip_jax.main --config configs/slip.py:demo --workdir runs/slip_demo
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return base.method_config("slip", arg)
