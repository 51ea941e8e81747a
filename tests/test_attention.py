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


def _allowed(mask, seg):
  """Causal & key mask & same segment, [B, T, T] bool (numpy)."""
  t = mask.shape[1]
  allowed = np.tril(np.ones((t, t), bool))[None] & mask[:, None, :]
  return allowed & (seg[:, :, None] == seg[:, None, :]) if seg is not None else allowed


@pytest.mark.parametrize("chunk", [3, 4, 8])
@pytest.mark.parametrize("packed", [False, True])
def test_chunked_attention_matches_naive(chunk, packed):
  from r1jax.model.layers import KeyMask, chunked_attention
  rng = np.random.default_rng(chunk)
  b, t, h, kvh, d = 2, 8, 4, 2, 16
  q = rng.standard_normal((b, t, h, d)).astype(np.float32)
  k = rng.standard_normal((b, t, kvh, d)).astype(np.float32)
  v = rng.standard_normal((b, t, kvh, d)).astype(np.float32)
  mask = np.ones((b, t), bool)
  mask[1, :3] = False  # left padding; row 1's first queries see nothing
  seg = np.array([[0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 0, 0, 1, 1, 1, 3]]) if packed else None
  got = chunked_attention(q, k, v, KeyMask(jnp.asarray(mask), None if seg is None else
                                           jnp.asarray(seg)), jnp.float32, None, chunk)
  assert got.shape == (b, t, h, d)
  np.testing.assert_allclose(np.asarray(got), naive_attention(q, k, v, _allowed(mask, seg)),
                             atol=2e-5)


@pytest.mark.parametrize("preset", ["tiny", "tiny_mla"])
def test_forward_in_query_blocks_equals_all_at_once(preset):
  """`attention_chunk` changes memory, not values: logits and gradients of a padded and of a
  packed batch equal the unchunked forward's (remat on, so the blocks' recompute runs)."""
  from r1jax.model import PRESETS, init_params
  cfg = PRESETS[preset].replace(remat=True)
  params = init_params(cfg, 0)
  rng = np.random.default_rng(0)
  b, t = 2, 12
  tokens = jnp.asarray(rng.integers(1, cfg.vocab_size, (b, t)), jnp.int32)
  mask = np.ones((b, t), bool)
  mask[0, :4] = False
  seg = jnp.asarray([[0] * 5 + [1] * 7, [0] * 3 + [1] * 6 + [2] * 3], jnp.int32)
  pos = jnp.asarray(np.maximum(np.cumsum(mask, 1) - 1, 0), jnp.int32)
  w = jnp.asarray(rng.standard_normal((b, t, cfg.vocab_size)), jnp.float32)

  def run(chunk, segment_ids):
    c = cfg.replace(attention_chunk=chunk)
    f = lambda p: jnp.sum(w * transformer.forward(p, c, tokens, pos, jnp.asarray(mask),
                                                  segment_ids=segment_ids)[0])
    return jax.jit(jax.value_and_grad(f))(params)

  for segment_ids in (None, seg):
    (ref, gref) = run(0, segment_ids)
    for chunk in (5,):  # 12 queries: blocks of 5, 5 and 2 (padded)
      val, g = run(chunk, segment_ids)
      np.testing.assert_allclose(float(val), float(ref), rtol=1e-5)
      for a, e in zip(jax.tree.leaves(g), jax.tree.leaves(gref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-4,
                                   atol=1e-5 * float(np.abs(e).max()) + 1e-7)


def test_query_blocks_bound_attention_memory():
  """The compiled backward keeps one block's scores, not the whole [T, T] per layer."""
  from r1jax.model import PRESETS, init_params
  cfg = PRESETS["tiny"].replace(remat=True)
  params = init_params(cfg, 0)
  b, t = 2, 1024
  tokens = jnp.ones((b, t), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(t), (b, t))

  def temp_bytes(chunk):
    c = cfg.replace(attention_chunk=chunk)
    f = lambda p: jnp.sum(transformer.forward(p, c, tokens, pos, return_hidden=True)[0])
    return jax.jit(jax.grad(f)).lower(params).compile().memory_analysis().temp_size_in_bytes

  scores = b * cfg.num_heads * t * t * 4  # one layer's float32 scores, 32 MiB
  full, blocked = temp_bytes(0), temp_bytes(128)
  assert full > scores and blocked < scores and 4 * blocked < full, (full, blocked, scores)


def test_attention_chunk_must_be_a_count():
  from r1jax.model import PRESETS
  with pytest.raises(ValueError, match="attention_chunk must be an int >= 0"):
    PRESETS["tiny"].replace(attention_chunk=-1)


@pytest.mark.parametrize("preset", ["tiny", "tiny_mla"])
def test_cached_forward_in_query_blocks_equals_all_at_once(preset):
  """The RL step's shared-prompt path (prompt into a KV cache, then G completions whose
  queries sit at slots after it) gives the same hidden states and gradients in blocks."""
  from r1jax import rl
  from r1jax.model import PRESETS, init_params
  cfg = PRESETS[preset].replace(remat=True)
  params = init_params(cfg, 0)
  rng = np.random.default_rng(1)
  b, g, p, n = 2, 2, 6, 11
  prompt = jnp.asarray(rng.integers(1, cfg.vocab_size, (b, p)), jnp.int32)
  pmask = jnp.asarray(np.arange(p)[None] >= np.array([[0], [3]]))  # row 1 left-padded
  comp = jnp.asarray(rng.integers(1, cfg.vocab_size, (b * g, n)), jnp.int32)
  cmask = jnp.asarray(np.arange(n)[None] < np.array([[11], [7], [4], [9]]))
  w = jnp.asarray(rng.standard_normal((b * g, n, cfg.hidden_size)), jnp.float32)

  def run(chunk):
    c = cfg.replace(attention_chunk=chunk)
    f = lambda q: jnp.sum(w * rl.completion_hidden(q, c, prompt, pmask, comp, cmask))
    return jax.jit(jax.value_and_grad(f))(params)

  ref, gref = run(0)
  val, grads = run(4)
  np.testing.assert_allclose(float(val), float(ref), rtol=1e-5)
  for a, e in zip(jax.tree.leaves(grads), jax.tree.leaves(gref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-4,
                               atol=1e-5 * float(np.abs(e).max()) + 1e-7)
