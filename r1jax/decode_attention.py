"""Attention of one new token per row over a decode KV cache: over the whole cache
(`full`), or block by block over the filled part only (`blocked`).

Continuous batching's slots sit at different positions, so no static prefix of the cache
fits them all (the static sampler's `cache_chunks` segments do not apply). `blocked` runs a
loop over fixed-size KV blocks up to the longest filled slot, merging the blocks with an
online softmax (flash-decoding): the trip count is dynamic, every shape static.

Both take q [R, Hkv, G, Dh] (G query heads per KV head), K [R, Hkv, Dh, S] when
`k_transposed` else [R, Hkv, S, Dh], V [R, Hkv, S, Dh] and allowed [R, S] (the slots each
row may attend to), and return [R, Hkv, G, Dh] float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_NEG = float(jnp.finfo(jnp.float32).min)


def _scores(q: jax.Array, k: jax.Array, k_transposed: bool) -> jax.Array:
  s = jnp.einsum("rkgd,rkds->rkgs" if k_transposed else "rkgd,rksd->rkgs", q.astype(k.dtype), k,
                 preferred_element_type=jnp.float32)
  return s / math.sqrt(q.shape[-1])


def full(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array,
         k_transposed: bool) -> jax.Array:
  """Softmax attention over every cache slot (disallowed ones weigh exactly 0)."""
  s = jnp.where(allowed[:, None, None], _scores(q, k, k_transposed), _NEG)
  p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  return jnp.einsum("rkgs,rksd->rkgd", p, v, preferred_element_type=jnp.float32)


def blocked(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, k_transposed: bool,
            length: jax.Array, block: int) -> jax.Array:
  """`full`'s attention over slots [0, `length`) rounded up to whole blocks of `block` slots
  (S must be a multiple of `block`); every allowed slot must lie below `length`. Slots past
  the last block are never read, and disallowed values inside it are zeroed before the
  value dot, so not even NaN there reaches the output."""
  r, kvh, g, dh = q.shape
  nb = jnp.minimum(-(-length // block), v.shape[2] // block)
  k_axis = 3 if k_transposed else 2

  def body(j, carry):
    m, l, acc = carry
    start = j * block
    ok = jax.lax.dynamic_slice_in_dim(allowed, start, block, axis=1)  # [R, B]
    kb = jax.lax.dynamic_slice_in_dim(k, start, block, axis=k_axis)
    vb = jax.lax.dynamic_slice_in_dim(v, start, block, axis=2)
    vb = jnp.where(ok[:, None, :, None], vb, jnp.zeros((), vb.dtype))
    s = jnp.where(ok[:, None, None], _scores(q, kb, k_transposed), _NEG)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.where(ok[:, None, None], jnp.exp(s - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    pv = jnp.einsum("rkgs,rksd->rkgd", p.astype(vb.dtype), vb,
                    preferred_element_type=jnp.float32)
    return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

  init = (jnp.full((r, kvh, g), _NEG, jnp.float32), jnp.zeros((r, kvh, g), jnp.float32),
          jnp.zeros((r, kvh, g, dh), jnp.float32))
  _, l, acc = jax.lax.fori_loop(0, nb, body, init)
  return acc / jnp.where(l > 0, l, 1.0)[..., None]
