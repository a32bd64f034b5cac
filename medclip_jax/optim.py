"""Optimizer: AdamW, warmup + cosine schedule, decay masks, freezing and lr multipliers.

Rules on parameters are regexes matched with ``re.search`` on the '/'-joined param path
(``image/block_3/attn/query/kernel``), the same convention as the sharding rules:

* ``optim.no_decay_regex``: parameters without weight decay, besides every parameter with fewer
  than two dimensions (biases, LayerNorm scales, the logit scale);
* ``optim.lr_multipliers``: ``((regex, multiplier), ...)``; the first match wins, unmatched params
  get 1.0, and a multiplier of 0 freezes the parameter (no update, no optimizer state, excluded
  from the gradient-norm clip). LiT and partial freezing presets build these rules in
  ``configs/base.py`` (``lock_rules``, the ``lock=`` option of every method config).
"""

import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from medclip_jax.errors import UserError
from medclip_jax.settings import OptimSettings
from medclip_jax.sharding import path_to_str

def total_train_steps(num_examples: int, num_epochs: float, global_batch_size: int) -> int:
    """Steps for `num_epochs` passes over `num_examples` with full global batches."""
    steps = int(num_epochs * num_examples) // global_batch_size
    if steps <= 0:
        raise UserError(f"config.num_epochs={num_epochs} over {num_examples} examples at "
                        f"batch {global_batch_size} gives no training step")
    return steps


def warmup_cosine_schedule(peak_lr: float, total_steps: int, warmup_steps: int,
                           end_lr_fraction: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to `peak_lr`, then cosine decay to `end_lr_fraction * peak_lr`."""
    warmup_steps = min(warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup_steps, 1)
    end_lr = peak_lr * end_lr_fraction

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak_lr * step / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = end_lr + 0.5 * (peak_lr - end_lr) * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def _label_tree(params: Any, fn) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_to_str(p), x), params)


def lr_multipliers(params: Any, rules: Sequence[tuple[str, float]]) -> Any:
    """Per-leaf learning-rate multiplier from the first matching rule (1.0 if none)."""
    compiled = [(re.compile(pattern), float(multiplier)) for pattern, multiplier in rules]

    def multiplier_for(name, _):
        for pattern, multiplier in compiled:
            if pattern.search(name):
                return multiplier
        return 1.0

    return _label_tree(params, multiplier_for)


def weight_decay_mask(params: Any, no_decay_regex: str) -> Any:
    """True where AdamW's decoupled weight decay applies."""
    pattern = re.compile(no_decay_regex) if no_decay_regex else None
    return _label_tree(
        params, lambda name, x: len(x.shape) >= 2 and not (pattern and pattern.search(name)))


def scale_by_tree(factors: Any) -> optax.GradientTransformation:
    """Stateless per-leaf scaling by a tree of Python floats."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def frozen_mask(params: Any, optim_config: OptimSettings | Any) -> Any:
    """A tree of bools like `params`: True where the lr multiplier is 0 (never updated, so
    never differentiated: `train.make_grad_fn`)."""
    return _zero(lr_multipliers(params, OptimSettings.from_config(optim_config).lr_multipliers))


def _zero(multipliers: Any) -> Any:
    return jax.tree.map(lambda m: m == 0.0, multipliers)


def make_optimizer(optim_config: OptimSettings | Any, params: Any, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The full optimizer for `params` (arrays or ShapeDtypeStructs) and its base schedule.

    AdamW written out as a chain so that frozen parameters carry no Adam moments at all:
    zero frozen grads -> clip global norm -> Adam moments (trainable leaves only) ->
    decoupled weight decay (masked) -> -lr(step) -> per-leaf lr multiplier.
    `optim_config`: `settings.OptimSettings`, or a ``config.optim`` ConfigDict parsed into one
    (its defaults and checks).
    """
    optim_config = OptimSettings.from_config(optim_config)
    schedule = warmup_cosine_schedule(
        optim_config.learning_rate, total_steps, optim_config.warmup(total_steps),
        optim_config.end_lr_fraction)
    multipliers = lr_multipliers(params, optim_config.lr_multipliers)
    frozen = _zero(multipliers)  # = frozen_mask, from the multipliers already matched
    trainable = jax.tree.map(lambda f: not f, frozen)
    decay = jax.tree.map(lambda d, t: d and t,
                         weight_decay_mask(params, optim_config.no_decay_regex), trainable)

    chain = [optax.masked(optax.set_to_zero(), frozen)]
    if optim_config.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
    chain += [
        optax.masked(optax.scale_by_adam(b1=optim_config.b1, b2=optim_config.b2,
                                         eps=optim_config.eps), trainable),
        optax.add_decayed_weights(optim_config.weight_decay, mask=decay),
        optax.scale_by_schedule(lambda step: -schedule(step)),
        scale_by_tree(multipliers),
    ]
    return optax.chain(*chain), schedule
