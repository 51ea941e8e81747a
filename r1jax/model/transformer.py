"""Decoder-only transformer (Llama 3.x / Qwen2 / SmolLM2 / Qwen3 / Qwen3-MoE / DeepSeek-V3) in
Flax NNX, used as pure functions.

The module is built once per config and split (`nnx.split`) into a graph and a params
pytree (nested dicts of arrays). Everything downstream calls `forward(params, cfg, ...)`,
which merges them inside the traced function, so jitted code takes plain pytrees.

Parameter layout (shapes; logical axes in brackets):
  embed       [V, D]            (vocab, embed)
  layers[i]   attn_norm [D], q [D, H, Dh], k/v [D, Hkv, Dh], o [H, Dh, D],
              q_bias [H, Dh], k_bias/v_bias [Hkv, Dh] (qkv_bias only),
              q_norm/k_norm [Dh] (qk_norm only), mlp_norm [D], and either
              gate/up [D, F], down [F, D] (dense MLP) or, in a MoE layer,
              router [D, E] (embed, expert), experts_gate/experts_up [E, D, Fe]
              (expert, embed, mlp), experts_down [E, Fe, D] (expert, mlp, embed),
              router_bias [E] (sigmoid routing only; not trained by gradients),
              shared_gate/shared_up [D, Fs], shared_down [Fs, D] (n_shared_experts > 0)
              An MLA layer (kv_lora_rank > 0) has r1jax.model.mla's attention params
              (q or q_a/q_a_norm/q_b, kv_a, kv_a_norm, kv_b, o) instead of q/k/v/o.
  final_norm  [D]
  lm_head     [D, V]            (untied only)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.mesh import constrain
from r1jax.model.config import ModelConfig
from r1jax.model.layers import (MASKED, KeyMask, Params, apply_rope, attention, block_bias, dense,
                                param, rms_norm, rope_inv_freq)
from r1jax.model.mla import mla_attention, mla_params
from r1jax.model.moe import (  # noqa: F401 - MOE_IMPLS, merge_router_stats, route: re-exported
    EXPERT_DTYPE, MOE_IMPLS, merge_router_stats, moe_mlp, route, router_stats, router_summary)

# Older names, kept for the modules and tests that import them from here.
_attention, _dense, _param = attention, dense, param


class KVCache(NamedTuple):
  """One K and one V buffer per layer, [B, S, Hkv, Dh], plus slot bookkeeping. An MLA
  model caches its compressed latent instead: K is k_rope [B, S, 1, Dr] and V the latent
  [B, S, 1, Rkv] (r1jax.model.mla).

  `mask[b, s]` says slot s holds a real token of row b (prompt padding stays False);
  `index` is the next slot to write (shared by all rows: prompts are left-padded).
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  mask: jax.Array
  index: jax.Array


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
  dtype = jnp.dtype(dtype or cfg.dtype)
  heads, dk, dv = cfg.cache_dims
  k_shape, v_shape = (batch, max_len, heads, dk), (batch, max_len, heads, dv)
  zeros = lambda shape: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
  return KVCache(zeros(k_shape), zeros(v_shape), jnp.zeros((batch, max_len), bool),
                 jnp.zeros((), jnp.int32))


