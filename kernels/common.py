"""Shared pieces of the fused log-prob implementations.

Every implementation computes, for its (local) vocabulary slice, four per-row
partial statistics of z = hidden @ unembed * inv_temp:

  m   running max of z
  l   sum_j exp(z_j - m)
  r   sum_j exp(z_j - m) * (z_j - m)   (only for entropy)
  zt  z[target] when the target id falls inside the slice, else 0

so that lse = m + log l, log p(target) = zt - lse and entropy = log l - r / l.
Keeping r relative to the max avoids the cancellation of lse - E[z].

The backward pass recomputes z blockwise and uses, per row,
  dz = p * (a - b * z) + gl * onehot(target),   p = exp(z - lse)
with a = ge * E[z] - gl and b = ge (gl, ge: cotangents of log p and entropy).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Large negative *finite* mask value: exp() of it is 0 and 0 * it stays 0.
NEG = -1e30
LANES = 128


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def round_up(a: int, b: int) -> int:
  return cdiv(a, b) * b


def pad_to(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  """Pads `x` along `axis` up to `size` (no-op when already that size)."""
  extra = size - x.shape[axis]
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def online_update(m, l, r, z, *, entropy: bool):
  """Folds a block of logits z [rows, cols] into the running (m, l, r).

  m, l, r have shape [rows, k] with k == 1 or lane-replicated k; the block
  max and sums are taken over axis 1 and broadcast back.
  """
  m_new = jnp.maximum(m, jnp.max(z, axis=1)[:, None])
  alpha = jnp.exp(m - m_new)
  zc = z - widen(m_new, z.shape[1])
  p = jnp.exp(zc)
  l_new = alpha * l + jnp.sum(p, axis=1)[:, None]
  if entropy:
    r = alpha * (r + (m - m_new) * l) + jnp.sum(p * zc, axis=1)[:, None]
  return m_new, l_new, r


def dlogits(z, hit, lse, a, b, gl):
  """dL/dz for one block given the per-row coefficients (all [rows, 1|cols])."""
  p = jnp.exp(z - lse)
  return p * (a - b * z) + jnp.where(hit, gl, 0.0)


def widen(x, cols: int):
  """[rows, k] -> [rows, cols]: broadcast when k == 1, tile when lane-replicated."""
  k = x.shape[1]
  if k == 1 or k == cols:
    return x if k == cols else jnp.broadcast_to(x, (x.shape[0], cols))
  assert cols % k == 0, (cols, k)
  return jnp.tile(x, (1, cols // k))


def vma_of(*xs) -> frozenset:
  """Mesh axes the values vary over inside shard_map (empty outside or unchecked)."""
  out = frozenset()
  for x in xs:
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
    out |= frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))
  return out


def match_vma(x, *like):
  """Casts (the leaves of) `x` to vary over every mesh axis that any of `like` varies over.

  Scan carries must keep their type, and inside shard_map a fresh zeros array
  is invariant while values computed from sharded inputs are varying.
  """
  want = vma_of(*like)

  def cast(leaf):
    missing = tuple(sorted(want - vma_of(leaf), key=str))
    if not missing:
      return leaf
    if hasattr(jax.lax, "pcast"):
      return jax.lax.pcast(leaf, missing, to="varying")
    return jax.lax.pvary(leaf, missing)  # older jax
  return jax.tree.map(cast, x)


def out_struct(shape, dtype, *like) -> jax.ShapeDtypeStruct:
  """ShapeDtypeStruct for a pallas_call output that varies like its inputs.

  Under shard_map with vma checking, pallas_call needs to be told how its
  outputs vary over the manual mesh axes.
  """
  vma = vma_of(*like)
  if not vma:
    return jax.ShapeDtypeStruct(shape, dtype)
  mat = getattr(jax.sharding, "ManualAxisType", None)
  if mat is not None:  # jax >= 0.10
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat(varying=vma))
  return jax.ShapeDtypeStruct(shape, dtype, vma=vma)


def sum_to_vma(g, like):
  """Sums cotangent `g` over the mesh axes it varies over but the primal `like` does not.

  That is the transpose of the implicit invariant -> varying cast autodiff
  would have inserted where `like` met varying operands.
  """
  extra = tuple(sorted(vma_of(g) - vma_of(like), key=str))
  return jax.lax.psum(g, extra) if extra else g


def combine(m, l, r, zt, axis_name):
  """Merges per-shard partial statistics across a vocab-sharded mesh axis."""
  m_all = jax.lax.pmax(m, axis_name)
  alpha = jnp.exp(m - m_all)
  l_all = jax.lax.psum(alpha * l, axis_name)
  r_all = jax.lax.psum(alpha * (r + (m - m_all) * l), axis_name)
  return m_all, l_all, r_all, jax.lax.psum(zt, axis_name)
