"""LiT and partial freezing (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text
Tuning"), for the benchmark's transfer question: CLIP training with some of the image tower
locked. Locked params get no update and no optimizer state (``optim.lr_multipliers`` rules of
0, see ``medclip_jax/optim.py``). Meant to start from pretrained image weights; without them
the locked part stays at its random initialisation.

``--config configs/lit.py:<preset>[,lock=<what>]``, with ``<what>``:

* ``tower`` (default): the whole image tower locked, the image projection trained;
* ``all``: tower and image projection locked (LiT's "Lu": only the text side learns);
* ``<k>``: the patch/position embeddings, ``ln_pre`` and the first k transformer blocks locked;
* ``none``: everything trained (plain CLIP, the control).

    python -m medclip_jax.main --config configs/lit.py:demo,lock=tower --workdir runs/lit_demo
"""

import ml_collections

from configs import base
from medclip_jax.errors import UserError

EMBEDDINGS = "patch_embed|cls_token|pos_embed|ln_pre"


def lock_rules(lock: str, depth: int) -> tuple[tuple[str, float], ...]:
    """`optim.lr_multipliers` rules that freeze the image-tower part named by `lock`."""
    if lock == "none":
        return ()
    if lock == "tower":
        return ((r"^image/", 0.0),)
    if lock == "all":
        return ((r"^image/", 0.0), (r"^image_proj/", 0.0))
    if lock.isdigit() and 0 <= int(lock) <= depth:
        blocks = "|".join(f"block_{i}" for i in range(int(lock)))
        return ((rf"^image/({EMBEDDINGS}{'|' + blocks if blocks else ''})(/|$)", 0.0),)
    raise UserError(f"config argument lock={lock!r}: choose tower, all, none or a block count "
                    f"in [0, {depth}]")


def parse_arg(arg: str) -> tuple[str, str]:
    """"demo,lock=3" -> ("demo", "3")."""
    preset, *options = arg.split(",")
    lock = "tower"
    for option in options:
        key, _, value = option.partition("=")
        if key != "lock" or not value:
            raise UserError(f"config argument {option!r}: expected lock=<tower|all|none|k>")
        lock = value
    return preset, lock


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    preset, lock = parse_arg(arg)
    config = base.apply_preset(base.get_base_config(), preset)
    config.method = "clip"
    config.optim.lr_multipliers = lock_rules(lock, config.model.image.depth)
    return config
