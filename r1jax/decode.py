"""The sampler's building blocks: its config, the one-token decode step over a head-major KV
cache (ordinary or MLA's latent one), per-sample keys and the shared prompt prefill; token
choice lives in `r1jax.token_choice` (re-exported here).

`r1jax.sampling` (the static batch) and `r1jax.continuous` (refilled decode slots) are both
built from these; see `r1jax.sampling`'s docstring for why each piece is shaped as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from r1jax import decode_attention
from r1jax.mesh import constrain, current_mesh
from r1jax.model import ModelConfig, forward, init_cache, positions_from_mask, unembed_matrix
from r1jax.model import mla
from r1jax.model.transformer import (EXPERT_DTYPE, MASKED, apply_rope, moe_mlp, rms_norm,
                                     rope_inv_freq)
from r1jax.token_choice import (  # noqa: F401 - re-exported: the sampler's token choice
    _BLOCK, _blocked_categorical, _choose, _filtered_sample, _first_argmax, _nucleus_cutoff,
    _ordered_key, _row_categorical, filter_logits)


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
  # the bf16 model (the trainer recomputes pi_old when it needs it: train.mu > 1).
  decode_dtype: str = ""
  # mode: "static" decodes all B*G rows until the longest ends; "continuous" decodes
  # `num_slots` rows at a time and hands a finished row's slot to the next pending sample
  # (r1jax/continuous.py). Same tokens for the same key, either way.
  mode: str = "static"
  # num_slots: decode slots of mode="continuous" (0: half the rows, at least 1; at most the rows).
  num_slots: int = 0
  # kv_block: mode="continuous" attends over the cache in blocks of this many slots (a
  # multiple of it for caches over 8 blocks long), up to the longest filled slot only
  # (r1jax/decode_attention.py); 0: over the whole cache at every step.
  kv_block: int = 128
  # return_experts: also return the experts each MoE layer routed every prompt and completion
  # token to (`SampleOutput.prompt_experts` / `experts`; router replay, `rl.router_replay`).
  return_experts: bool = False

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
    if self.kv_block < 0:
      raise ValueError(f"sampling.kv_block must be >= 0, got {self.kv_block}")
    if self.cache_chunks and self.mode == "continuous":
      raise ValueError(f"sampling.cache_chunks={self.cache_chunks} is static-mode only: "
                       f"continuous slots attend block by block (sampling.kv_block)")


class SampleOutput(NamedTuple):
  tokens: jax.Array  # [B*G, N] completion tokens (pad after EOS)
  mask: jax.Array  # [B*G, N] 1 for generated tokens, EOS included
  logprobs: jax.Array  # [B*G, N] log p(token) under softmax(logits / temperature)
  lengths: jax.Array  # [B*G] number of generated tokens
  # With `return_experts` (else None), the top-k expert ids of every MoE layer
  # (`cfg.moe_layers`), `transformer.EXPERT_DTYPE`, -1 where no token was routed:
  # experts[r, l, t] is completion token t's routing as the input of the next step (the last
  # token of a sample is never an input: -1); prompt_experts[r, l, j] prompt token j's.
  experts: jax.Array | None = None  # [B*G, L_moe, N, k]
  prompt_experts: jax.Array | None = None  # [B*G, L_moe, P, k] (the same for a group's G rows)


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
  mats = ("q", "k", "v", "o", "gate", "up", "down", "router", "experts_gate", "experts_up",
          "experts_down", "shared_gate", "shared_up", "shared_down", "q_a", "q_b", "kv_a", "kv_b")
  as_is = ("attn_norm", "mlp_norm", "q_norm", "k_norm", "q_a_norm", "kv_a_norm", "router_bias",
           "q_bias", "k_bias", "v_bias")
  layers = []
  for i in range(cfg.num_layers):
    layer = params["layers"][i]
    w = {k: layer[k] for k in as_is if k in layer}
    w.update({k: layer[k].astype(dt) for k in mats if k in layer})
    if fuse and "k" in layer:
      w["qkv"] = jnp.concatenate([w.pop("q").reshape(d, h * hd), w.pop("k").reshape(d, kvh * hd),
                                  w.pop("v").reshape(d, kvh * hd)], axis=1)
      if cfg.qkv_bias:
        w["qkv_bias"] = jnp.concatenate([w.pop(n).reshape(-1) for n in ("q_bias", "k_bias",
                                                                         "v_bias")])
    if fuse and "gate" in layer:
      w["gate_up"] = jnp.concatenate([w.pop("gate"), w.pop("up")], axis=1)
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


def _qkv(hn: jax.Array, layer: dict, cfg: ModelConfig) -> tuple[jax.Array, ...]:
  """q [R, H, Dh], k and v [R, Hkv, Dh] of one token per row (before RoPE)."""
  r, dt = hn.shape[0], jnp.dtype(cfg.dtype)
  h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.hd
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
  return q, k, v


def _swiglu(hn: jax.Array, layer: dict, prefix: str) -> jax.Array:
  """The SwiGLU MLP `prefix`gate/up/down (or its fused gate_up) on hn [R, D]."""
  if prefix + "gate_up" in layer:
    gu = _mm(hn, layer[prefix + "gate_up"])
    g, u = jnp.split(gu, 2, axis=-1)
  else:
    g, u = _mm(hn, layer[prefix + "gate"]), _mm(hn, layer[prefix + "up"])
  return _mm(constrain(jax.nn.silu(g) * u, ("batch", "mlp")), layer[prefix + "down"])


def _decode_step(w: dict, cfg: ModelConfig, tok: jax.Array, pos: jax.Array, live: jax.Array,
                 cache: _Cache, slot: jax.Array, return_experts: bool = False,
                 kv_len: jax.Array | None = None, kv_block: int = 0) -> tuple:
  """One token per row at cache slot `slot` -> (logits [R, V] float32, cache), and with
  `return_experts` the experts its MoE layers chose, [R, L_moe, k] (`EXPERT_DTYPE`).

  The same math as `transformer.forward` with a cache, for T = 1 (`w` from `_decode_weights`).
  `slot` is one slot for all rows (a scalar) or one per row ([R], continuous batching).
  With `kv_block` (and the cache longer than one block, a multiple of it), attention reads
  only the blocks below `kv_len` (a scalar > every row's `slot`; `decode_attention.blocked`;
  MLA's latent attention always reads the whole cache).
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
  blocks = bool(kv_block) and kv_len is not None and cache.mask.shape[1] > kv_block
  x = constrain(jnp.take(w["embed"], tok, axis=0).astype(dt), ("batch", "embed"))
  new_k, new_v, chosen = [], [], []
  for i, layer in enumerate(w["layers"]):
    hn = rms_norm(x, layer["attn_norm"], cfg.rms_norm_eps)
    if "kv_a" in layer:  # MLA: the cache holds k_rope (as K) and the latent (as V), 1 "head"
      q, q_rope, v, k = mla.project(hn[:, None], layer, cfg, pos[:, None], lambda a: a.astype(dt))
      q, q_rope, k, v = q[:, 0], q_rope[:, 0], k[:, 0, None], v[:, 0, None]
    else:
      q, k, v = _qkv(hn, layer, cfg)
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
    if "kv_a" in layer:
      bias = jnp.where(allowed, 0.0, MASKED)[:, None].astype(jnp.float32)
      attn = mla.absorbed_attention(q[:, None], q_rope[:, None], ck[:, 0], cv[:, 0], layer["kv_b"],
                                    bias, cfg, dt, "bds" if kt else "bsd")[:, 0]
    else:
      qg = q.reshape(r, kvh, h // kvh, hd)
      if blocks:
        attn = decode_attention.blocked(qg, ck, cv, allowed, kt, kv_len, kv_block)
      else:
        attn = decode_attention.full(qg, ck, cv, allowed, kt)
      attn = attn.reshape(r, h, hd)
    x = x + _mm(attn.astype(dt), layer["o"], "rhk,hkd->rd")
    x = constrain(x, ("batch", "embed"))
    hn = rms_norm(x, layer["mlp_norm"], cfg.rms_norm_eps)
    if "router" in layer:
      y, _, experts = moe_mlp(hn, layer, cfg, lambda a: a.astype(dt))
      x = x + y + (_swiglu(hn, layer, "shared_") if "shared_gate" in layer else 0)
      chosen.append(experts)
    else:
      x = x + _swiglu(hn, layer, "")
    x = constrain(x, ("batch", "embed"))
  x = rms_norm(x, w["final_norm"], cfg.rms_norm_eps)
  logits = jnp.einsum("rd,dv->rv", x.astype(w["unembed"].dtype), w["unembed"],
                      preferred_element_type=jnp.float32)
  out = constrain(logits, ("batch", "vocab")), _Cache(tuple(new_k), tuple(new_v), slot_mask)
  if return_experts:
    out += (jnp.stack(chosen, axis=1).astype(EXPERT_DTYPE),)
  return out


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


def _prefill(params, cfg: ModelConfig, tokens, mask, positions, chunk: int,
             return_experts: bool = False):
  """Prompt -> (last hidden [B, D], KVCache of exactly P slots), in chunks if `chunk`; with
  `return_experts` also the prompt's routing [B, L_moe, P, k] (`forward`'s)."""
  b, p = tokens.shape
  cache = init_cache(cfg, b, p)
  if not chunk or chunk >= p:
    hidden, cache, *experts = forward(params, cfg, tokens, positions, mask, cache,
                                      return_hidden=True, return_experts=return_experts)
    return (hidden[:, -1], cache, *experts)
  n = p // chunk
  split = lambda x: x.reshape(b, n, chunk).swapaxes(0, 1)

  def body(cache, xs):
    t, m, ps = xs
    hidden, cache, *experts = forward(params, cfg, t, ps, m, cache, return_hidden=True,
                                      return_experts=return_experts)
    return cache, (hidden[:, -1], *experts)

  cache, (last, *experts) = jax.lax.scan(body, cache, (split(tokens), split(mask),
                                                       split(positions)))
  # [n, B, L, chunk, k] -> [B, L, P, k]
  experts = [e.transpose(1, 2, 0, 3, 4).reshape(e.shape[1:3] + (p, -1)) for e in experts]
  return (last[-1], cache, *experts)


def _prompt_cache(params: Any, cfg: ModelConfig, prompt_tokens: jax.Array,
                  prompt_mask: jax.Array, scfg: SamplingConfig):
  """Prefill each prompt once -> (logits after its last token [B, V] float32, its decode-layout
  `_Cache` of exactly P slots in the decode dtype, position of completion token 0 [B], and
  with `scfg.return_experts` the prompt's routing [B, L_moe, P, k], else None)."""
  wdt = jnp.dtype(scfg.decode_dtype or cfg.dtype)
  prompt_mask = prompt_mask.astype(bool)
  positions = positions_from_mask(prompt_mask)
  last, pcache, *experts = _prefill(params, cfg, prompt_tokens, prompt_mask, positions,
                                    scfg.prefill_chunk, scfg.return_experts)
  last = jnp.einsum("bd,dv->bv", last, unembed_matrix(params, cfg).astype(last.dtype),
                    preferred_element_type=jnp.float32)
  k_perm = (0, 2, 3, 1) if _k_transposed(wdt) else (0, 2, 1, 3)  # [B, P, Hkv, Dh] -> head-major
  cache = _Cache(tuple(x.astype(wdt).transpose(k_perm) for x in pcache.k),
                 tuple(x.astype(wdt).transpose(0, 2, 1, 3) for x in pcache.v), pcache.mask)
  return last, cache, positions[:, -1] + 1, (experts[0] if experts else None)


def _no_experts(cfg: ModelConfig, rows: int, n: int) -> jax.Array:
  """[rows, L_moe, n, k] of -1: the completion routing buffer before any token is routed."""
  shape = (rows, len(cfg.moe_layers), n, max(cfg.num_experts_per_tok, 1))
  return jnp.full(shape, -1, EXPERT_DTYPE)


def _pad_length(cache: _Cache, extra: int) -> _Cache:
  """Room for `extra` more (empty) slots at the end of every row's cache."""
  k_axis = 3 if _k_transposed(cache.k[0].dtype) else 2
  pad = lambda x, axis: jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])
  return _Cache(tuple(pad(x, k_axis) for x in cache.k), tuple(pad(x, 2) for x in cache.v),
                pad(cache.mask, 1))
