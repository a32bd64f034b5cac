"""CLIP + image-text matching (ALBEF's ITM, Li et al. 2021): the CLIP loss plus a binary
matching loss from a light MLP head on pairs of pooled embeddings, each image's hardest other
text and each text's hardest other image (by cosine) as negatives
(``medclip_jax/methods/itm.py``). ``loss.itm_weight`` (1.0), ``model.itm_hidden_dim``
(embed_dim). Everything else is the shared base setup.

    python -m medclip_jax.main --config configs/itm.py:demo --workdir runs/itm_demo
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return base.method_config("itm", arg)
