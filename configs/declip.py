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

QUEUE_SIZES = {"tiny": 128, "rehearsal": 128, "demo": 4096, "paper": 65536}


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    preset = base.preset_name(arg)
    config = base.apply_preset(base.get_base_config(), arg)
    config.method = "declip"
    config.loss = ml_collections.ConfigDict(dict(
        clip_weight=0.0, mvs_weight=0.4, iss_weight=0.2, tss_weight=0.2, nns_weight=0.2,
        mvs_pairs="all", nns_views="all", queue_size=QUEUE_SIZES.get(preset, 4096),
        duplicate_captions=False))
    config.model.ssl_head.kind = "simsiam"
    if preset == "paper":  # SimSiam's projector 2048-2048-2048 and bottleneck predictor 512.
        config.model.ssl_head.hidden_dim = 2048
        config.model.ssl_head.out_dim = 2048
        config.model.ssl_head.predictor_hidden_dim = 512
    else:
        config.model.ssl_head.predictor_hidden_dim = max(config.model.ssl_head.out_dim // 4, 1)
    config.model.mlm_head = True
    config.data.image_views = 1
    config.data.view_augment.flip = False
    config.data.text_views = 1
    config.data.mlm.enabled = True
    return config
