"""The decode step's attention over a KV cache (r1jax/decode_attention.py) against a per-row,
per-head numpy softmax: the whole cache, and block by block up to a filled length, with both
K layouts, rows filled to different lengths, and NaN in the never-read tail."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import decode_attention


def naive(q, k, v, allowed):
  """q [R, Hkv, G, D], k/v [R, Hkv, S, D], allowed [R, S]: float64 softmax over allowed slots."""
  r, kvh, g, d = q.shape
  out = np.zeros((r, kvh, g, d))
  for ri in range(r):
    idx = np.flatnonzero(allowed[ri])
    for hi in range(kvh):
      for gi in range(g):
        s = k[ri, hi, idx].astype(np.float64) @ q[ri, hi, gi] / math.sqrt(d)
        p = np.exp(s - s.max())
        out[ri, hi, gi] = (p / p.sum()) @ v[ri, hi, idx]
  return out


def _case(seed, s=40):
  rng = np.random.default_rng(seed)
  r, kvh, g, d = 4, 2, 3, 8
  q = rng.standard_normal((r, kvh, g, d)).astype(np.float32)
  k = 3 * rng.standard_normal((r, kvh, s, d)).astype(np.float32)
  v = rng.standard_normal((r, kvh, s, d)).astype(np.float32)
  filled = np.array([21, 1, 9, 17])  # row 0 fills 21 slots: blocks of 8 -> 3 blocks read
  allowed = np.arange(s)[None] < filled[:, None]
  allowed[0, :5] = False  # left padding
  allowed[2, 8] = False  # a hole (a dead slot's write)
  allowed[3, :8] = False  # a whole block masked for this row
  return q, k, v, allowed, int(filled.max())


@pytest.mark.parametrize("k_transposed", [True, False])
def test_full_and_blocked_match_numpy(k_transposed):
  q, k, v, allowed, length = _case(0)
  want = naive(q, k, v, allowed)
  kk = k.transpose(0, 1, 3, 2) if k_transposed else k
  full = decode_attention.full(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v),
                               jnp.asarray(allowed), k_transposed)
  np.testing.assert_allclose(np.asarray(full), want, atol=2e-6, rtol=1e-5)
  for block in (8, 5, 40):  # 3, 5 and 1 blocks read; the slots past them hold NaN
    kb, vb = kk.copy(), v.copy()
    read = -(-length // block) * block
    (kb[..., read:] if k_transposed else kb[:, :, read:])[:] = np.nan
    vb[:, :, read:] = np.nan
    out = decode_attention.blocked(jnp.asarray(q), jnp.asarray(kb), jnp.asarray(vb),
                                   jnp.asarray(allowed), k_transposed, jnp.int32(length), block)
    np.testing.assert_allclose(np.asarray(out), want, atol=2e-6, rtol=1e-5, err_msg=f"{block}")


def test_blocked_ignores_nan_in_disallowed_slots_it_reads():
  """Rows filled less than the longest read garbage inside the blocks: it must weigh 0."""
  q, k, v, allowed, length = _case(1)
  want = naive(q, k, v, allowed)
  k, v = k.copy(), v.copy()
  k[~allowed[:, None, :, None].repeat(2, 1).repeat(8, 3)] = np.nan
  v[~allowed[:, None, :, None].repeat(2, 1).repeat(8, 3)] = np.nan
  out = decode_attention.blocked(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                 jnp.asarray(allowed), False, jnp.int32(length), 8)
  np.testing.assert_allclose(np.asarray(out), want, atol=2e-6, rtol=1e-5)
  full = decode_attention.full(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                               jnp.asarray(allowed), False)
  assert np.isnan(np.asarray(full)).any()  # the plain softmax lets 0 * NaN through


def test_blocked_bf16_cache_is_close():
  q, k, v, allowed, length = _case(2)
  want = naive(q, k, v, allowed)
  out = decode_attention.blocked(jnp.asarray(q), jnp.asarray(k, jnp.bfloat16),
                                 jnp.asarray(v, jnp.bfloat16), jnp.asarray(allowed), False,
                                 jnp.int32(length), 8)
  np.testing.assert_allclose(np.asarray(out), want, atol=3e-2)
