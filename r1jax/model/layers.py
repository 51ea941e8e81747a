"""Building blocks shared by the attention variants and the MLPs: parameter creation, RMSNorm,
RoPE (plain, Llama-3 and YaRN frequencies), masked softmax attention and the 2-D matmul."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.config import ModelConfig

Params = dict[str, Any]


def param(rngs: nnx.Rngs, shape, axes, cfg: ModelConfig, fan_in: int | None = None,
           value: float | None = None) -> nnx.Param:
  dtype = jnp.dtype(cfg.param_dtype)
  if value is not None:
    x = jnp.full(shape, value, dtype)
  else:
    std = 1.0 / math.sqrt(fan_in) if fan_in else 0.02
    x = (std * jax.random.truncated_normal(rngs.params(), -2, 2, shape)).astype(dtype)
  return nnx.Param(x, logical_axes=axes)



def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  xf = x.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig, dim: int | None = None) -> jax.Array:
  """Inverse frequencies [dim/2] of the rotary dims (`cfg.rope_dim` by default)."""
  hd = dim or cfg.rope_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  rs = cfg.rope_scaling_dict
  kind = rs.get("rope_type", rs.get("type")) if rs else None
  if kind == "llama3":
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - lo) / (hi - lo)
    scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
    mid = (1 - smooth) * inv / factor + smooth * inv
    is_mid = (wavelen <= old / lo) & (wavelen >= old / hi)
    inv = jnp.where(is_mid, mid, scaled)
  elif kind == "yarn":
    inv = _yarn_inv_freq(inv, hd, cfg)
  elif kind not in (None, "default"):
    raise NotImplementedError(f"rope_scaling type {rs!r} is not supported")
  return inv


def _yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
  return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_factor(cfg: ModelConfig) -> float:
  rs = cfg.rope_scaling_dict
  return rs.get("factor") or cfg.max_position_embeddings / rs["original_max_position_embeddings"]


def _yarn_inv_freq(inv: jax.Array, dim: int, cfg: ModelConfig) -> jax.Array:
  """YaRN: interpolate the low frequencies by `factor`, keep the high ones, ramp between
  (transformers' `_compute_yarn_parameters`)."""
  rs = cfg.rope_scaling_dict
  factor, base = _yarn_factor(cfg), cfg.rope_theta
  old = rs["original_max_position_embeddings"]
  corr = lambda rot: dim * math.log(old / (rot * 2 * math.pi)) / (2 * math.log(base))
  lo, hi = corr(rs.get("beta_fast") or 32), corr(rs.get("beta_slow") or 1)
  if rs.get("truncate", True):
    lo, hi = math.floor(lo), math.ceil(hi)
  lo, hi = max(lo, 0), min(hi, dim - 1)
  hi = hi + 0.001 if lo == hi else hi
  ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - lo) / (hi - lo), 0, 1)
  return inv / factor * ramp + inv * (1 - ramp)


def rope_attention_factor(cfg: ModelConfig) -> float:
  """The factor YaRN multiplies cos and sin by (1 without YaRN)."""
  rs = cfg.rope_scaling_dict
  if not rs or rs.get("rope_type", rs.get("type")) != "yarn":
    return 1.0
  if rs.get("attention_factor") is not None:
    return float(rs["attention_factor"])
  factor, m, m_all = _yarn_factor(cfg), rs.get("mscale"), rs.get("mscale_all_dim")
  if m and m_all:
    return _yarn_get_mscale(factor, m) / _yarn_get_mscale(factor, m_all)
  return _yarn_get_mscale(factor)