class Block(nnx.Module):
  """Pre-norm attention (or MLA) + SwiGLU MLP (or a mixture of SwiGLU experts when `moe`)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, moe: bool = False):
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.attn_norm = _param(rngs, (d,), ("norm",), cfg, value=1.0)
    self.mlp_norm = _param(rngs, (d,), ("norm",), cfg, value=1.0)
    if cfg.is_mla:
      for name, p in mla_params(cfg, rngs, _param).items():
        setattr(self, name, p)
    else:
      self._attention_params(cfg, rngs)
    if moe:
      e, fe = cfg.num_experts, cfg.moe_intermediate_size
      self.router = _param(rngs, (d, e), ("embed", "expert"), cfg, d)
      if cfg.scoring_func == "sigmoid":
        self.router_bias = _param(rngs, (e,), ("expert",), cfg, value=0.0)
      self.experts_gate = _param(rngs, (e, d, fe), ("expert", "embed", "mlp"), cfg, d)
      self.experts_up = _param(rngs, (e, d, fe), ("expert", "embed", "mlp"), cfg, d)
      self.experts_down = _param(rngs, (e, fe, d), ("expert", "mlp", "embed"), cfg, fe)
      if cfg.n_shared_experts:
        self._mlp_params(cfg, rngs, "shared_", fe * cfg.n_shared_experts)
    else:
      self._mlp_params(cfg, rngs, "", f)

  def _mlp_params(self, cfg: ModelConfig, rngs: nnx.Rngs, prefix: str, f: int):
    d = cfg.hidden_size
    setattr(self, prefix + "gate", _param(rngs, (d, f), ("embed", "mlp"), cfg, d))
    setattr(self, prefix + "up", _param(rngs, (d, f), ("embed", "mlp"), cfg, d))
    setattr(self, prefix + "down", _param(rngs, (f, d), ("mlp", "embed"), cfg, f))

  def _attention_params(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.hd
    self.q = _param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), cfg, d)
    self.k = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), cfg, d)
    self.v = _param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), cfg, d)
    self.o = _param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), cfg, h * hd)
    if cfg.qkv_bias:
      self.q_bias = _param(rngs, (h, hd), ("heads", "head_dim"), cfg, value=0.0)
      self.k_bias = _param(rngs, (kv, hd), ("kv_heads", "head_dim"), cfg, value=0.0)
      self.v_bias = _param(rngs, (kv, hd), ("kv_heads", "head_dim"), cfg, value=0.0)
    if cfg.qk_norm:
      self.q_norm = _param(rngs, (hd,), ("norm",), cfg, value=1.0)
      self.k_norm = _param(rngs, (hd,), ("norm",), cfg, value=1.0)


class Transformer(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)
    self.layers = nnx.List([Block(cfg, rngs, cfg.is_moe_layer(i)) for i in range(cfg.num_layers)])
    self.final_norm = _param(rngs, (cfg.hidden_size,), ("norm",), cfg, value=1.0)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg,
                            cfg.hidden_size)


@functools.lru_cache(maxsize=None)
def _abstract(cfg: ModelConfig) -> tuple[Any, Any]:
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
  return graphdef, state


def init_params(cfg: ModelConfig, rng: jax.Array | int = 0) -> Params:
  """Random-init params (a nested dict of arrays)."""
  seed = rng if isinstance(rng, int) else jax.random.randint(rng, (), 0, 2**31 - 1)
  _, state = nnx.split(Transformer(cfg, nnx.Rngs(params=seed)))
  return nnx.to_pure_dict(state)


def param_shapes(cfg: ModelConfig) -> Params:
  """Params as `jax.ShapeDtypeStruct`s, without allocating."""
  return nnx.to_pure_dict(_abstract(cfg)[1])


def param_axes(cfg: ModelConfig) -> Params:
  """Logical axis names of every param, a pytree of tuples matching `init_params`."""
  out: dict = {}
  for path, var in nnx.to_flat_state(_abstract(cfg)[1]):
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = tuple(var.get_metadata()["logical_axes"])
  return out


def _gqa(hn, layer, cfg: ModelConfig, positions, inv_freq, bias, cache_kv, index, c):
  """Grouped-query attention sublayer: hn [B, T, D] -> (output [B, T, D], cache buffers)."""
  dt = jnp.dtype(cfg.dtype)
  q = _dense(hn, layer, "q", c)
  k = _dense(hn, layer, "k", c)
  v = _dense(hn, layer, "v", c)
  if cfg.qkv_bias:
    q, k, v = q + c(layer["q_bias"]), k + c(layer["k_bias"]), v + c(layer["v_bias"])
  if cfg.qk_norm:
    q = rms_norm(q, layer["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, layer["k_norm"], cfg.rms_norm_eps)
  q = constrain(apply_rope(q, positions, inv_freq), ("batch", "length", "heads", "head_dim"))
  k = constrain(apply_rope(k, positions, inv_freq), ("batch", "length", "kv_heads", "head_dim"))
  v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
  if cache_kv is not None:
    ck, cv = cache_kv
    k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), index, axis=1)
    v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), index, axis=1)
    new_kv = (k, v)
  else:
    new_kv = None
  attn = _attention(q, k.astype(dt), v.astype(dt), bias, dt, chunk=cfg.attention_chunk)
  return _dense(attn, layer, "o", c), new_kv


def swiglu(hn: jax.Array, layer: Params, cast, prefix: str = "") -> jax.Array:
  """The SwiGLU MLP named `prefix`gate/up/down on hn [B, T, D]."""
  g = _dense(hn, layer, prefix + "gate", cast)
  u = _dense(hn, layer, prefix + "up", cast)
  return _dense(constrain(jax.nn.silu(g) * u, ("batch", "length", "mlp")), layer,
                prefix + "down", cast)


def _block(x, layer, cfg: ModelConfig, positions, inv_freq, bias, cache_kv, index, mask,
           forced=None):
  """One block -> (x, cache buffers, router stats with the chosen "experts" [B, T, k] (a MoE
  layer; else None)); `forced` [B, T, k]: replayed expert ids (`moe.route`)."""
  dt = jnp.dtype(cfg.dtype)
  c = lambda w: w.astype(dt)
  hn = rms_norm(x, layer["attn_norm"], cfg.rms_norm_eps)
  if cfg.is_mla:
    attn, new_kv = mla_attention(hn, layer, cfg, positions, bias, cache_kv, index, c)
  else:
    attn, new_kv = _gqa(hn, layer, cfg, positions, inv_freq, bias, cache_kv, index, c)
  x = constrain(x + attn, ("batch", "length", "embed"))
  hn = rms_norm(x, layer["mlp_norm"], cfg.rms_norm_eps)
  stats = None
  if "router" in layer:
    b, t, d = hn.shape
    forced = None if forced is None else forced.reshape(b * t, -1)
    y, probs, experts = moe_mlp(hn.reshape(b * t, d), layer, cfg, c, forced=forced)
    x = x + y.reshape(b, t, d)
    if "shared_gate" in layer:
      x = x + swiglu(hn, layer, c, "shared_")
    stats = dict(router_stats(probs, experts, mask, cfg), experts=experts.reshape(b, t, -1))
  else:
    x = x + swiglu(hn, layer, c)
  return constrain(x, ("batch", "length", "embed")), new_kv, stats


def unembed_matrix(params: Params, cfg: ModelConfig) -> jax.Array:
  """[D, V] output projection (the transposed embedding when tied)."""
  return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array,
            mask: jax.Array | None = None, cache: KVCache | None = None, *,
            return_hidden: bool = False, segment_ids: jax.Array | None = None,
            return_router_stats: bool = False, experts: jax.Array | None = None,
            return_experts: bool = False) -> tuple:
  """Run the transformer.

  tokens, positions, mask: [B, T] (mask False marks padding, which no query attends to).
  Without a cache attention is causal over the T tokens; with `segment_ids` [B, T] (packed
  rows) a token attends only to earlier tokens of its own segment (positions should then
  restart at 0 in each segment). With a cache the tokens are
  written at slots [index, index+T) and attend to every valid earlier slot.
  Returns (logits [B, T, V] float32, or final-normed hidden [B, T, D] if
  `return_hidden`), and the updated cache (None without one); with `return_router_stats`
  a third item, `router_summary`'s dict (aux loss and per-expert load over real tokens).

  Router replay: `experts` [B, L_moe, T, k] (L_moe = `cfg.moe_layers`) forces each MoE
  layer's choice (`moe.route`; a token with a -1 id routes itself); `return_experts` adds a
  last item, the experts each MoE layer chose, [B, L_moe, T, k] in `EXPERT_DTYPE` (-1 at
  padding, mask False).
  """
  b, t = tokens.shape
  mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
  dt = jnp.dtype(cfg.dtype)
  # Gather from a table whole along `embed` (FSDP all-gathers it here, as it does every
  # weight): a gather from an fsdp-sharded embed dim would come out sharded the wrong way
  # for the fsdp-sharded batch, and XLA reshards that by full rematerialisation.
  table = constrain(params["embed"], ("vocab", None))
  x = jnp.take(table, tokens, axis=0).astype(dt)
  x = constrain(x, ("batch", "length", "embed"))
  inv_freq = rope_inv_freq(cfg)
  if cache is None:
    index, km = None, KeyMask(mask, segment_ids)
  else:
    if segment_ids is not None:
      raise ValueError("segment_ids (packed rows) are not supported with a KV cache")
    index = cache.index
    slot_mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, mask, index, axis=1)
    km = KeyMask(slot_mask, None, index)
  # In blocks, attention builds each block's mask itself (MLA's cached path takes a bias).
  blocks = 0 < cfg.attention_chunk < t and not (cfg.is_mla and cache is not None)
  bias = km if blocks else block_bias(km, segment_ids, 0, t)
  block = _block
  if cfg.remat:
    from r1jax.memory import remat_policy
    block = jax.checkpoint(_block, static_argnums=(2,), policy=remat_policy(cfg.remat))
  new_k, new_v, stats = [], [], []
  for i in range(cfg.num_layers):
    layer = params["layers"][i]
    kv = (cache.k[i], cache.v[i]) if cache is not None else None
    forced = None if experts is None or "router" not in layer else experts[:, len(stats)]
    x, kv, st = block(x, layer, cfg, positions, inv_freq, bias, kv, index, mask, forced)
    if st is not None:
      stats.append(st)
    if kv is not None:
      new_k.append(kv[0])
      new_v.append(kv[1])
  x = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
  new_cache = None
  if cache is not None:
    new_cache = KVCache(tuple(new_k), tuple(new_v), slot_mask, index + t)
  extra = (router_summary(stats, cfg),) if return_router_stats else ()
  if return_experts:
    chosen = (jnp.stack([st["experts"] for st in stats], axis=1) if stats else
              jnp.zeros((b, 0, t, max(cfg.num_experts_per_tok, 1)), jnp.int32))
    extra += (jnp.where(mask[:, None, :, None], chosen, -1).astype(EXPERT_DTYPE),)
  if return_hidden:
    return (x, new_cache) + extra
  logits = jnp.einsum("btd,dv->btv", x, unembed_matrix(params, cfg).astype(dt),
                      preferred_element_type=jnp.float32)
  return (constrain(logits, ("batch", "length", "vocab")), new_cache) + extra


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Positions for left-padded rows: 0 at each row's first real token."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
