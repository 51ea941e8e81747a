"""The one mesh: building it from config, and logical axis names -> mesh axes.

Every array that is sharded names its dimensions with logical axes (`batch`,
`length`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`, `norm`,
`expert`, `q_lora`, `kv_lora`).
`DEFAULT_RULES` maps them onto the mesh axes (`data`, `fsdp`, `tensor`, `expert`); this is
the only place where that mapping lives. The `expert` mesh axis (size 1 unless a 4-entry
mesh shape asks for more) is expert parallelism: MoE expert weights are split over it, and
so is the batch (the rest of the model runs data-parallel over it). A mesh axis is dropped
for a dimension it does not divide (the dimension is then replicated over that axis).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# logical axis -> mesh axes (a tuple is sharded over their product).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp", "expert")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("expert", "expert"),  # MoE expert weights (and router columns)
    ("q_lora", None),  # MLA's low-rank query and key-value latents (r1jax.model.mla)
    ("kv_lora", None),
)

_CURRENT: list[tuple[Mesh, tuple]] = []


def make_mesh(shape: Sequence[int] = (1, 1, 1), devices: Sequence[Any] | None = None) -> Mesh:
  """Mesh over (data, fsdp, tensor, expert); `-1` in one slot takes the remaining devices.
  A 3-entry shape has expert = 1."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) not in (3, 4):
    raise ValueError(f"mesh shape must have 3 or 4 entries (data, fsdp, tensor[, expert]), "
                     f"got {shape}")
  shape += [1] * (4 - len(shape))
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape may contain at most one -1, got {shape}")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    if math.prod(shape) > len(devices):
      raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, "
                       f"only {len(devices)} available")
    devices = devices[: math.prod(shape)]
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def rules_dict(rules: Sequence[tuple[str, Any]] | Mapping[str, Any] | None = None) -> dict:
  rules = DEFAULT_RULES if rules is None else rules
  return dict(rules.items() if isinstance(rules, Mapping) else rules)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, rules=None) -> P:
  """PartitionSpec for logical `axes`; drops mesh axes that do not divide `shape`."""
  r = rules_dict(rules)
  spec, used = [], set()
  for i, name in enumerate(axes):
    target = r.get(name) if name is not None else None
    if name is not None and name not in r:
      raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(r)}")
    if target is None:
      spec.append(None)
      continue
    target = (target,) if isinstance(target, str) else tuple(target)
    keep = []
    size = shape[i] if shape is not None else None
    for ax in target:
      if ax in used:
        continue
      n = mesh.shape[ax] if mesh is not None else 1
      if size is not None and mesh is not None:
        if size % (n * math.prod(mesh.shape[a] for a in keep)):
          continue
      if mesh is not None and n == 1:
        continue
      keep.append(ax)
    used.update(keep)
    spec.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
  return P(*spec)


def named_sharding(mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int] | None = None,
                   rules=None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def tree_shardings(mesh: Mesh, axes_tree: Any, shapes_tree: Any, rules=None) -> Any:
  """Shardings for a pytree given its logical-axes pytree (tuples are leaves)."""
  return jax.tree.map(
      lambda axes, x: named_sharding(mesh, axes, np.shape(x), rules),
      axes_tree, shapes_tree, is_leaf=lambda a: isinstance(a, tuple))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=None) -> Iterator[Mesh]:
  """Activate `mesh` for `constrain` (activation sharding hints) while tracing."""
  _CURRENT.append((mesh, tuple(rules_dict(rules).items())))
  try:
    yield mesh
  finally:
    _CURRENT.pop()


def current_mesh() -> Mesh | None:
  return _CURRENT[-1][0] if _CURRENT else None


def kernel_axes() -> dict[str, tuple[str, ...]]:
  """`token_logprobs`'s split of its rows and vocabulary, by the active rules: rows over the
  mesh axes of `batch`, the vocabulary over those of `vocab` (so the fused kernel takes the
  activations and the unembedding as the model lays them out, without a reshard)."""
  rules = dict(_CURRENT[-1][1]) if _CURRENT else rules_dict()
  axes = lambda name: (() if rules.get(name) is None else (rules[name],)
                       if isinstance(rules[name], str) else tuple(rules[name]))
  return {"row_axes": axes("batch"), "vocab_axes": axes("vocab")}


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding hint for an activation by logical axes; a no-op without an active mesh."""
  if not _CURRENT:
    return x
  mesh, rules = _CURRENT[-1]
  if mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, named_sharding(mesh, axes, x.shape, rules))


def batch_parallel_size(mesh: Mesh | None, rules=None) -> int:
  """How many ways the `batch` axis is split on `mesh` (1 without a mesh)."""
  if mesh is None:
    return 1
  spec = named_sharding(mesh, ("batch",), rules=rules).spec[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return math.prod(mesh.shape[a] for a in axes)


def shard_batch(tree: Any, mesh: Mesh, rules=None) -> Any:
  """Place host arrays on `mesh`, leading dim over the `batch` axes, the rest replicated.

  Every process passes the same global values (the trainer works on one global batch
  on every host), so this is valid on multi-host meshes too.
  """
  def put(x):
    if x is None:
      return None
    axes = ("batch",) + (None,) * (np.ndim(x) - 1)
    return jax.device_put(x, named_sharding(mesh, axes, np.shape(x), rules))
  return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
  """Fully gather (possibly multi-host) arrays into host numpy arrays."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)
