"""Multi-head latent attention (DeepSeek-V2/V3), as transformers' DeepseekV3Attention computes it.

Per token, keys and values come from one compressed latent: kv_a [D, Rkv + Dr] gives the
latent c (RMS-normed, Rkv = kv_lora_rank) and one rotary key k_rope (Dr = qk_rope_head_dim)
shared by all heads; kv_b [Rkv, H, Dn + Dv] expands c into each head's k_nope (Dn =
qk_nope_head_dim) and value (Dv = v_head_dim). The query is q [D, H, Dn + Dr], or the
low-rank q_a [D, Rq] -> RMSNorm -> q_b [Rq, H, Dn + Dr] when q_lora_rank is set. Head h's
key is [k_nope_h | k_rope]; the score scale is 1/sqrt(Dn + Dr), times YaRN's mscale^2 under
scaled RoPE. With `rope_interleave` (the DeepSeek checkpoints' layout) the rotary dims
are pairs (x0, x1), (x2, x3), ...; de-interleaving them first makes it the usual RoPE.

Without a cache (training, scoring) the latent is expanded to full per-head K and V. With a
cache only c and k_rope are stored (Rkv + Dr numbers per token and layer: the KV cache's
V buffer holds c [B, S, 1, Rkv], its K buffer k_rope [B, S, 1, Dr]) and attention runs
"absorbed": kv_b's key half is folded into the query (q_nope W_k -> a query over the
latent) and its value half applied after the weighted sum over c, so the cache is never
expanded.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from r1jax.mesh import constrain
from r1jax.model.config import ModelConfig
from r1jax.model.layers import (apply_rope, attention, dense, rms_norm, rope_attention_factor,
                                rope_inv_freq, yarn_softmax_mscale)

Params = dict[str, Any]
# transformers' DeepseekV3RMSNorm default: the q_a / kv_a norms do not take cfg.rms_norm_eps.
LATENT_NORM_EPS = 1e-6


def mla_params(cfg: ModelConfig, rngs: Any, param: Callable) -> dict[str, Any]:
  """The attention params of one MLA layer, made with `param(rngs, shape, axes, cfg, ...)`."""
  d, h, dn, dr, dv = (cfg.hidden_size, cfg.num_heads, cfg.qk_nope_head_dim,
                      cfg.qk_rope_head_dim, cfg.v_head_dim)
  rkv, out = cfg.kv_lora_rank, {}
  if cfg.q_lora_rank:
    rq = cfg.q_lora_rank
    out["q_a"] = param(rngs, (d, rq), ("embed", "q_lora"), cfg, d)
    out["q_a_norm"] = param(rngs, (rq,), ("norm",), cfg, value=1.0)
    out["q_b"] = param(rngs, (rq, h, dn + dr), ("q_lora", "heads", "head_dim"), cfg, rq)
  else:
    out["q"] = param(rngs, (d, h, dn + dr), ("embed", "heads", "head_dim"), cfg, d)
  out["kv_a"] = param(rngs, (d, rkv + dr), ("embed", "kv_lora"), cfg, d)
  out["kv_a_norm"] = param(rngs, (rkv,), ("norm",), cfg, value=1.0)
  out["kv_b"] = param(rngs, (rkv, h, dn + dv), ("kv_lora", "heads", "head_dim"), cfg, rkv)
  out["o"] = param(rngs, (h, dv, d), ("heads", "head_dim", "embed"), cfg, h * dv)
  return out


def mla_hf_layout(cfg: ModelConfig, L: Callable) -> list:
  """The HF checkpoint tensors of one layer's MLA params (transformers' DeepseekV3Attention
  names), as `L(our leaf, HF name, HF shape, our shape, transpose)` makes them
  (r1jax.model.hf_layout.TensorLayout)."""
  d, h, rkv, dv = cfg.hidden_size, cfg.num_heads, cfg.kv_lora_rank, cfg.v_head_dim
  dn, dr, rq = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.q_lora_rank
  a = "self_attn."
  if rq:
    out = [L("q_a", a + "q_a_proj.weight", (rq, d), (d, rq), True),
           L("q_a_norm", a + "q_a_layernorm.weight", (rq,), (rq,)),
           L("q_b", a + "q_b_proj.weight", (h * (dn + dr), rq), (rq, h, dn + dr), True)]
  else:
    out = [L("q", a + "q_proj.weight", (h * (dn + dr), d), (d, h, dn + dr), True)]
  return out + [
      L("kv_a", a + "kv_a_proj_with_mqa.weight", (rkv + dr, d), (d, rkv + dr), True),
      L("kv_a_norm", a + "kv_a_layernorm.weight", (rkv,), (rkv,)),
      L("kv_b", a + "kv_b_proj.weight", (h * (dn + dv), rkv), (rkv, h, dn + dv), True),
      L("o", a + "o_proj.weight", (d, h * dv), (h, dv, d), True)]


def softmax_scale(cfg: ModelConfig) -> float:
  return (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5 * yarn_softmax_mscale(cfg)


def project(hn: jax.Array, layer: Params, cfg: ModelConfig, positions: jax.Array,
            cast: Callable) -> tuple[jax.Array, ...]:
  """hn [B, T, D] -> (q_nope [B,T,H,Dn], rotated q_rope [B,T,H,Dr], latent c [B,T,Rkv],
  rotated k_rope [B,T,Dr])."""
  dn, rkv = cfg.qk_nope_head_dim, cfg.kv_lora_rank
  if "q_a" in layer:
    qa = rms_norm(dense(hn, layer, "q_a", cast), layer["q_a_norm"], LATENT_NORM_EPS)
    q = dense(qa, layer, "q_b", cast)
  else:
    q = dense(hn, layer, "q", cast)
  kv = dense(hn, layer, "kv_a", cast)
  latent = rms_norm(kv[..., :rkv], layer["kv_a_norm"], LATENT_NORM_EPS)
  inv_freq, factor = rope_inv_freq(cfg), rope_attention_factor(cfg)

  def rope(x):
    if cfg.rope_interleave:
      x = jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
    return apply_rope(x, positions, inv_freq, factor)

  q_rope = constrain(rope(q[..., dn:]), ("batch", "length", "heads", "head_dim"))
  return q[..., :dn], q_rope, latent, rope(kv[..., None, rkv:])[:, :, 0]


def absorbed_attention(q_nope: jax.Array, q_rope: jax.Array, k_rope: jax.Array,
                       latent: jax.Array, kv_b: jax.Array, bias: jax.Array, cfg: ModelConfig,
                       dtype: Any, k_layout: str = "bsd") -> jax.Array:
  """Attention straight over the cached latent: q_nope [B,T,H,Dn], q_rope [B,T,H,Dr],
  k_rope [B,S,Dr] (or [B,Dr,S] with k_layout="bds"), latent [B,S,Rkv], bias [B,T,S] ->
  per-head outputs [B,T,H,Dv] (before o)."""
  dn = cfg.qk_nope_head_dim
  kv_b = kv_b.astype(dtype)
  q_lat = jnp.einsum("bthn,rhn->bthr", q_nope, kv_b[..., :dn])
  s = jnp.einsum("bthr,bsr->bhts", q_lat.astype(latent.dtype), latent,
                 preferred_element_type=jnp.float32)
  s = s + jnp.einsum(f"bthd,{k_layout}->bhts", q_rope.astype(k_rope.dtype), k_rope,
                     preferred_element_type=jnp.float32)
  p = jax.nn.softmax(s * softmax_scale(cfg) + bias[:, None], axis=-1).astype(latent.dtype)
  # Head-major output: XLA:CPU has no bf16 x bf16 -> f32 dot that writes [B, T, H, R].
  o_lat = jnp.einsum("bhts,bsr->bhtr", p, latent, preferred_element_type=jnp.float32)
  return jnp.einsum("bhtr,rhv->bthv", o_lat.astype(dtype), kv_b[..., dn:])


def mla_attention(hn: jax.Array, layer: Params, cfg: ModelConfig, positions: jax.Array,
                  bias: jax.Array, cache_kv: tuple | None, index: jax.Array | None,
                  cast: Callable) -> tuple[jax.Array, tuple | None]:
  """One MLA sublayer: hn [B, T, D] -> (output [B, T, D], updated (k_rope, latent) cache
  buffers or None). `bias` [B, T, S] is 0 where a query may attend, MASKED elsewhere."""
  dt = jnp.dtype(cfg.dtype)
  q_nope, q_rope, latent, k_rope = project(hn, layer, cfg, positions, cast)
  if cache_kv is None:
    b, t, h = q_nope.shape[:3]
    kv = dense(latent, layer, "kv_b", cast)  # [B, T, H, Dn + Dv]
    dn = cfg.qk_nope_head_dim
    k_rope_h = jnp.broadcast_to(k_rope[:, :, None], (b, t, h, k_rope.shape[-1]))
    k = jnp.concatenate([kv[..., :dn], k_rope_h], axis=-1)
    q = jnp.concatenate([q_nope, q_rope], axis=-1)
    out = attention(q, k, kv[..., dn:], bias, dt, softmax_scale(cfg), cfg.attention_chunk)
    new_kv = None
  else:
    ck, cv = cache_kv
    ck = jax.lax.dynamic_update_slice_in_dim(ck, k_rope[:, :, None].astype(ck.dtype), index, 1)
    cv = jax.lax.dynamic_update_slice_in_dim(cv, latent[:, :, None].astype(cv.dtype), index, 1)
    new_kv = (ck, cv)
    out = absorbed_attention(q_nope, q_rope, ck[:, :, 0].astype(dt), cv[:, :, 0].astype(dt),
                             layer["kv_b"], bias, cfg, dt)
  return dense(out, layer, "o", cast), new_kv

