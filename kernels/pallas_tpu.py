"""Pallas TPU (Mosaic) kernels for the fused log-prob.

Forward: grid (token blocks "parallel", vocab blocks "arbitrary"); the running
max / sum-exp / entropy / target-logit accumulators live in VMEM scratch as
lane-replicated [block_n, 128] tiles and are written once, at the last vocab
block. Backward: two kernels that each recompute the logits block,
  d hidden:  grid (token, vocab), accumulates dz @ W_blk^T in VMEM,
  d unembed: grid (vocab, token), accumulates h_blk^T @ dz in VMEM,
so no [N, V] array and no fp32 [D, V] buffer is ever written to HBM.

`unembed` is never padded: the grid is cdiv(V, block_v) and Pallas hands the
last block padded with unspecified values, so columns >= V are masked (z to
NEG, and W to 0 before the d hidden matmul, since garbage * 0 may be NaN).
Only the token axis (small) is padded. Block shapes follow the (8, 128)
tiling: block_n a multiple of 16 (bf16 packs 16 rows), block_v of 128.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from .common import (LANES, NEG, cdiv, dlogits, match_vma, online_update, out_struct,
                     pad_to, round_up, widen)

DEFAULT_BLOCK_N = 512
DEFAULT_BLOCK_V = 512
# Default blocks shrink until the estimated VMEM use of the hungriest kernel
# fits this budget, below the default scoped-VMEM limit of every TPU generation.
VMEM_BUDGET = 12 * 2 ** 20

_NN = (((1,), (0,)), ((), ()))
_NT = (((1,), (1,)), ((), ()))
_TN = (((0,), (0,)), ((), ()))


def _vmem_estimate(bn: int, bv: int, d: int, itemsize: int) -> int:
  """Rough VMEM bytes of the d unembed kernel (the largest of the three)."""
  blocks = bn * d * itemsize + d * bv * itemsize + bn * LANES * 4 + bn * 4 * LANES * 4
  out = d * bv * itemsize
  temps = 6 * bn * bv * 4  # logits, probabilities, dz and friends in fp32
  return 2 * (blocks + out) + d * bv * 4 + temps


def block_sizes(n: int, v: int, d: int, itemsize: int, block_n: int | None,
                block_v: int | None):
  """(block_n, block_v): given values, else defaults fitted to VMEM_BUDGET."""
  bn = block_n or DEFAULT_BLOCK_N
  bv = block_v or DEFAULT_BLOCK_V
  while _vmem_estimate(bn, bv, d, itemsize) > VMEM_BUDGET:
    can_n, can_v = block_n is None and bn > 128, block_v is None and bv > 128
    if can_n and (bn >= bv or not can_v):
      bn //= 2
    elif can_v:
      bv //= 2
    else:
      break
  bn = min(bn, round_up(n, 16))
  bv = min(bv, round_up(v, LANES))
  if bn % 16 or bv % LANES:
    raise ValueError(f"TPU blocks must be (16k, 128k); got block_n={bn}, block_v={bv}")
  return bn, bv


def _params(*semantics: str):
  return pltpu.CompilerParams(dimension_semantics=semantics)


def _logits(h_ref, w_ref, j, *, inv_temp: float, v: int, bv: int, mask_w: bool = False):
  """Logits block, its global column ids and validity (None when V % bv == 0).

  With mask_w, W's out-of-range columns are zeroed first (needed wherever W
  itself enters a matmul with the masked dz).
  """
  w = w_ref[...]
  if mask_w and v % bv:
    w_cols = j * bv + lax.broadcasted_iota(jnp.int32, w.shape, 1)
    w = jnp.where(w_cols < v, w.astype(jnp.float32), 0.0).astype(w.dtype)
  z = lax.dot_general(h_ref[...], w, _NN, preferred_element_type=jnp.float32) * inv_temp
  cols = j * bv + lax.broadcasted_iota(jnp.int32, z.shape, 1)
  return w, z, cols, (None if v % bv == 0 else cols < v)


def _stats_kernel(h_ref, w_ref, t_ref, out_ref, m_sc, l_sc, r_sc, zt_sc, *,
                  inv_temp: float, v: int, bv: int, entropy: bool):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, NEG, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    r_sc[...] = jnp.zeros(r_sc.shape, jnp.float32)
    zt_sc[...] = jnp.zeros(zt_sc.shape, jnp.float32)

  _, z, cols, valid = _logits(h_ref, w_ref, j, inv_temp=inv_temp, v=v, bv=bv)
  if valid is not None:
    z = jnp.where(valid, z, NEG)
  m, l, r = online_update(m_sc[...], l_sc[...], r_sc[...], z, entropy=entropy)
  m_sc[...] = m
  l_sc[...] = l
  if entropy:
    r_sc[...] = r
  hit = cols == widen(t_ref[...], bv)
  zt_sc[...] += jnp.sum(jnp.where(hit, z, 0.0), axis=1)[:, None]

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    for k, sc in enumerate((m_sc, l_sc, r_sc, zt_sc)):
      out_ref[:, k * LANES:(k + 1) * LANES] = sc[...]


def _dz(z, cols, valid, t_ref, rows_ref, *, inv_temp: float, bv: int):
  """dL/dz * inv_temp for a block; rows_ref packs [lse | a | b | gl], 128 lanes each."""
  lse, a, b, gl = (widen(rows_ref[:, k * LANES:(k + 1) * LANES], bv) for k in range(4))
  dz = dlogits(z, cols == widen(t_ref[...], bv), lse, a, b, gl)
  if valid is not None:
    dz = jnp.where(valid, dz, 0.0)
  return dz * inv_temp


def _dh_kernel(h_ref, w_ref, t_ref, rows_ref, dh_ref, acc_sc, *,
               inv_temp: float, v: int, bv: int):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  w, z, cols, valid = _logits(h_ref, w_ref, j, inv_temp=inv_temp, v=v, bv=bv, mask_w=True)
  dz = _dz(z, cols, valid, t_ref, rows_ref, inv_temp=inv_temp, bv=bv)
  acc_sc[...] += lax.dot_general(dz.astype(w.dtype), w, _NT,
                                 preferred_element_type=jnp.float32)

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    dh_ref[...] = acc_sc[...].astype(dh_ref.dtype)


def _dw_kernel(h_ref, w_ref, t_ref, rows_ref, dw_ref, acc_sc, *,
               inv_temp: float, v: int, bv: int):
  j, i = pl.program_id(0), pl.program_id(1)

  @pl.when(i == 0)
  def _init():
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  _, z, cols, valid = _logits(h_ref, w_ref, j, inv_temp=inv_temp, v=v, bv=bv)
  dz = _dz(z, cols, valid, t_ref, rows_ref, inv_temp=inv_temp, bv=bv)
  h = h_ref[...]
  acc_sc[...] += lax.dot_general(h, dz.astype(h.dtype), _TN,
                                 preferred_element_type=jnp.float32)

  @pl.when(i == pl.num_programs(1) - 1)
  def _write():
    dw_ref[...] = acc_sc[...].astype(dw_ref.dtype)


def _prep(h, t, bn: int):
  """Pads the token axis to a block multiple; targets become lane-replicated."""
  n_pad = round_up(h.shape[0], bn)
  t = pad_to(t.astype(jnp.int32), 0, n_pad, -1)
  return pad_to(h, 0, n_pad), jnp.broadcast_to(t[:, None], (n_pad, LANES))


def _cost(n, d, v, h, w, matmuls: int):
  nbytes = h.size * h.dtype.itemsize + w.size * w.dtype.itemsize
  return pl.CostEstimate(flops=2 * matmuls * n * d * v, transcendentals=n * v,
                         bytes_accessed=nbytes)


def stats(h: jax.Array, w: jax.Array, t: jax.Array, *, inv_temp: float,
          entropy: bool, block_n: int | None = None, block_v: int | None = None,
          interpret: bool = False):
  """Partial (m, l, r, zt), each [N] float32, over the columns of `w`."""
  n, d = h.shape
  v = w.shape[1]
  bn, bv = block_sizes(n, v, d, h.dtype.itemsize, block_n, block_v)
  hp, tp = _prep(h, t, bn)
  hp, w, tp = match_vma((hp, w, tp), hp, w, tp)
  grid = (hp.shape[0] // bn, cdiv(v, bv))
  kernel = functools.partial(_stats_kernel, inv_temp=inv_temp, v=v, bv=bv, entropy=entropy)
  out = pl.pallas_call(
      kernel,
      grid=grid,
      in_specs=[pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
                pl.BlockSpec((d, bv), lambda i, j: (0, j)),
                pl.BlockSpec((bn, LANES), lambda i, j: (i, 0))],
      out_specs=pl.BlockSpec((bn, 4 * LANES), lambda i, j: (i, 0)),
      out_shape=out_struct((hp.shape[0], 4 * LANES), jnp.float32, hp, w, tp),
      scratch_shapes=[pltpu.VMEM((bn, LANES), jnp.float32)] * 4,
      compiler_params=_params("parallel", "arbitrary"),
      cost_estimate=_cost(n, d, v, h, w, 1),
      interpret=interpret,
      name="token_logprobs_fwd",
  )(hp, w, tp)[:n]
  return tuple(out[:, k * LANES] for k in range(4))


def bwd(h: jax.Array, w: jax.Array, t: jax.Array, lse, a, b, gl, *,
        inv_temp: float, block_n: int | None = None, block_v: int | None = None,
        interpret: bool = False):
  """(d hidden, d unembed) in the input dtypes, from per-row coefficients [N]."""
  n, d = h.shape
  v = w.shape[1]
  bn, bv = block_sizes(n, v, d, h.dtype.itemsize, block_n, block_v)
  hp, tp = _prep(h, t, bn)
  n_pad = hp.shape[0]
  # Padded rows get all-zero coefficients, hence dz == 0 there.
  rows = jnp.concatenate(
      [jnp.broadcast_to(pad_to(x.astype(jnp.float32), 0, n_pad)[:, None], (n_pad, LANES))
       for x in (lse, a, b, gl)], axis=1)
  hp, w, tp, rows = match_vma((hp, w, tp, rows), hp, w, tp, rows)
  nb, nv = n_pad // bn, cdiv(v, bv)
  common = dict(inv_temp=inv_temp, v=v, bv=bv)

  dh = pl.pallas_call(
      functools.partial(_dh_kernel, **common),
      grid=(nb, nv),
      in_specs=[pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
                pl.BlockSpec((d, bv), lambda i, j: (0, j)),
                pl.BlockSpec((bn, LANES), lambda i, j: (i, 0)),
                pl.BlockSpec((bn, 4 * LANES), lambda i, j: (i, 0))],
      out_specs=pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
      out_shape=out_struct(hp.shape, h.dtype, hp),
      scratch_shapes=[pltpu.VMEM((bn, d), jnp.float32)],
      compiler_params=_params("parallel", "arbitrary"),
      cost_estimate=_cost(n, d, v, h, w, 2),
      interpret=interpret,
      name="token_logprobs_bwd_dh",
  )(hp, w, tp, rows)[:n]

  dw = pl.pallas_call(
      functools.partial(_dw_kernel, **common),
      grid=(nv, nb),
      in_specs=[pl.BlockSpec((bn, d), lambda j, i: (i, 0)),
                pl.BlockSpec((d, bv), lambda j, i: (0, j)),
                pl.BlockSpec((bn, LANES), lambda j, i: (i, 0)),
                pl.BlockSpec((bn, 4 * LANES), lambda j, i: (i, 0))],
      out_specs=pl.BlockSpec((d, bv), lambda j, i: (0, j)),
      out_shape=out_struct(w.shape, w.dtype, hp),
      scratch_shapes=[pltpu.VMEM((d, bv), jnp.float32)],
      compiler_params=_params("parallel", "arbitrary"),
      cost_estimate=_cost(n, d, v, h, w, 2),
      interpret=interpret,
      name="token_logprobs_bwd_dw",
  )(hp, w, tp, rows)
  return dh, dw

