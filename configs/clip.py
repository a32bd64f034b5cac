"""CLIP (Radford et al. 2021): symmetric InfoNCE over the global batch.

Presets (``--config configs/clip.py:<preset>``):

* ``demo``: the small model on the embedded synthetic dataset; a few minutes on 2 CPU cores.
      python -m medclip_jax.main --config configs/clip.py:demo --workdir runs/clip_demo
* ``tiny``: the tiny model and the byte tokenizer on the ``tiny`` synthetic build (tests).
* ``paper``: the benchmark's scale: ViT-B/16 at 224 px + 12-layer text transformer, 77 tokens,
  global batch 512, AdamW 5e-5 (0.9, 0.98, 1e-6), weight decay 0.1, cosine schedule, on the
  ROCO + PMC-OA + Quilt-1M + MIMIC-CXR mixture (built with ``data_prep``).
      python -m medclip_jax.main --config configs/clip.py:paper --workdir gs://.../clip \
          --config.data.data_dir=/path/to/tfds --config.data.tokenizer=hf:/path/to/clip
* ``rehearsal``: the paper's data setup (four-corpus ``:size`` mixture, ``captions``, ROCO
  validation) with the tiny model for 4 steps: ``scripts/rehearsal.sh``.

``--config.loss.duplicate_captions=True``: pairs with identical (normalised) captions are
positives, the InfoNCE targets uniform over them (``medclip_jax/losses/clip.py``);
``scripts/duplicate_captions_demo.sh`` compares it with the default on the demo.
"""

import ml_collections

from configs import base


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return base.method_config("clip", arg)
