"""DeCLIP (Li et al. 2022): CLIP plus image self-supervision (SimSiam between the CLIP view and
one augmented view), text self-supervision (masked language modelling on the text tower),
multi-view supervision (the CLIP loss over 2 image views x 2 text views, the second text view by
token dropout) and nearest-neighbour supervision (the nearest text in a FIFO queue of past text
embeddings as an extra positive; the queue lives in the train state). Each term has a weight in
``config.loss`` (0 switches it off; then also switch off the view / head it used, see the
README); defaults are the released code's (see ``medclip_jax/losses/declip.py``).

The extra image view is paired with the caption in MVS, so it is not flipped (flips swap "left"
and "right" in radiology reports). MLM uses the tokenizer's mask token; a tokenizer without one
(CLIP's BPE) gets one extra id, and the text vocabulary one extra row.

    python -m medclip_jax.main --config configs/declip.py:demo --workdir runs/declip_demo
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return base.method_config("declip", arg)
