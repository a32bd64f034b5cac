"""Contrastive losses, one module per method, looked up by `config.method`.

Every loss is a pure function of arrays: `loss_fn(outputs, **method_kwargs) -> (loss, metrics)`
where `outputs` is the model's `EncoderOutputs`. A method that carries state across steps (the
DeCLIP text queue) takes it as a second argument, `loss_fn(outputs, method_state, **kwargs)`,
and registers how to create and update that state in `STATEFUL`; the state lives in the train
state and is checkpointed with it. Adding a method means adding a module and a config file.
"""

import dataclasses
import inspect
from typing import Any, Callable, Mapping

from medclip_jax.errors import UserError
from medclip_jax.losses import (clip, convirt, cyclip, declip, filip, gloria, siglip, slip,
                               vse)

LossFn = Callable[..., tuple[Any, dict[str, Any]]]

REGISTRY: dict[str, LossFn] = {
    "clip": clip.clip_loss_from_outputs,
    "convirt": convirt.convirt_loss_from_outputs,
    "cyclip": cyclip.cyclip_loss_from_outputs,
    "declip": declip.declip_loss_from_outputs,
    "filip": filip.filip_loss_from_outputs,
    "gloria": gloria.gloria_loss_from_outputs,
    "siglip": siglip.siglip_loss_from_outputs,
    "slip": slip.slip_loss_from_outputs,
    "vse": vse.vse_loss_from_outputs,
}


@dataclasses.dataclass(frozen=True)
class MethodState:
    """How a stateful method creates its state and folds a step's outputs into it."""
    init: Callable[[Mapping[str, Any], int], Any]  # (config.loss, embed_dim) -> state
    update: Callable[[Any, Any, Mapping[str, Any]], Any]  # (state, outputs, config.loss)


STATEFUL: dict[str, MethodState] = {
    "declip": MethodState(init=declip.init_state_from_config,
                          update=declip.update_state_from_outputs),
}


def get_loss(method: str) -> LossFn:
    """Returns the registered loss for `method`, or fails naming the config field."""
    if method not in REGISTRY:
        raise UserError(
            f"config.method: unknown method {method!r}; known methods: {sorted(REGISTRY)}")
    return REGISTRY[method]


def takes_mesh(loss_fn: LossFn) -> bool:
    """Losses that lay out their own collectives (SigLIP's ring) take the mesh as `mesh=`."""
    return "mesh" in inspect.signature(loss_fn).parameters


def check_loss_kwargs(method: str, kwargs: Mapping[str, Any]) -> None:
    """`config.loss` must hold only arguments the method's loss accepts."""
    if "mesh" in kwargs:
        raise UserError("config.loss.mesh: the mesh comes from config.mesh, not config.loss")
    leading = (None, None) if method in STATEFUL else (None,)
    try:
        inspect.signature(get_loss(method)).bind(*leading, **kwargs)
    except TypeError as e:
        raise UserError(f"config.loss: {e} (method {method!r})") from None


def init_method_state(method: str, kwargs: Mapping[str, Any], embed_dim: int) -> Any:
    """The method's initial state; an empty dict for stateless methods."""
    if method not in STATEFUL:
        return {}
    return STATEFUL[method].init(kwargs, embed_dim)


def bind_loss(method: str, kwargs: Mapping[str, Any], mesh: Any = None
              ) -> Callable[[Any, Any], tuple[Any, dict[str, Any]]]:
    """`(outputs, method_state) -> (loss, metrics)` with the config's knobs (and the mesh, for
    losses that take one) bound."""
    loss_fn, kwargs = get_loss(method), dict(kwargs)
    if takes_mesh(loss_fn):
        kwargs["mesh"] = mesh
    if method in STATEFUL:
        return lambda outputs, state: loss_fn(outputs, state, **kwargs)
    return lambda outputs, state: loss_fn(outputs, **kwargs)


def bind_state_update(method: str, kwargs: Mapping[str, Any]) -> Callable[[Any, Any], Any]:
    """`(method_state, outputs) -> method_state`; the identity for stateless methods."""
    if method not in STATEFUL:
        return lambda state, outputs: state
    update, kwargs = STATEFUL[method].update, dict(kwargs)
    return lambda state, outputs: update(state, outputs, kwargs)
