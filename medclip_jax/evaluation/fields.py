"""Which record fields an evaluation reads from a dataset: the dataset's own, never training's.

A checkpoint may have been trained on ``caption_field=captions`` (every caption of an image)
or on a field of some other dataset altogether; the datasets it is evaluated on have their own
schemas (classification records hold ``image`` + ``label`` and no caption at all). So every
evaluator resolves its fields from the evaluated dataset:

* image:   ``image``;
* caption: ``captions`` (all captions of an image) when the dataset has it, else ``caption``
  (retrieval, and anything else that reads text from records);
* label:   the task's ``label_field`` from the dataset's metadata, else ``label`` (multi-class
  tasks; a multi-label task always reads its own ``label_field``).

``config.fields`` of the eval config overrides any of them per dataset, as strings
``"<dataset>[@<config>]:<role>=<field>"``, e.g. ``"roco@radiology:caption=caption"`` (retrieve
over the first caption only) or ``"ham10000:label=label"``. A bare dataset name matches every
config of it; ``dataset@config`` only that config (and wins over the bare name).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

from medclip_jax.errors import UserError

ROLES = ("image", "caption", "label")
FIELD = "config.fields"
_OVERRIDE = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+(?:@[A-Za-z0-9_.\-]+)?)"
                       r":(?P<role>[a-z_]+)=(?P<field>[A-Za-z0-9_.\-]+)$")


@dataclasses.dataclass(frozen=True)
class FieldOverride:
    name: str   # dataset or dataset@config
    role: str
    field: str


def parse_overrides(entries: Iterable[str] | None) -> tuple[FieldOverride, ...]:
    """`config.fields` strings -> overrides; a malformed entry names the field and the format."""
    out = []
    for entry in entries or ():
        match = _OVERRIDE.match(str(entry).strip())
        if match is None or match["role"] not in ROLES:
            raise UserError(f"{FIELD}: cannot parse {entry!r}; expected "
                            f"'<dataset>[@<config>]:<role>=<field>' with role one of "
                            f"{', '.join(ROLES)}, e.g. 'roco@radiology:caption=caption'")
        out.append(FieldOverride(match["name"], match["role"], match["field"]))
    return tuple(out)


def override_for(overrides: Sequence[FieldOverride], name: str, role: str) -> str | None:
    """The override of `role` for dataset `name` (``dataset[@config]``): exact name first."""
    dataset = name.split("@", 1)[0]
    exact = [o.field for o in overrides if o.role == role and o.name == name]
    bare = [o.field for o in overrides if o.role == role and o.name == dataset]
    return (exact or bare or [None])[-1]


def _checked(name: str, role: str, field: str, available: Iterable[str]) -> str:
    available = set(available)
    if field not in available:
        raise UserError(f"{FIELD}: {name} has no field {field!r} for its {role} (fields: "
                        f"{', '.join(sorted(available))})")
    return field


def image_field(name: str, available: Iterable[str],
                overrides: Sequence[FieldOverride] = ()) -> str:
    """The encoded-image field of a dataset's records."""
    available = set(available)
    override = override_for(overrides, name, "image")
    if override:
        return _checked(name, "image", override, available)
    if "image" not in available:
        raise UserError(f"dataset {name} has no 'image' field (fields: "
                        f"{', '.join(sorted(available))}); name its image field with "
                        f"{FIELD}=('{name}:image=<field>',)")
    return "image"


def caption_field(name: str, available: Iterable[str],
                  overrides: Sequence[FieldOverride] = ()) -> str:
    """``captions`` when the dataset has it, else ``caption`` (or the override)."""
    available = set(available)
    override = override_for(overrides, name, "caption")
    if override:
        return _checked(name, "caption", override, available)
    for field in ("captions", "caption"):
        if field in available:
            return field
    raise UserError(f"dataset {name} has no caption field ('captions' or 'caption'; fields: "
                    f"{', '.join(sorted(available))}); name one with "
                    f"{FIELD}=('{name}:caption=<field>',)")


def label_field(name: str, task_label_field: str | None,
                overrides: Sequence[FieldOverride] = ()) -> str:
    """The override, else the task's own ``label_field``, else ``label`` (checked by the caller
    against the dataset's fields, with the tasks that read it)."""
    return override_for(overrides, name, "label") or task_label_field or "label"
