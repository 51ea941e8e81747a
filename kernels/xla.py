"""Chunked XLA implementation: a `lax.scan` over vocab blocks.

The portable fallback and the reference the Pallas kernels are tested against.
Only [N, block_v] logits exist at a time. The last block is clamped to end at
V (overlapping its predecessor, overlap masked), so `unembed` is never padded
or copied, whatever V is.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .common import NEG, cdiv, dlogits, match_vma, online_update

_NN = (((1,), (0,)), ((), ()))  # [n, d] @ [d, v]
_NT = (((1,), (1,)), ((), ()))  # [n, v] @ [d, v]^T
_TN = (((0,), (0,)), ((), ()))  # [n, d]^T @ [n, v]


def _block(w: jax.Array, j, bv: int):
  """Vocab block j: (w[:, start:start+bv], global column ids, not-yet-seen mask)."""
  start = jnp.minimum(j * bv, w.shape[1] - bv)
  cols = start + jnp.arange(bv, dtype=jnp.int32)
  return start, lax.dynamic_slice_in_dim(w, start, bv, axis=1), cols, cols >= j * bv


def _logits(h, wb, inv_temp: float):
  return lax.dot_general(h, wb, _NN, preferred_element_type=jnp.float32) * inv_temp


def stats(h: jax.Array, w: jax.Array, t: jax.Array, *, inv_temp: float,
          block_v: int, entropy: bool):
  """Partial (m, l, r, zt), each [N] float32, over the columns of `w`."""
  n, v = h.shape[0], w.shape[1]
  bv = min(block_v, v)
  t = t[:, None]

  def body(carry, j):
    m, l, r, zt = carry
    _, wb, cols, valid = _block(w, j, bv)
    z = jnp.where(valid, _logits(h, wb, inv_temp), NEG)
    m, l, r = online_update(m, l, r, z, entropy=entropy)
    hit = (cols == t) & valid
    zt = zt + jnp.sum(jnp.where(hit, z, 0.0), axis=1, keepdims=True)
    return (m, l, r, zt), None

  zeros = jnp.zeros((n, 1), jnp.float32)
  init = (jnp.full((n, 1), NEG, jnp.float32), zeros, zeros, zeros)
  init = match_vma(init, h, w, t)
  out, _ = lax.scan(body, init, jnp.arange(cdiv(v, bv)))
  return tuple(x[:, 0] for x in out)


def bwd(h: jax.Array, w: jax.Array, t: jax.Array, lse, a, b, gl, *,
        inv_temp: float, block_v: int):
  """(d hidden, d unembed) in the input dtypes, from per-row coefficients [N]."""
  v = w.shape[1]
  bv = min(block_v, v)
  t, lse, a, b, gl = (x[:, None] for x in (t, lse, a, b, gl))

  def body(carry, j):
    dh, dw = carry
    start, wb, cols, valid = _block(w, j, bv)
    z = _logits(h, wb, inv_temp)
    dz = dlogits(z, (cols == t) & valid, lse, a, b, gl)
    dz = jnp.where(valid, dz, 0.0) * inv_temp
    dh = dh + lax.dot_general(dz.astype(w.dtype), wb, _NT,
                              preferred_element_type=jnp.float32)
    dwb = lax.dot_general(h, dz.astype(h.dtype), _TN,
                          preferred_element_type=jnp.float32).astype(w.dtype)
    old = lax.dynamic_slice_in_dim(dw, start, bv, axis=1)
    dw = lax.dynamic_update_slice_in_dim(dw, jnp.where(valid, dwb, old), start, axis=1)
    return (dh, dw), None

  init = (jnp.zeros(h.shape, jnp.float32), jnp.zeros(w.shape, w.dtype))
  init = match_vma(init, h, w, t, lse, a, b, gl)
  (dh, dw), _ = lax.scan(body, init, jnp.arange(cdiv(v, bv)))
  return dh.astype(h.dtype), dw
