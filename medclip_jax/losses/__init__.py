"""Contrastive losses, one module per method, looked up by `config.method`.

Every loss is a pure function of arrays: `loss_fn(outputs, **method_kwargs) -> (loss, metrics)`
where `outputs` is the model's `EncoderOutputs`. A method that carries state across steps (the
DeCLIP text queue) takes it as a second argument, `loss_fn(outputs, method_state, **kwargs)`,
and registers how to create and update that state in `STATEFUL`; the state lives in the train
state and is checkpointed with it. Adding a method means adding a module and a config file.

Losses whose adapter takes ``duplicate_captions`` (`supports_duplicate_captions`: CLIP, ConVIRT,
CyCLIP, SigLIP, SLIP, DeCLIP, VSE++) can treat pairs with identical normalised captions in the
global batch as positives (`config.loss.duplicate_captions=True`; the targets are defined in
`clip`, the caption hash comes from the input pipeline through `outputs.caption_hash`); for the
others that field fails at start-up.
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


#: The config switches that make the model produce each optional `EncoderOutputs` field.
PRODUCED_BY = {
    "logit_bias": "config.model.init_logit_bias",
    "image_token_emb": "config.model.token_projection",
    "text_token_emb": "config.model.token_projection",
    "view_image_emb": "config.data.image_views > 0",
    "view_text_emb": "config.data.text_views > 0",
    "ssl_emb": "config.model.ssl_head.kind='simclr' and config.data.image_views > 0",
    "simsiam_z": "config.model.ssl_head.kind='simsiam' and config.data.image_views > 0",
    "simsiam_p": "config.model.ssl_head.kind='simsiam' and config.data.image_views > 0",
    "mlm_logits": "config.model.mlm_head and config.data.mlm.enabled",
    "mlm_labels": "config.data.mlm.enabled",
    "mlm_weights": "config.data.mlm.enabled",
    "caption_hash": ("config.loss.duplicate_captions=False, or train on the input pipeline's "
                     "batches (data.pipeline.BatchLoader adds it)"),
}

_TOKENS = {"image_token_emb", "text_token_emb"}


def _captions(duplicate_captions: bool = False, **_: Any) -> set[str]:
    return clip.caption_outputs(duplicate_captions)


#: `(**config.loss) -> fields` for the methods that read optional outputs.
REQUIRED_OUTPUTS: dict[str, Callable[..., set[str]]] = {
    "clip": _captions,
    "convirt": _captions,
    "cyclip": _captions,
    "declip": declip.required_outputs,
    "filip": lambda **_: _TOKENS,
    "gloria": lambda **_: _TOKENS,
    "siglip": lambda duplicate_captions=False, **_: (
        {"logit_bias"} | clip.caption_outputs(duplicate_captions)),
    "slip": slip.required_outputs,
    "vse": _captions,
}


def check_outputs(method: str, kwargs: Mapping[str, Any], outputs: Any) -> None:
    """Fails, naming the config switch, when the model did not produce what the loss reads."""
    if method not in REQUIRED_OUTPUTS:
        return
    for field in sorted(REQUIRED_OUTPUTS[method](**kwargs)):
        if getattr(outputs, field) is None:
            raise UserError(f"config.method={method!r} with these config.loss values needs the "
                            f"model output {field!r}; set {PRODUCED_BY[field]}")


def get_loss(method: str) -> LossFn:
    """Returns the registered loss for `method`, or fails naming the config field."""
    if method not in REGISTRY:
        raise UserError(
            f"config.method: unknown method {method!r}; known methods: {sorted(REGISTRY)}")
    return REGISTRY[method]


def takes_mesh(loss_fn: LossFn) -> bool:
    """Losses that lay out their own collectives (SigLIP's ring) take the mesh as `mesh=`."""
    return "mesh" in inspect.signature(loss_fn).parameters


def supports_duplicate_captions(method: str) -> bool:
    """Whether the method's loss has duplicate-caption targets (`config.loss.duplicate_captions`,
    see `medclip_jax.losses.clip`)."""
    return "duplicate_captions" in inspect.signature(get_loss(method)).parameters


def check_loss_kwargs(method: str, kwargs: Mapping[str, Any]) -> None:
    """`config.loss` must hold only arguments the method's loss accepts."""
    if "mesh" in kwargs:
        raise UserError("config.loss.mesh: the mesh comes from config.mesh, not config.loss")
    if "duplicate_captions" in kwargs:
        if not supports_duplicate_captions(method):
            supported = sorted(m for m in REGISTRY if supports_duplicate_captions(m))
            raise UserError(f"config.loss.duplicate_captions: method {method!r} has no "
                            f"duplicate-caption targets; methods that do: {supported}")
        if not isinstance(kwargs["duplicate_captions"], bool):
            raise UserError(f"config.loss.duplicate_captions must be True or False, got "
                            f"{kwargs['duplicate_captions']!r}")
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
    loss_fn, knobs = get_loss(method), dict(kwargs)
    call_kwargs = {**knobs, "mesh": mesh} if takes_mesh(loss_fn) else knobs

    def bound(outputs, state):
        check_outputs(method, knobs, outputs)
        if method in STATEFUL:
            return loss_fn(outputs, state, **call_kwargs)
        return loss_fn(outputs, **call_kwargs)

    return bound


def bind_state_update(method: str, kwargs: Mapping[str, Any]) -> Callable[[Any, Any], Any]:
    """`(method_state, outputs) -> method_state`; the identity for stateless methods."""
    if method not in STATEFUL:
        return lambda state, outputs: state
    update, kwargs = STATEFUL[method].update, dict(kwargs)
    return lambda state, outputs: update(state, outputs, kwargs)
