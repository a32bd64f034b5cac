"""The training methods, one module each; the one registry of them.

Every module here (not starting with ``_``) defines ``METHOD``, a `Method`: its loss, the heads
it adds to the towers, the batch entries it needs, its state and its config defaults. The
registry is whatever this package holds: training, benchmarks, tests, the demo script
(``python -m medclip_jax.methods``) and the report all read it. Adding a method means adding a
module here and its config file ``configs/<name>.py``.

The functions below are the train step's view of a method: `bind_loss` (with its knobs and the
mesh bound), `init_method_state` / `bind_state_update`, and `check_loss_kwargs` at start-up.
"""

import functools
import importlib
import inspect
import pkgutil
from typing import Any, Callable, Mapping

from medclip_jax.errors import UserError
from medclip_jax.methods._base import LossFn, Method, MethodState, Variant

__all__ = ["LossFn", "Method", "MethodState", "Variant", "bind_loss", "bind_state_update",
           "check_loss_kwargs", "get", "init_method_state", "names", "registry"]

#: The switch for the one output extra that comes from the pipeline for every method.
CAPTION_HASH_SOURCE = ("config.loss.duplicate_captions=False, or train on the input pipeline's "
                       "batches (data.pipeline.BatchLoader adds it)")


@functools.cache
def registry() -> dict[str, Method]:
    """Every method of this package by name, sorted by name."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        method = getattr(module, "METHOD", None)
        if not isinstance(method, Method) or method.name != info.name:
            raise TypeError(f"{module.__name__} must define METHOD = Method(name="
                            f"{info.name!r}, ...)")
        found[method.name] = method
    return dict(sorted(found.items()))


def names() -> list[str]:
    return list(registry())


def get(name: str) -> Method:
    """The registered method `name`, or fails naming the config field."""
    methods = registry()
    if name not in methods:
        raise UserError(f"config.method: unknown method {name!r}; known methods: "
                        f"{sorted(methods)}")
    return methods[name]


def takes_mesh(loss_fn: LossFn) -> bool:
    """Losses that lay out their own collectives (SigLIP's ring) take the mesh as `mesh=`."""
    return "mesh" in inspect.signature(loss_fn).parameters


def required_outputs(method: Method, kwargs: Mapping[str, Any]) -> set[str]:
    """The output extras the method's loss reads with these `config.loss` knobs."""
    needed = method.reads(**kwargs)
    if kwargs.get("duplicate_captions"):
        needed = needed | {"caption_hash"}
    return needed


def check_outputs(name: str, kwargs: Mapping[str, Any], outputs: Any) -> None:
    """Fails, naming the config switch, when the model did not produce what the loss reads."""
    method = get(name)
    sources = {"caption_hash": CAPTION_HASH_SOURCE, **method.produced_by}
    for field in sorted(required_outputs(method, kwargs)):
        if getattr(outputs, field, None) is None:
            raise UserError(f"config.method={name!r} with these config.loss values needs the "
                            f"model output {field!r}; set {sources.get(field, '?')}")


def check_loss_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """`config.loss` must hold only arguments the method's loss accepts."""
    method = get(name)
    if "mesh" in kwargs:
        raise UserError("config.loss.mesh: the mesh comes from config.mesh, not config.loss")
    if "duplicate_captions" in kwargs:
        if not method.duplicate_captions:
            supported = [m.name for m in registry().values() if m.duplicate_captions]
            raise UserError(f"config.loss.duplicate_captions: method {name!r} has no "
                            f"duplicate-caption targets; methods that do: {supported}")
        if not isinstance(kwargs["duplicate_captions"], bool):
            raise UserError(f"config.loss.duplicate_captions must be True or False, got "
                            f"{kwargs['duplicate_captions']!r}")
    leading = (None, None) if method.state is not None else (None,)
    try:
        inspect.signature(method.loss).bind(*leading, **kwargs)
    except TypeError as e:
        raise UserError(f"config.loss: {e} (method {name!r})") from None


def init_method_state(name: str, kwargs: Mapping[str, Any], embed_dim: int) -> Any:
    """The method's initial state; an empty dict for stateless methods."""
    state = get(name).state
    return {} if state is None else state.init(kwargs, embed_dim)


def bind_loss(name: str, kwargs: Mapping[str, Any], mesh: Any = None
              ) -> Callable[[Any, Any], tuple[Any, dict[str, Any]]]:
    """`(outputs, method_state) -> (loss, metrics)` with the config's knobs (and the mesh, for
    losses that take one) bound."""
    method, knobs = get(name), dict(kwargs)
    call_kwargs = {**knobs, "mesh": mesh} if takes_mesh(method.loss) else knobs

    def bound(outputs, state):
        check_outputs(name, knobs, outputs)
        if method.state is not None:
            return method.loss(outputs, state, **call_kwargs)
        return method.loss(outputs, **call_kwargs)

    return bound


def bind_state_update(name: str, kwargs: Mapping[str, Any]) -> Callable[[Any, Any], Any]:
    """`(method_state, outputs) -> method_state`; the identity for stateless methods."""
    state = get(name).state
    if state is None:
        return lambda method_state, outputs: method_state
    update, kwargs = state.update, dict(kwargs)
    return lambda method_state, outputs: update(method_state, outputs, kwargs)


def batch_keys(name: str) -> tuple[str, ...]:
    """The batch entries the model and the loss of `name` read (views and MLM inputs only
    when the pipeline made them; the caption hash for the duplicate-caption targets)."""
    return ("image", "text_ids", "text_mask", "caption_hash", *get(name).inputs)


def runs() -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Every method and its variants as `label -> (config file, argument suffix, loss
    overrides)`: the rows of benchmarks and of the per-method tests."""
    rows = {}
    for method in registry().values():
        rows[method.name] = (method.name, "", {})
        for label, variant in method.variants.items():
            rows[label] = (variant.config, variant.arg_suffix, dict(variant.loss))
    return rows