def yarn_softmax_mscale(cfg: ModelConfig) -> float:
  """DeepSeek's extra softmax-scale factor under scaled RoPE: mscale(factor, mscale_all_dim)^2
  (transformers' `yarn_apply_mscale`; 1 when there is no scaling or no mscale_all_dim)."""
  rs = cfg.rope_scaling_dict
  if not rs or rs.get("rope_type", rs.get("type")) in (None, "default") or not rs.get("mscale_all_dim"):
    return 1.0
  return _yarn_get_mscale(_yarn_factor(cfg), rs["mscale_all_dim"]) ** 2


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array,
               scale: float = 1.0) -> jax.Array:
  """HF (non-interleaved, rotate-half) RoPE. x: [B, T, H, Dh], positions: [B, T]; `scale`
  multiplies cos and sin (YaRN's attention factor)."""
  ang = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, Dh/2]
  cos = scale * jnp.concatenate([jnp.cos(ang)] * 2, -1)[:, :, None, :]
  sin = scale * jnp.concatenate([jnp.sin(ang)] * 2, -1)[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rot = jnp.concatenate([-x2, x1], axis=-1)
  return (xf * cos + rot * sin).astype(x.dtype)


# Additive mask: 0 where a query may attend, this where it may not. Finite, so a query with
# no visible key (a left-padding slot) gets a uniform softmax, never a NaN.
MASKED = -1e30


class KeyMask(NamedTuple):
  """A causal mask left for `attention` to build one block of queries at a time
  (`ModelConfig.attention_chunk`): query i (at key slot offset + i) attends to key j when
  j <= offset + i, mask[j], and (packed rows) segment_ids[i] == segment_ids[j]."""
  mask: jax.Array  # [B, S] bool
  segment_ids: jax.Array | None  # [B, T] (no cache: T == S, offset 0)
  offset: jax.Array | int = 0  # the first query's slot (a KV cache's write index)


def block_bias(km: KeyMask, seg_q: jax.Array | None, start: jax.Array, n: int) -> jax.Array:
  """The [B, n, S] bias of queries start..start+n-1 (0 or MASKED); seg_q [B, >= start+n]:
  the queries' segment ids."""
  s = km.mask.shape[1]
  q_slot = km.offset + start + jnp.arange(n)
  allowed = (jnp.arange(s)[None] <= q_slot[:, None])[None] & km.mask[:, None]
  if km.segment_ids is not None:
    seg_q = jax.lax.dynamic_slice_in_dim(seg_q, start, n, axis=1)
    allowed = allowed & (seg_q[:, :, None] == km.segment_ids[:, None, :])
  return jnp.where(allowed, 0.0, MASKED).astype(jnp.float32)


def chunked_attention(q, k, v, km: KeyMask, dtype, scale: float | None, chunk: int):
  """`attention` over blocks of `chunk` queries, each block's scores [B, H, chunk, S] built,
  used and (in the backward) rebuilt on its own: attention memory grows with T * chunk, not
  T^2, at the FLOPs of the full scores. The last block is padded with queries whose outputs
  are dropped."""
  b, t = q.shape[:2]
  n = -(-t // chunk)
  pad = n * chunk - t
  seg_q = km.segment_ids
  if pad:
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    seg_q = None if seg_q is None else jnp.pad(seg_q, ((0, 0), (0, pad)), constant_values=-1)
  qs = q.reshape(b, n, chunk, *q.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def one(qc, start):
    return attention(qc, k, v, block_bias(km, seg_q, start, chunk), dtype, scale)

  out = jax.lax.map(lambda xs: one(*xs), (qs, jnp.arange(n) * chunk))
  return out.swapaxes(0, 1).reshape(b, n * chunk, *out.shape[3:])[:, :t]


def attention(q, k, v, bias, dtype, scale: float | None = None, chunk: int = 0):
  """q [B,T,H,Dh], k [B,S,Hkv,Dh], v [B,S,Hkv,Dv], bias [B,T,S] (0 or MASKED) -> [B,T,H,Dv];
  the scores are scaled by `scale` (default 1/sqrt(Dh)). A `KeyMask` instead of the bias
  runs `chunked_attention` in blocks of `chunk` queries.

  The dots run on explicitly transposed operands, [B, Hkv, T*G, Dh] x [B, Hkv, S, Dh] (G
  query heads per kv head), so both are plain batched matmuls, and the mask is one add:
  as one einsum over the natural layouts with a select, XLA:CPU ran the forward 2.8x and
  the forward+backward 1.4x slower (SmolLM2-135M's heads, 32 rows of 127 queries).
  """
  if isinstance(bias, KeyMask):
    return chunked_attention(q, k, v, bias, dtype, scale, chunk)
  b, t, h, hd = q.shape
  s, kvh = k.shape[1], k.shape[2]
  g = h // kvh
  scale = 1 / math.sqrt(hd) if scale is None else scale
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kvh, g, hd)
  q = q.transpose(0, 2, 1, 3, 4).reshape(b, kvh, t * g, hd)
  scores = jnp.einsum("bkmd,bksd->bkms", q, k.transpose(0, 2, 1, 3),
                      preferred_element_type=jnp.float32)
  scores = scores.reshape(b, kvh, t, g, s) + bias[:, None, :, None, :]
  p = jax.nn.softmax(scores, axis=-1).astype(dtype).reshape(b, kvh, t * g, s)
  out = jnp.einsum("bkms,bksd->bkmd", p, v.transpose(0, 2, 1, 3))
  return out.reshape(b, kvh, t, g, -1).transpose(0, 2, 1, 3, 4).reshape(b, t, h, -1)


def dense(x: jax.Array, layer: Params, name: str, cast) -> jax.Array:
  """x [B, T, *in] @ layer[name] [*in, *out] -> [B, T, *out], plus x @ A @ B when LoRA
  adapters ride along (r1jax.lora; A [*in, r], B [r, *out]).

  Computed as 2-D [tokens, in] x [in, out] matmuls: XLA:CPU runs the backward of the
  equivalent rank-3/4 einsum (the weight gradient contracts over batch and length) at a
  fraction of its matmul rate, and a 2-D dot is what every backend tiles best.
  """
  w = cast(layer[name])
  b, t = x.shape[:2]
  x2 = x.reshape(b * t, -1)
  out = w.shape[x.ndim - 2:]
  y = x2 @ w.reshape(x2.shape[1], -1)
  if name + "_lora_a" in layer:
    a, bb = cast(layer[name + "_lora_a"]), cast(layer[name + "_lora_b"])
    xa = x2 @ a.reshape(x2.shape[1], -1)
    y = y + xa @ bb.reshape(xa.shape[1], -1)
  return y.reshape(b, t, *out)

