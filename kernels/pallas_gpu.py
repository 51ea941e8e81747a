"""Pallas GPU (Triton) kernels for the fused log-prob.

Triton holds tiles in registers, so every dimension is tiled with
power-of-two blocks (block_n x block_v logits tiles, built from block_d-deep
matmul steps) and the loops run inside the kernel:
  forward:   grid (token blocks,), loop over vocab blocks with the online
             max / sum-exp carried in registers;
  d hidden:  grid (token blocks,), loop over vocab blocks, recompute the logits
             tile, then add dz @ W_tile^T into this program's own rows;
  d unembed: grid (vocab blocks,), loop over token blocks, add h_tile^T @ dz
             into this program's own columns.
Each output tile is owned by one program, so accumulation needs no atomics and
is deterministic; d hidden / d unembed accumulate in float32 outputs.
Inputs are padded to block multiples (zeros; padded vocab columns masked).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .common import NEG, dlogits, match_vma, online_update, out_struct, pad_to, round_up

DEFAULT_BLOCK_N = 64
DEFAULT_BLOCK_V = 128
DEFAULT_BLOCK_D = 64

_NN = (((1,), (0,)), ((), ()))
_NT = (((1,), (1,)), ((), ()))
_TN = (((0,), (0,)), ((), ()))


def _pow2_at_least_16(x: int) -> int:
  return max(16, 1 << (max(x, 1) - 1).bit_length())


def block_sizes(n: int, v: int, d: int, block_n: int | None, block_v: int | None):
  bn = min(block_n or DEFAULT_BLOCK_N, _pow2_at_least_16(n))
  bv = min(block_v or DEFAULT_BLOCK_V, _pow2_at_least_16(v))
  bd = min(DEFAULT_BLOCK_D, _pow2_at_least_16(d))
  for name, b in (("block_n", bn), ("block_v", bv)):
    if b < 16 or b & (b - 1):
      raise ValueError(f"GPU {name} must be a power of two >= 16, got {b}")
  return bn, bv, bd


def _params():
  return plgpu.CompilerParams(num_warps=4, num_stages=2)


def _dot(x, y, dims):
  # fp32 inputs would otherwise run as TF32 in Triton.
  prec = lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
  return lax.dot_general(x, y, dims, precision=prec, preferred_element_type=jnp.float32)


def _logits(h_ref, w_ref, rows, j, *, bn: int, bv: int, bd: int, nd: int):
  """[bn, bv] float32 logits tile (before temperature) for rows x vocab block j."""
  def step(k, acc):
    hk = h_ref[rows, pl.ds(k * bd, bd)]
    wk = w_ref[pl.ds(k * bd, bd), pl.ds(j * bv, bv)]
    return acc + _dot(hk, wk, _NN)
  return lax.fori_loop(0, nd, step, jnp.zeros((bn, bv), jnp.float32))


def _mask(z, j, *, v: int, bv: int, fill: float):
  cols = j * bv + jnp.arange(bv, dtype=jnp.int32)[None, :]
  return cols, (z if v % bv == 0 else jnp.where(cols < v, z, fill))


def _stats_kernel(h_ref, w_ref, t_ref, m_ref, l_ref, r_ref, zt_ref, *, inv_temp: float,
                  v: int, bn: int, bv: int, bd: int, nv: int, nd: int, entropy: bool):
  rows = pl.ds(pl.program_id(0) * bn, bn)
  t = t_ref[rows][:, None]

  def vblock(j, carry):
    m, l, r, zt = carry
    z = _logits(h_ref, w_ref, rows, j, bn=bn, bv=bv, bd=bd, nd=nd) * inv_temp
    cols, z = _mask(z, j, v=v, bv=bv, fill=NEG)
    m, l, r = online_update(m, l, r, z, entropy=entropy)
    zt = zt + jnp.sum(jnp.where(cols == t, z, 0.0), axis=1)[:, None]
    return m, l, r, zt

  zeros = jnp.zeros((bn, 1), jnp.float32)
  out = lax.fori_loop(0, nv, vblock, (jnp.full((bn, 1), NEG, jnp.float32), zeros, zeros, zeros))
  for ref, x in zip((m_ref, l_ref, r_ref, zt_ref), out):
    ref[rows] = x[:, 0]


def _dz(h_ref, w_ref, t_ref, rows_refs, rows, j, *, inv_temp, v, bn, bv, bd, nd):
  lse, a, b, gl = (ref[rows][:, None] for ref in rows_refs)
  z = _logits(h_ref, w_ref, rows, j, bn=bn, bv=bv, bd=bd, nd=nd) * inv_temp
  cols = j * bv + jnp.arange(bv, dtype=jnp.int32)[None, :]
  dz = dlogits(z, cols == t_ref[rows][:, None], lse, a, b, gl)
  _, dz = _mask(dz, j, v=v, bv=bv, fill=0.0)
  return dz * inv_temp


def _dh_kernel(h_ref, w_ref, t_ref, lse_ref, a_ref, b_ref, gl_ref, dh_ref, *,
               inv_temp, v, bn, bv, bd, nv, nd):
  rows = pl.ds(pl.program_id(0) * bn, bn)

  def zero(k, _):
    dh_ref[rows, pl.ds(k * bd, bd)] = jnp.zeros((bn, bd), jnp.float32)
  lax.fori_loop(0, nd, zero, None)

  def vblock(j, _):
    dz = _dz(h_ref, w_ref, t_ref, (lse_ref, a_ref, b_ref, gl_ref), rows, j,
             inv_temp=inv_temp, v=v, bn=bn, bv=bv, bd=bd, nd=nd).astype(w_ref.dtype)

    def dblock(k, _):
      wk = w_ref[pl.ds(k * bd, bd), pl.ds(j * bv, bv)]
      dh_ref[rows, pl.ds(k * bd, bd)] += _dot(dz, wk, _NT)
    lax.fori_loop(0, nd, dblock, None)
  lax.fori_loop(0, nv, vblock, None)


def _dw_kernel(h_ref, w_ref, t_ref, lse_ref, a_ref, b_ref, gl_ref, dw_ref, *,
               inv_temp, v, bn, bv, bd, nb, nd):
  j = pl.program_id(0)
  cols = pl.ds(j * bv, bv)

  def zero(k, _):
    dw_ref[pl.ds(k * bd, bd), cols] = jnp.zeros((bd, bv), jnp.float32)
  lax.fori_loop(0, nd, zero, None)

  def nblock(i, _):
    rows = pl.ds(i * bn, bn)
    dz = _dz(h_ref, w_ref, t_ref, (lse_ref, a_ref, b_ref, gl_ref), rows, j,
             inv_temp=inv_temp, v=v, bn=bn, bv=bv, bd=bd, nd=nd).astype(h_ref.dtype)

    def dblock(k, _):
      hk = h_ref[rows, pl.ds(k * bd, bd)]
      dw_ref[pl.ds(k * bd, bd), cols] += _dot(hk, dz, _TN)
    lax.fori_loop(0, nd, dblock, None)
  lax.fori_loop(0, nb, nblock, None)


def _prep(h, w, t, bn, bv, bd):
  n, d = h.shape
  n_pad, d_pad, v_pad = round_up(n, bn), round_up(d, bd), round_up(w.shape[1], bv)
  h = pad_to(pad_to(h, 0, n_pad), 1, d_pad)
  w = pad_to(pad_to(w, 0, d_pad), 1, v_pad)
  t = pad_to(t.astype(jnp.int32), 0, n_pad, -1)
  return match_vma((h, w, t), h, w, t)


def stats(h: jax.Array, w: jax.Array, t: jax.Array, *, inv_temp: float,
          entropy: bool, block_n: int | None = None, block_v: int | None = None,
          interpret: bool = False):
  """Partial (m, l, r, zt), each [N] float32, over the columns of `w`."""
  n, d = h.shape
  v = w.shape[1]
  bn, bv, bd = block_sizes(n, v, d, block_n, block_v)
  hp, wp, tp = _prep(h, w, t, bn, bv, bd)
  nb, nv, nd = hp.shape[0] // bn, wp.shape[1] // bv, hp.shape[1] // bd
  kernel = functools.partial(_stats_kernel, inv_temp=inv_temp, v=v, bn=bn, bv=bv,
                             bd=bd, nv=nv, nd=nd, entropy=entropy)
  vec = out_struct((hp.shape[0],), jnp.float32, hp, wp, tp)
  out = pl.pallas_call(kernel, out_shape=(vec,) * 4, grid=(nb,),
                       compiler_params=_params(), interpret=interpret,
                       name="token_logprobs_fwd")(hp, wp, tp)
  return tuple(x[:n] for x in out)


def bwd(h: jax.Array, w: jax.Array, t: jax.Array, lse, a, b, gl, *,
        inv_temp: float, block_n: int | None = None, block_v: int | None = None,
        interpret: bool = False):
  """(d hidden, d unembed) in the input dtypes, from per-row coefficients [N]."""
  n, d = h.shape
  v = w.shape[1]
  bn, bv, bd = block_sizes(n, v, d, block_n, block_v)
  hp, wp, tp = _prep(h, w, t, bn, bv, bd)
  rows = [pad_to(x.astype(jnp.float32), 0, hp.shape[0]) for x in (lse, a, b, gl)]
  hp, wp, tp, *rows = match_vma((hp, wp, tp, *rows), hp, wp, tp, *rows)
  nb, nv, nd = hp.shape[0] // bn, wp.shape[1] // bv, hp.shape[1] // bd
  common = dict(inv_temp=inv_temp, v=v, bn=bn, bv=bv, bd=bd, nd=nd)
  dh = pl.pallas_call(
      functools.partial(_dh_kernel, nv=nv, **common),
      out_shape=out_struct(hp.shape, jnp.float32, hp), grid=(nb,),
      compiler_params=_params(), interpret=interpret, name="token_logprobs_bwd_dh",
  )(hp, wp, tp, *rows)
  dw = pl.pallas_call(
      functools.partial(_dw_kernel, nb=nb, **common),
      out_shape=out_struct(wp.shape, jnp.float32, hp), grid=(nv,),
      compiler_params=_params(), interpret=interpret, name="token_logprobs_bwd_dw",
  )(hp, wp, tp, *rows)
  return dh[:n, :d].astype(h.dtype), dw[:d, :v].astype(w.dtype)
