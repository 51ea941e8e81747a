"""The transformer's attention against a per-query numpy loop: grouped kv heads, causal and
padding masks, a KV cache longer than the queries, and a query that sees no key."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.model import transformer


def naive_attention(q, k, v, allowed):
  """q [B,T,H,D], k/v [B,S,Hkv,D], allowed [B,T,S] bool; a query with no allowed key
  averages every value (a uniform softmax), as masking with a large finite number does."""
  b, t, h, d = q.shape
  g = h // k.shape[2]
  out = np.zeros_like(q, dtype=np.float64)
  for bi in range(b):
    for ti in range(t):
      for hi in range(h):
        s = k[bi, :, hi // g].astype(np.float64) @ q[bi, ti, hi] / math.sqrt(d)
        s = np.where(allowed[bi, ti], s, -np.inf) if allowed[bi, ti].any() else np.zeros_like(s)
        p = np.exp(s - s.max())
        out[bi, ti, hi] = (p / p.sum()) @ v[bi, :, hi // g]
  return out


@pytest.mark.parametrize("h,kvh", [(6, 2), (4, 4), (3, 1)])
def test_attention_matches_naive(h, kvh):
  rng = np.random.default_rng(h * 10 + kvh)
  b, t, s, d = 2, 5, 8, 16
  q = rng.standard_normal((b, t, h, d)).astype(np.float32)
  k = rng.standard_normal((b, s, kvh, d)).astype(np.float32)
  v = rng.standard_normal((b, s, kvh, d)).astype(np.float32)
  slot = 3 + np.arange(t)  # queries sit at cache slots 3..7
  allowed = (np.arange(s)[None, :] <= slot[:, None])[None].repeat(b, 0)
  allowed[1, :, :2] = False  # row 1: two left-padding slots
  allowed[1, 0, :] = False   # and a query that sees nothing
  bias = jnp.where(allowed, 0.0, transformer.MASKED)
  got = jax.jit(transformer._attention, static_argnums=4)(q, k, v, bias, jnp.float32)
  np.testing.assert_allclose(np.asarray(got), naive_attention(q, k, v, allowed),
                             rtol=1e-5, atol=1e-5)
