"""The sampler's building blocks: its config, token choice, the one-token decode step over a
head-major KV cache, per-sample keys and the shared prompt prefill.

`r1jax.sampling` (the static batch) and `r1jax.continuous` (refilled decode slots) are both
built from these; see `r1jax.sampling`'s docstring for why each piece is shaped as it is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from r1jax.mesh import constrain, current_mesh
from r1jax.model import ModelConfig, forward, init_cache, positions_from_mask, unembed_matrix
from r1jax.model.transformer import apply_rope, moe_mlp, rms_norm, rope_inv_freq


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 128
  temperature: float = 1.0  # 0 means greedy
  top_p: float = 1.0
  top_k: int = 0  # 0 disables
  num_samples: int = 1  # G completions per prompt
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0
  # Speed knobs (results do not depend on them, up to float rounding):
  # batch_bucket: 0 pads the prompt batch to the next of 1..8, 10, 12, 14, 16, 20, 24, 28,
  # 32, 40, ... (<= 25% dummy rows); 1 disables; k > 1 pads to a multiple of k. Buckets are
  # also multiples of the mesh's data-parallel size.
  batch_bucket: int = 0
  # cache_chunks: decode in this many segments, each attending over the filled part of the
  # cache only (more segments, more compiled loops); 0: one per 64 new tokens, at most 4.
  cache_chunks: int = 0
  # prefill_chunk: prefill prompts longer than this in chunks of this many tokens (0: at once).
  prefill_chunk: int = 0
  # top_p_candidates: top-p samples among this many top logits when they cover the nucleus.
  top_p_candidates: int = 64
  # fuse_weights: concatenate q/k/v and gate/up for decoding (a copy of the weights per call);
  # None: on the CPU backend only.
  fuse_weights: bool | None = None
  # decode_dtype: storage dtype of the decode weights and the KV cache ("" = the model's
  # compute dtype). "bfloat16" under a float32 model halves the bytes read per token and
  # uses the CPU's/accelerator's bf16 dot units; dots still accumulate and return float32
  # and the residual stream stays in the model's dtype. Sampler log-probs then come from
  # the bf16 model (the trainer recomputes pi_old when it needs it: grpo.mu > 1).
  decode_dtype: str = ""
  # mode: "static" decodes all B*G rows until the longest ends; "continuous" decodes
  # `num_slots` rows at a time and hands a finished row's slot to the next pending sample
  # (r1jax/continuous.py). Same tokens for the same key, either way.
  mode: str = "static"
  # num_slots: decode slots of mode="continuous" (0: half the rows, at least 1; at most the rows).
  num_slots: int = 0

  def __post_init__(self):
    if self.max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0 or self.num_samples < 1:
      raise ValueError(f"bad top_k={self.top_k} or num_samples={self.num_samples}")
    if self.batch_bucket < 0 or self.prefill_chunk < 0:
      raise ValueError(f"bad batch_bucket={self.batch_bucket} or "
                       f"prefill_chunk={self.prefill_chunk}")
    if self.decode_dtype and self.decode_dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"decode_dtype must be '', float32, bfloat16 or float16, "
                       f"got {self.decode_dtype!r}")
    if self.cache_chunks < 0 or self.top_p_candidates < 1:
      raise ValueError(f"bad cache_chunks={self.cache_chunks} or "
                       f"top_p_candidates={self.top_p_candidates}")
    if self.mode not in ("static", "continuous"):
      raise ValueError(f"sampling.mode must be 'static' or 'continuous', got {self.mode!r}")
    if self.num_slots < 0 or (self.num_slots and self.mode != "continuous"):
      raise ValueError(f"sampling.num_slots={self.num_slots} needs mode='continuous' and >= 0 "
                       f"(mode={self.mode!r})")
    if self.cache_chunks and self.mode == "continuous":
      raise ValueError(f"sampling.cache_chunks={self.cache_chunks} is static-mode only: "
                       f"continuous slots attend over the whole cache")


class SampleOutput(NamedTuple):
  tokens: jax.Array  # [B*G, N] completion tokens (pad after EOS)
  mask: jax.Array  # [B*G, N] 1 for generated tokens, EOS included
  logprobs: jax.Array  # [B*G, N] log p(token) under softmax(logits / temperature)
  lengths: jax.Array  # [B*G] number of generated tokens


# ----------------------------------------------------------------------------- token choice


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


def _choose(logits: jax.Array, keys: jax.Array, scfg: SamplingConfig):
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


def _filtered_sample(scaled, m, e, keys, scfg: SamplingConfig):
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


# ----------------------------------------------------------------------------- decode step


class _Cache(NamedTuple):
  """Decode cache: per layer K and V [R, Hkv, S, Dh], K transposed to [R, Hkv, Dh, S] for
  32-bit caches (`_k_transposed`; both attention dots are then plain batched matmuls over
  contiguous slabs), slot validity [R, S]."""
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  mask: jax.Array


_K_AXES = ("batch", "kv_heads", "head_dim", "length")
_V_AXES = ("batch", "kv_heads", "length", "head_dim")


def _fuse_default() -> bool:
  mesh = current_mesh()
  return jax.default_backend() == "cpu" and (mesh is None or mesh.shape.get("tensor", 1) == 1)


def _decode_weights(params, cfg: ModelConfig, fuse: bool, wdt: Any) -> dict:
  """Weights in the layout the decode step wants, made once per `generate` call.

  With `fuse`, q/k/v and gate/up are concatenated into one matmul each (fewer, wider dots:
  faster on CPU; skipped under tensor parallelism, where it would reshard); the unembedding
  is materialised as [D, V] (a transposed tied embedding makes the dot much slower).
  Matrices are stored in `wdt`; norms and biases stay as they are.
  """
  dt = jnp.dtype(wdt)
  d, h, kvh, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.hd
  layers = []
  for i in range(cfg.num_layers):
    layer = params["layers"][i]
    moe = "router" in layer
    w = {k: layer[k] for k in ("attn_norm", "mlp_norm", "q_norm", "k_norm") if k in layer}
    mlp = ("router", "experts_gate", "experts_up", "experts_down") if moe else ("down",)
    w.update({k: layer[k].astype(dt) for k in ("o",) + mlp})
    if fuse:
      w["qkv"] = jnp.concatenate([layer["q"].reshape(d, h * hd), layer["k"].reshape(d, kvh * hd),
                                  layer["v"].reshape(d, kvh * hd)], axis=1).astype(dt)
      if not moe:
        w["gate_up"] = jnp.concatenate([layer["gate"], layer["up"]], axis=1).astype(dt)
      if cfg.qkv_bias:
        w["qkv_bias"] = jnp.concatenate([layer["q_bias"].reshape(-1), layer["k_bias"].reshape(-1),
                                         layer["v_bias"].reshape(-1)])
    else:
      for k in ("q", "k", "v") + (() if moe else ("gate", "up")):
        w[k] = layer[k].astype(dt)
      if cfg.qkv_bias:
        w.update({k: layer[k] for k in ("q_bias", "k_bias", "v_bias")})
    layers.append(w)
  unembed = unembed_matrix(params, cfg).astype(dt)
  if fuse and cfg.tie_embeddings:
    unembed = jnp.copy(unembed)
  # Whole along `embed` for the token lookup (see `transformer.forward`).
  embed = constrain(params["embed"], ("vocab", None))
  return {"embed": embed, "layers": layers, "final_norm": params["final_norm"],
          "unembed": unembed}


def _k_transposed(kv_dtype: Any) -> bool:
  """Whether K is cached as [R, Hkv, Dh, S] (fastest for float32 on CPU) rather than like V,
  [R, Hkv, S, Dh] (fastest for 16-bit caches: XLA's CPU backend writes a bf16 slot of the
  transposed layout by rewriting the whole cache)."""
  return jnp.dtype(kv_dtype).itemsize > 2


def _mm(x: jax.Array, w: jax.Array, spec: str = "rd,dn->rn") -> jax.Array:
  """x @ w in w's dtype with float32 accumulation and result, cast back to x's dtype (a bf16
  dot that returns bf16 takes a much slower path on CPU than one that returns float32)."""
  return jnp.einsum(spec, x.astype(w.dtype), w, preferred_element_type=jnp.float32).astype(x.dtype)


def _decode_step(w: dict, cfg: ModelConfig, tok: jax.Array, pos: jax.Array, live: jax.Array,
                 cache: _Cache, slot: jax.Array) -> tuple[jax.Array, _Cache]:
  """One token per row at cache slot `slot` -> (logits [R, V] float32, cache).

  The same math as `transformer.forward` with a cache, for T = 1 (`w` from `_decode_weights`).
  `slot` is one slot for all rows (a scalar) or one per row ([R], continuous batching).
  """
  dt = jnp.dtype(cfg.dtype)
  r = tok.shape[0]
  h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.hd
  inv_freq = rope_inv_freq(cfg)
  rope = lambda x: apply_rope(x[:, None], pos[:, None], inv_freq)[:, 0]  # T = 1
  per_row = jnp.ndim(slot) == 1
  ids = jnp.arange(cache.mask.shape[1])[None]
  if per_row:
    slot_mask = jnp.where(ids == slot[:, None], live[:, None], cache.mask)
    allowed = slot_mask & (ids <= slot[:, None])
    rows = jnp.arange(r)
  else:
    slot_mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, live[:, None], slot, axis=1)
    allowed = slot_mask & (ids <= slot)
  x = constrain(jnp.take(w["embed"], tok, axis=0).astype(dt), ("batch", "embed"))
  new_k, new_v = [], []
  for i, layer in enumerate(w["layers"]):
    hn = rms_norm(x, layer["attn_norm"], cfg.rms_norm_eps)
    if "qkv" in layer:
      qkv = _mm(hn, layer["qkv"])
      if cfg.qkv_bias:
        qkv = qkv + layer["qkv_bias"].astype(dt)
      q = qkv[:, :h * hd].reshape(r, h, hd)
      k = qkv[:, h * hd:(h + kvh) * hd].reshape(r, kvh, hd)
      v = qkv[:, (h + kvh) * hd:].reshape(r, kvh, hd)
    else:
      q, k, v = (_mm(hn, layer[n], "rd,dhk->rhk") for n in ("q", "k", "v"))
      if cfg.qkv_bias:
        q, k, v = (a + layer[n + "_bias"].astype(dt) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    if cfg.qk_norm:
      q = rms_norm(q, layer["q_norm"], cfg.rms_norm_eps)
      k = rms_norm(k, layer["k_norm"], cfg.rms_norm_eps)
    q = constrain(rope(q), ("batch", "heads", "head_dim"))
    k = rope(k)
    kt = _k_transposed(cache.k[i].dtype)
    k, v = k.astype(cache.k[i].dtype), v.astype(cache.v[i].dtype)
    if per_row:  # a scatter of R slots (in place)
      ck = (cache.k[i].at[rows, :, :, slot] if kt else cache.k[i].at[rows, :, slot]).set(k)
      cv = cache.v[i].at[rows, :, slot].set(v)
    else:
      ck = jax.lax.dynamic_update_slice_in_dim(cache.k[i], k[..., None] if kt else k[:, :, None],
                                               slot, axis=3 if kt else 2)
      cv = jax.lax.dynamic_update_slice_in_dim(cache.v[i], v[:, :, None], slot, axis=2)
    ck, cv = constrain(ck, _K_AXES if kt else _V_AXES), constrain(cv, _V_AXES)
    new_k.append(ck)
    new_v.append(cv)
    qg = q.reshape(r, kvh, h // kvh, hd).astype(ck.dtype)
    s = jnp.einsum("rkgd,rkds->rkgs" if kt else "rkgd,rksd->rkgs", qg, ck,
                   preferred_element_type=jnp.float32)
    s = s / math.sqrt(hd)
    s = jnp.where(allowed[:, None, None], s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(cv.dtype)
    attn = jnp.einsum("rkgs,rksd->rkgd", p, cv, preferred_element_type=jnp.float32)
    x = x + _mm(attn.reshape(r, h, hd).astype(dt), layer["o"], "rhk,hkd->rd")
    x = constrain(x, ("batch", "embed"))
    hn = rms_norm(x, layer["mlp_norm"], cfg.rms_norm_eps)
    if "router" in layer:
      x = constrain(x + moe_mlp(hn, layer, cfg, lambda a: a.astype(dt))[0], ("batch", "embed"))
      continue
    if "gate_up" in layer:
      gu = _mm(hn, layer["gate_up"])
      g, u = gu[:, :cfg.intermediate_size], gu[:, cfg.intermediate_size:]
    else:
      g, u = _mm(hn, layer["gate"]), _mm(hn, layer["up"])
    mlp = constrain(jax.nn.silu(g) * u, ("batch", "mlp"))
    x = constrain(x + _mm(mlp, layer["down"]), ("batch", "embed"))
  x = rms_norm(x, w["final_norm"], cfg.rms_norm_eps)
  logits = jnp.einsum("rd,dv->rv", x.astype(w["unembed"].dtype), w["unembed"],
                      preferred_element_type=jnp.float32)
  return constrain(logits, ("batch", "vocab")), _Cache(tuple(new_k), tuple(new_v), slot_mask)


# ----------------------------------------------------------------------------- generate


def _repeat_rows(x: jax.Array, g: int) -> jax.Array:
  return jnp.repeat(x, g, axis=0) if g > 1 else x


def _sample_keys(rng: jax.Array, t: jax.Array, rows: jax.Array) -> jax.Array:
  """The key of token t of sample row `rows` (row b*G + g is sample g of prompt b): one per
  (prompt, sample, position), whatever batch or decode slot the sample runs in."""
  t, rows = jnp.broadcast_arrays(jnp.asarray(t, jnp.uint32), jnp.asarray(rows, jnp.uint32))
  return jax.vmap(lambda t, r: jax.random.fold_in(jax.random.fold_in(rng, t), r))(t, rows)


def _row_keys(rng: jax.Array, t: jax.Array, rows: int) -> jax.Array:
  return _sample_keys(rng, t, jnp.arange(rows, dtype=jnp.uint32))


def _prefill(params, cfg: ModelConfig, tokens, mask, positions, chunk: int):
  """Prompt -> (last hidden [B, D], KVCache of exactly P slots), in chunks if `chunk`."""
  b, p = tokens.shape
  cache = init_cache(cfg, b, p)
  if not chunk or chunk >= p:
    hidden, cache = forward(params, cfg, tokens, positions, mask, cache, return_hidden=True)
    return hidden[:, -1], cache
  n = p // chunk
  split = lambda x: x.reshape(b, n, chunk).swapaxes(0, 1)

  def body(cache, xs):
    t, m, ps = xs
    hidden, cache = forward(params, cfg, t, ps, m, cache, return_hidden=True)
    return cache, hidden[:, -1]

  cache, last = jax.lax.scan(body, cache, (split(tokens), split(mask), split(positions)))
  return last[-1], cache


def _prompt_cache(params: Any, cfg: ModelConfig, prompt_tokens: jax.Array,
                  prompt_mask: jax.Array, scfg: SamplingConfig):
  """Prefill each prompt once -> (logits after its last token [B, V] float32, its decode-layout
  `_Cache` of exactly P slots in the decode dtype, position of completion token 0 [B])."""
  wdt = jnp.dtype(scfg.decode_dtype or cfg.dtype)
  prompt_mask = prompt_mask.astype(bool)
  positions = positions_from_mask(prompt_mask)
  last, pcache = _prefill(params, cfg, prompt_tokens, prompt_mask, positions, scfg.prefill_chunk)
  last = jnp.einsum("bd,dv->bv", last, unembed_matrix(params, cfg).astype(last.dtype),
                    preferred_element_type=jnp.float32)
  k_perm = (0, 2, 3, 1) if _k_transposed(wdt) else (0, 2, 1, 3)  # [B, P, Hkv, Dh] -> head-major
  cache = _Cache(tuple(x.astype(wdt).transpose(k_perm) for x in pcache.k),
                 tuple(x.astype(wdt).transpose(0, 2, 1, 3) for x in pcache.v), pcache.mask)
  return last, cache, positions[:, -1] + 1


def _pad_length(cache: _Cache, extra: int) -> _Cache:
  """Room for `extra` more (empty) slots at the end of every row's cache."""
  k_axis = 3 if _k_transposed(cache.k[0].dtype) else 2
  pad = lambda x, axis: jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])
  return _Cache(tuple(pad(x, k_axis) for x in cache.k), tuple(pad(x, 2) for x in cache.v),
                pad(cache.mask, 1))
