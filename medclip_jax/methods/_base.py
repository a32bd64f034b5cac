"""`Method`: everything one contrastive method adds to the shared two-tower setup, in one object.

Each module of `medclip_jax.methods` defines one, as `METHOD`; the package's registry finds
them (no list of methods is kept anywhere else).
"""

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections

from medclip_jax.models.heads import NO_HEADS, MethodHeads

#: `(outputs, **config.loss) -> (loss, metrics)`, or `(outputs, method_state, **config.loss)`
#: for a method with state. A loss that lays out its own collectives takes `mesh=` too.
LossFn = Callable[..., tuple[Any, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class MethodState:
    """How a stateful method creates its state and folds a step's outputs into it."""
    init: Callable[[Mapping[str, Any], int], Any]  # (config.loss, embed_dim) -> state
    update: Callable[[Any, Any, Mapping[str, Any]], Any]  # (state, outputs, config.loss)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named run of a method that benchmarks and tests cover as a row of its own: another
    config file (LiT's `configs/lit.py`), a config argument suffix, loss overrides."""
    config: str
    arg_suffix: str = ""
    loss: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _no_outputs(**_: Any) -> set[str]:
    return set()


def _no_heads(model_config: ml_collections.ConfigDict) -> MethodHeads:
    return NO_HEADS


def _nothing_to_check(model_config: ml_collections.ConfigDict) -> None:
    return None


def _keep(config: ml_collections.ConfigDict, preset: str) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Method:
    """One method: its loss, the heads it adds to the towers, the batch entries it needs from
    the input pipeline, its state and its config defaults.

    name          `config.method`; the module's name.
    title         one line: the method and its paper (README, report).
    loss          the loss adapter (`LossFn`); the math is in `medclip_jax.losses.<name>`.
    reads         `(**config.loss) -> output extras` the loss reads with those knobs.
    produced_by   output extra -> the config switch that makes the model produce it (the
                  message when it is missing).
    configure     `(config, preset)`: the method's defaults for config.loss / model / data
                  (what `configs/<name>.py` used to set); config.method is set by the caller.
    model_fields  the `config.model` fields the method owns (its heads' settings).
    check_model   validates those fields (UserError naming `config.model.<field>`).
    heads         `config.model -> MethodHeads`: its Flax heads and their forward pass.
    inputs        pipeline batch entries its heads read (views, MLM inputs).
    state         `MethodState` (DeCLIP's queue), or None.
    duplicate_captions  whether `config.loss.duplicate_captions` has targets in its loss.
    question      the report's research question it is a treatment for, against CLIP:
                  "unimodal" (a unimodal self-supervised loss) or "fine_grained"
                  (token-level alignment); "" for none.
    variants      named extra rows for benchmarks and tests (`Variant`).
    """
    name: str
    title: str
    loss: LossFn
    configure: Callable[[ml_collections.ConfigDict, str], None] = _keep
    reads: Callable[..., set[str]] = _no_outputs
    produced_by: Mapping[str, str] = dataclasses.field(default_factory=dict)
    model_fields: tuple[str, ...] = ()
    check_model: Callable[[ml_collections.ConfigDict], None] = _nothing_to_check
    heads: Callable[[ml_collections.ConfigDict], MethodHeads] = _no_heads
    inputs: tuple[str, ...] = ()
    state: MethodState | None = None
    duplicate_captions: bool = False
    question: str = ""
    variants: Mapping[str, Variant] = dataclasses.field(default_factory=dict)

    def make_config(self, config: ml_collections.ConfigDict, preset: str
                    ) -> ml_collections.ConfigDict:
        """`config` (the base with a preset applied) turned into this method's config."""
        config.method = self.name
        self.configure(config, preset)
        return config
