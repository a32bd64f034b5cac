"""The device mesh, parameter partitioning rules, and host-local <-> global arrays.

All mesh logic lives here. The mesh has two axes:

* ``data``: pure data parallelism (params replicated along it);
* ``fsdp``: data parallelism whose params and optimizer state are also sharded along it.

The batch is split over both axes together. Axes are `AxisType.Auto` (decided once, here): with
JAX's default Explicit axes a linen embedding lookup on a batch-sharded input and the global
``image @ text.T`` of the contrastive losses raise sharding-type errors; with Auto axes XLA inserts
the all-gathers the global-batch losses need.

Parameter rules are ``(regex, spec)`` pairs matched with ``re.search`` against the '/'-joined
path of each leaf (``params/image/block_0/attn/query/kernel``); the first match wins. A spec is

* ``"fsdp"``: shard the largest dimension that the fsdp axis size divides; replicate otherwise,
  and below ``config.sharding.fsdp_min_size`` elements;
* ``"replicate"``;
* a comma-separated list of axis names or ``None`` per dimension (``"None,fsdp"``).

The optimizer state is not matched against the rules: each moment takes its parameter's
sharding (`mirrored_shardings`).
"""

import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from medclip_jax.errors import UserError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """Builds the (data, fsdp) mesh; one axis may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    unknown = set(axis_sizes) - set(MESH_AXES)
    if unknown:
        raise UserError(f"config.mesh: unknown axes {sorted(unknown)}; expected {MESH_AXES}")
    sizes = [int(axis_sizes.get(name, 1)) for name in MESH_AXES]
    if sizes.count(-1) > 1:
        raise UserError("config.mesh: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
        raise UserError(f"config.mesh: axis sizes {dict(zip(MESH_AXES, sizes))} do not fit "
                        f"{len(devices)} devices")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != len(devices):
        raise UserError(f"config.mesh: axis sizes {dict(zip(MESH_AXES, sizes))} multiply to "
                        f"{int(np.prod(sizes))}, but there are {len(devices)} devices")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
    """How many shards the global batch is split into."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split across all data-parallel devices."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "config.batch_size") -> None:
    """The global batch must split evenly over data-parallel devices and processes."""
    dp = data_parallel_size(mesh)
    if global_batch_size <= 0 or global_batch_size % dp:
        raise UserError(f"{field}={global_batch_size} is not divisible by the data-parallel "
                        f"size {dp} (config.mesh)")
    if global_batch_size % jax.process_count():
        raise UserError(f"{field}={global_batch_size} is not divisible by the process count "
                        f"{jax.process_count()}")


def path_to_str(path: Sequence[Any]) -> str:
    """'/'-joined names of a tree path: dict keys, attribute names and sequence indices."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _spec_for(spec: str, shape: Sequence[int], mesh: Mesh, path: str,
              fsdp_min_size: int = 0) -> P:
    spec = spec.strip()
    if spec == "replicate" or not shape:
        return P()
    if spec == "fsdp":
        size = mesh.shape["fsdp"]
        if size == 1 or int(np.prod(shape)) < fsdp_min_size:
            return P()
        for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if shape[dim] % size == 0:
                return P(*[("fsdp" if d == dim else None) for d in range(len(shape))])
        return P()
    axes = [None if a.strip() in ("None", "") else a.strip() for a in spec.split(",")]
    if len(axes) != len(shape):
        raise UserError(f"config.sharding.rules: spec {spec!r} has {len(axes)} dims but "
                        f"{path} has shape {tuple(shape)}")
    for axis, dim in zip(axes, shape):
        if axis is not None and (axis not in MESH_AXES or dim % mesh.shape[axis]):
            raise UserError(f"config.sharding.rules: cannot shard dim {dim} of {path} over "
                            f"mesh axis {axis!r}")
    return P(*axes)


def tree_partition_specs(tree: Any, rules: Sequence[tuple[str, str]], mesh: Mesh,
                         fsdp_min_size: int = 0) -> Any:
    """PartitionSpecs for every leaf of `tree` (arrays or ShapeDtypeStructs) by regex rules
    (the first match wins; no match: replicated). A rule that decides no leaf is logged: a
    typo or an anchor that never matches would otherwise change nothing, silently."""
    compiled = [(re.compile(pattern), spec) for pattern, spec in rules]
    used = set()

    def leaf_spec(path, leaf):
        name = path_to_str(path)
        shape = getattr(leaf, "shape", ())
        for i, (pattern, spec) in enumerate(compiled):
            if pattern.search(name):
                used.add(i)
                return _spec_for(spec, shape, mesh, name, fsdp_min_size)
        return P()

    specs = jax.tree_util.tree_map_with_path(leaf_spec, tree)
    for i, (pattern, spec) in enumerate(rules):
        if i not in used:
            logging.warning("config.sharding.rules: (%r, %r) decides no parameter (none "
                            "matches it, or an earlier rule matched first)", pattern, spec)
    return specs


def tree_shardings(tree: Any, rules: Sequence[tuple[str, str]], mesh: Mesh,
                   fsdp_min_size: int = 0) -> Any:
    """NamedShardings for every leaf of `tree` by regex rules."""
    specs = tree_partition_specs(tree, rules, mesh, fsdp_min_size)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


def mirrored_shardings(tree: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a tree that holds copies of the params (an optimizer state: Adam's moments
    under ``.../mu/<param path>``): a leaf whose path ends with a param's path, at the param's
    shape, gets that param's sharding; every other leaf (step counts) is replicated.

    Derived from the tree's structure, not by matching the sharding rules a second time
    against optimizer paths, where an anchored rule (``^text/``) misses and a moment would be
    sharded unlike its parameter.
    """
    def names(path) -> tuple[str, ...]:
        return tuple(path_to_str([entry]) for entry in path)

    param_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    sharding_leaves = jax.tree.leaves(param_shardings,
                                      is_leaf=lambda x: isinstance(x, NamedSharding))
    by_path = {names(path): (tuple(leaf.shape), leaf_sharding)
               for (path, leaf), leaf_sharding in zip(param_leaves, sharding_leaves)}

    def leaf_sharding(path, leaf):
        path = names(path)
        for start in range(len(path)):   # the longest matching suffix first
            shape, found = by_path.get(path[start:], (None, None))
            if found is not None and shape == tuple(getattr(leaf, "shape", ())):
                return found
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def to_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays split over the data-parallel devices.

    Each process passes its own slice; global row order is process 0's rows, then process 1's.
    Non-numeric fields (strings) stay on the host and are dropped here.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "biuf":
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def from_host(x: np.ndarray, target: jax.sharding.Sharding) -> jax.Array:
    """A host array that every process holds whole -> a global array with `target` sharding
    (each device takes its slice; no cross-host transfer)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, target, lambda index: x[index])


def any_process(flag: bool) -> bool:
    """True on every process when `flag` holds on any of them (one all-gather when several)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.array([bool(flag)]))))


def all_processes(flag: bool) -> bool:
    """True on every process when `flag` holds on all of them."""
    return not any_process(not flag)


def to_host(x: Any) -> np.ndarray:
    """Numpy copy of host data or of a jax Array, gathered from every process if sharded."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct`s of `abstract` carrying the matching leaf of `shardings`."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
