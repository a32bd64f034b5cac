"""FILIP (Yao et al. 2022): token-wise late interaction. Every patch token and every text token
goes through the same projection as the pooled embedding (``model.token_projection =
"shared"``); image i vs text j scores the mean over patches of the best-matching real text token,
and text vs image the other way round; symmetric InfoNCE with the learnable logit scale.
Computed in blocks of ``loss.chunk_size`` texts (rematerialised), so memory never holds the
[B, B, N, L] token products. ``loss.token_keep_fraction`` < 1 keeps only the tokens with the
highest token-wise max similarity (the paper's 25% efficiency option). Everything else is the
shared base setup.

    python -m medclip_jax.main --config configs/filip.py:demo --workdir runs/filip_demo
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return base.method_config("filip", arg)
