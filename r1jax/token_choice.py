"""The sampler's token choice: greedy, temperature, top-k and top-p sampling from logits, each
row with its own key, without sorting the vocabulary."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp



def filter_logits(logits: jax.Array, top_p: float, top_k: int) -> jax.Array:
  """Mask logits outside the top-k and outside the top-p nucleus with -inf.

  The nucleus is the smallest prefix of the descending order whose probability mass
  (under softmax of all the logits) reaches `top_p`, always at least one token; tokens tied
  with the cut-off value are kept. No sort: the top-k cut-off comes from `lax.top_k`, the
  nucleus cut-off from `_nucleus_cutoff` (an exact search over the float order).
  """
  if top_k <= 0 and top_p >= 1.0:
    return logits
  v = logits.shape[-1]
  keep = jnp.ones(logits.shape, bool)
  if 0 < top_k < v:
    keep = logits >= jax.lax.top_k(logits, top_k)[0][..., -1:]
  if top_p < 1.0:
    keep &= _ordered_key(logits) >= _nucleus_cutoff(logits, top_p)
  return jnp.where(keep, logits, -jnp.inf)


def _ordered_key(x: jax.Array) -> jax.Array:
  """float32 -> uint32 with the same order (for bisection over float values)."""
  u = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(u >> 31 == 1, ~u, u | jnp.uint32(1 << 31))


def _nucleus_cutoff(logits: jax.Array, top_p: float) -> jax.Array:
  """The ordered key of the smallest kept logit of the top-p nucleus, [..., 1].

  A token is in the nucleus iff the mass of the tokens above it is < top_p; that mass only
  decreases with the threshold, so 32 bisection steps over the 2^32 float keys find the
  exact cut-off (each step one masked sum over the vocabulary, no sort).
  """
  x = logits.astype(jnp.float32)
  p = jax.nn.softmax(x, axis=-1)
  key = _ordered_key(x)
  hi = jnp.max(key, axis=-1, keepdims=True)  # mass above: 0 < top_p
  lo = jnp.min(key, axis=-1, keepdims=True) - 1  # mass above: 1 >= top_p

  def body(_, c):
    lo, hi = c
    mid = lo + (hi - lo) // 2
    above = jnp.sum(jnp.where(key > mid, p, 0.0), axis=-1, keepdims=True)
    small = above < top_p
    return jnp.where(small, lo, mid), jnp.where(small, mid, hi)

  _, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return hi


def _first_argmax(x: jax.Array) -> jax.Array:
  """argmax over the last axis (first index among ties), as two vectorisable reductions."""
  v = x.shape[-1]
  m = jnp.max(x, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(x == m, iota, v), axis=-1)


def _row_categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
  """One categorical draw per row, row i using keys[i]; logits [R, K] -> [R] int32."""
  return jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, logits).astype(jnp.int32)


_BLOCK = 256


def _blocked_categorical(keys: jax.Array, logits: jax.Array, e: jax.Array) -> jax.Array:
  """Exact sample from softmax(logits) [R, V]: a block of `_BLOCK` tokens by its mass, then a
  token inside it. Draws R * (V/_BLOCK + _BLOCK) Gumbels instead of R * V.

  e: exp(logits - row max) [R, V] (shared with the log-prob computation).
  """
  r, v = logits.shape
  nb = -(-v // _BLOCK)
  pad = nb * _BLOCK - v
  if pad:
    logits = jnp.pad(logits, ((0, 0), (0, pad)), constant_values=-jnp.inf)
    e = jnp.pad(e, ((0, 0), (0, pad)))
  mass = e.reshape(r, nb, _BLOCK).sum(-1)
  k1, k2 = jax.vmap(jax.random.split, out_axes=1)(keys)
  block = _row_categorical(k1, jnp.log(mass))
  within = jnp.take_along_axis(logits.reshape(r, nb, _BLOCK), block[:, None, None], axis=1)[:, 0]
  return block * _BLOCK + _row_categorical(k2, within)


def _choose(logits: jax.Array, keys: jax.Array, scfg: Any):
  """logits [R, V] float32, keys [R] -> (token [R], logp [R] under softmax(logits / T))."""
  if scfg.temperature == 0.0:
    tok = _first_argmax(logits)
    scaled = logits
    m = jnp.max(scaled, axis=-1, keepdims=True)
    e = jnp.exp(scaled - m)
  else:
    scaled = logits / scfg.temperature
    m = jnp.max(scaled, axis=-1, keepdims=True)
    e = jnp.exp(scaled - m)
    if scfg.top_k <= 0 and scfg.top_p >= 1.0:
      tok = _blocked_categorical(keys, scaled, e)
    else:
      tok = _filtered_sample(scaled, m, e, keys, scfg)
  log_z = jnp.log(jnp.sum(e, axis=-1))
  picked = jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0]
  return tok, (picked - m[:, 0]) - log_z


def _filtered_sample(scaled, m, e, keys, scfg: Any):
  """Top-k / top-p sample among `lax.top_k` candidates, or over the whole filtered vocabulary
  (`filter_logits`, no sort) when the candidates do not cover the nucleus."""
  v = scaled.shape[-1]
  k = min(scfg.top_k if scfg.top_k > 0 else scfg.top_p_candidates, v)

  def full(_):
    f = filter_logits(scaled, scfg.top_p, scfg.top_k)
    mf = jnp.max(f, axis=-1, keepdims=True)
    return _blocked_categorical(keys, f, jnp.exp(f - mf))

  if k >= v:
    return full(None)
  vals, idx = jax.lax.top_k(scaled, k)
  keep = jnp.ones(vals.shape, bool)
  covered = None  # per row
  if scfg.top_p < 1.0:
    probs = jnp.exp(vals - m) / jnp.sum(e, axis=-1, keepdims=True)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = before < scfg.top_p
    # The nucleus ends inside the candidates iff the last one is already outside it; with
    # top_k <= k the top-k cut bounds it anyway.
    if not 0 < scfg.top_k <= k:
      covered = ~keep[:, -1]
  # Tokens tied with the cut-off value stay in (as filter_logits keeps them).
  cut = jnp.min(jnp.where(keep, vals, jnp.inf), axis=-1, keepdims=True)
  keep = vals >= cut

  def cand(_):
    j = _row_categorical(keys, jnp.where(keep, vals, -jnp.inf))
    return jnp.take_along_axis(idx, j[:, None], axis=-1)[:, 0].astype(jnp.int32)

  if covered is None:
    return cand(None)
  # Each row by its own coverage, so that its draw does not depend on the other rows.
  tok = cand(None)
  return jax.lax.cond(jnp.all(covered), lambda: tok,
                      lambda: jnp.where(covered, tok, full(None)))
