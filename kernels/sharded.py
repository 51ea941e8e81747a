"""`token_logprobs` under `jit` on operands sharded over a multi-device mesh.

A Pallas kernel (a Mosaic or Triton custom call) cannot be split across devices by
XLA's SPMD partitioner ("Mosaic kernels cannot be automatically partitioned"), and
`custom_partitioning` is not wired through on TPU (jax-ml/jax#38196). So when the
operands live on a mesh of several devices, `token_logprobs` runs itself under
`shard_map` over that mesh: each device takes a block of rows and a slice of the
vocabulary, merges the per-row statistics over the vocabulary axes, and autodiff sums
d hidden over the vocabulary axes and d unembed over the row axes. The mesh is the one
the operands carry (`jax.typeof(x).sharding.mesh`, set for every array derived from a
sharded one inside `jit`), or an explicit one.

Which mesh axes split what: the vocabulary over `vocab_axes` (default: the axis named
"tensor" when the mesh has one, r1jax's convention), the rows over `row_axes` (default:
every other axis), each list cut to the axes whose product divides the dimension. r1jax's
own callers pass the axes of the `batch` and `vocab` rules (`r1jax.mesh.kernel_axes`), so
the kernel takes the activations as the model lays them out; inputs sharded otherwise are
resharded by the compiler on the way in.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, PartitionSpec as P


def operand_mesh(*xs):
  """The (abstract) mesh of the first operand that has one of > 1 device, else None.

  Returns None inside `shard_map` (a mesh with manual axes): the caller is then already
  working on its own shard.
  """
  for x in xs:
    mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    if mesh is None or mesh.empty or mesh.size == 1:
      continue
    if any(t == AxisType.Manual for t in mesh.axis_types):
      return None
    return mesh
  return None


def _dividing(mesh, axes: Sequence[str], size: int, taken: Sequence[str] = ()) -> tuple:
  out, prod = [], 1
  for a in axes:
    n = mesh.shape[a]
    if a in taken or n == 1 or size % (prod * n):
      continue
    out.append(a)
    prod *= n
  return tuple(out)


def split_axes(mesh, n: int, v: int, row_axes: Sequence[str] | None = None,
               vocab_axes: Sequence[str] | None = None) -> tuple[tuple, tuple]:
  """(mesh axes splitting the N rows, mesh axes splitting the V vocabulary columns)."""
  names = tuple(mesh.axis_names)
  # Axes this mesh does not have are ignored (callers name them by their own convention).
  keep = lambda axes: None if axes is None else tuple(a for a in axes if a in names)
  row_axes, vocab_axes = keep(row_axes), keep(vocab_axes)
  if vocab_axes is None:
    vocab_axes = ("tensor",) if "tensor" in names else ()
  vocab = _dividing(mesh, vocab_axes, v)
  if row_axes is None:
    row_axes = [a for a in names if a not in vocab]
  return _dividing(mesh, row_axes, n, taken=vocab), vocab


def _entry(axes: tuple):
  return None if not axes else axes[0] if len(axes) == 1 else axes


def shard_mapped(fn, mesh, hidden, unembed, targets, row_axes=None, vocab_axes=None,
                 n_out: int = 1):
  """Calls `fn(hidden, unembed, targets, vocab_axes_or_None)` per device under shard_map.

  Without vma checking: the interpreted Pallas kernels (CPU tests) fail its checks, and
  the gradients through the shard_map boundary are the same either way (tests/test_kernels).
  """
  rows, vocab = split_axes(mesh, hidden.shape[0], unembed.shape[1], row_axes, vocab_axes)
  r, c = P(_entry(rows)), P(None, _entry(vocab))
  out = r if n_out == 1 else (r,) * n_out
  body = lambda h, w, t: fn(h, w, t, vocab or None)
  return jax.shard_map(body, mesh=mesh, in_specs=(P(_entry(rows), None), c, r),
                       out_specs=out, check_vma=False)(hidden, unembed, targets)
