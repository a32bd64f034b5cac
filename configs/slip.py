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
    config = base.apply_preset(base.get_base_config(), arg)
    config.method = "slip"
    config.loss = ml_collections.ConfigDict({"ssl_temperature": 0.1, "ssl_weight": 1.0,
                                          "duplicate_captions": False})
    config.model.ssl_head.kind = "simclr"
    if base.preset_name(arg) == "paper":  # SLIP's head: 4096-4096-256.
        config.model.ssl_head.hidden_dim = 4096
        config.model.ssl_head.out_dim = 256
    config.data.image_views = 2
    return config
