"""CLIP (Radford et al. 2021, arXiv 2103.00020): symmetric InfoNCE over the global batch; no
heads beyond the towers' projections. LiT (Zhai et al. 2022) is CLIP with part of the image
tower locked: a config (`configs/lit.py`, the `lock` option of every method), not a method,
since its loss, heads, inputs and state are CLIP's; it is listed here as a variant so that
benchmarks and tests cover it."""

import ml_collections

from medclip_jax.losses import clip
from medclip_jax.methods._base import Method, Variant


def configure(config: ml_collections.ConfigDict, preset: str) -> None:
    config.loss = ml_collections.ConfigDict({"duplicate_captions": False})


METHOD = Method(
    name="clip", title="CLIP (Radford et al. 2021): symmetric InfoNCE",
    loss=clip.clip_loss_from_outputs, configure=configure, duplicate_captions=True,
    variants={"lit": Variant(config="lit", arg_suffix=",lock=tower")})
