"""Contrastive losses, one module per method, looked up by `config.method`.

Every loss is a pure function of arrays: `loss_fn(outputs, **method_kwargs) -> (loss, metrics)`
where `outputs` is the model's `EncoderOutputs`. A method registers itself here by name; adding a
method means adding a module and a config file, nothing else.
"""

import inspect
from typing import Any, Callable, Mapping

from medclip_jax.errors import UserError
from medclip_jax.losses import clip, convirt, cyclip, vse

LossFn = Callable[..., tuple[Any, dict[str, Any]]]

REGISTRY: dict[str, LossFn] = {
    "clip": clip.clip_loss_from_outputs,
    "convirt": convirt.convirt_loss_from_outputs,
    "cyclip": cyclip.cyclip_loss_from_outputs,
    "vse": vse.vse_loss_from_outputs,
}


def get_loss(method: str) -> LossFn:
    """Returns the registered loss for `method`, or fails naming the config field."""
    if method not in REGISTRY:
        raise UserError(
            f"config.method: unknown method {method!r}; known methods: {sorted(REGISTRY)}")
    return REGISTRY[method]


def check_loss_kwargs(method: str, kwargs: Mapping[str, Any]) -> None:
    """`config.loss` must hold only arguments the method's loss accepts."""
    try:
        inspect.signature(get_loss(method)).bind(None, **kwargs)
    except TypeError as e:
        raise UserError(f"config.loss: {e} (method {method!r})") from None
