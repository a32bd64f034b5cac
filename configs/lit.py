"""LiT and partial freezing (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text
Tuning"), for the benchmark's transfer question: CLIP training with some of the image tower
locked. Locked params get no update and no optimizer state (``optim.lr_multipliers`` rules of
0, see ``medclip_jax/optim.py``). Meant to start from pretrained image weights (the ``paper``
preset starts from ``--config.init.clip``); without them the locked part stays at its random
initialisation.

``--config configs/lit.py:<preset>[,lock=<what>]``; the same ``lock`` option works with every
method's config (``configs/base.py:lock_rules``), this file only makes ``tower`` the default:

* ``tower`` (default): the whole image tower locked, the image projection trained;
* ``all``: tower and image projection locked (LiT's "Lu": only the text side learns);
* ``<k>``: the patch/position embeddings, ``ln_pre`` and the first k transformer blocks locked;
* ``none``: everything trained (plain CLIP, the control).

    python -m medclip_jax.main --config configs/lit.py:demo,lock=tower --workdir runs/lit_demo
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return base.method_config("clip", arg, defaults={"lock": "tower"})
