"""Decoder-only transformer (Llama 3.x / Qwen2 / SmolLM2 / Qwen3 / Qwen3-MoE) in Flax NNX, used
as pure functions.

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
              (expert, embed, mlp), experts_down [E, Fe, D] (expert, mlp, embed)
  final_norm  [D]
  lm_head     [D, V]            (untied only)
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.mesh import constrain
from r1jax.model.config import ModelConfig

Params = dict[str, Any]


class KVCache(NamedTuple):
  """One K and one V buffer per layer, [B, S, Hkv, Dh], plus slot bookkeeping.

  `mask[b, s]` says slot s holds a real token of row b (prompt padding stays False);
  `index` is the next slot to write (shared by all rows: prompts are left-padded).
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  mask: jax.Array
  index: jax.Array


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (batch, max_len, cfg.num_kv_heads, cfg.hd)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
  return KVCache(zeros, tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
                 jnp.zeros((batch, max_len), bool), jnp.zeros((), jnp.int32))


def _param(rngs: nnx.Rngs, shape, axes, cfg: ModelConfig, fan_in: int | None = None,
           value: float | None = None) -> nnx.Param:
  dtype = jnp.dtype(cfg.param_dtype)
  if value is not None:
    x = jnp.full(shape, value, dtype)
  else:
    std = 1.0 / math.sqrt(fan_in) if fan_in else 0.02
    x = (std * jax.random.truncated_normal(rngs.params(), -2, 2, shape)).astype(dtype)
  return nnx.Param(x, logical_axes=axes)


class Block(nnx.Module):
  """Pre-norm attention + SwiGLU MLP (or a mixture of SwiGLU experts when `moe`)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, moe: bool = False):
    d, h, kv, hd, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.hd, cfg.intermediate_size
    self.attn_norm = _param(rngs, (d,), ("norm",), cfg, value=1.0)
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
    self.mlp_norm = _param(rngs, (d,), ("norm",), cfg, value=1.0)
    if moe:
      e, fe = cfg.num_experts, cfg.moe_intermediate_size
      self.router = _param(rngs, (d, e), ("embed", "expert"), cfg, d)
      self.experts_gate = _param(rngs, (e, d, fe), ("expert", "embed", "mlp"), cfg, d)
      self.experts_up = _param(rngs, (e, d, fe), ("expert", "embed", "mlp"), cfg, d)
      self.experts_down = _param(rngs, (e, fe, d), ("expert", "mlp", "embed"), cfg, fe)
    else:
      self.gate = _param(rngs, (d, f), ("embed", "mlp"), cfg, d)
      self.up = _param(rngs, (d, f), ("embed", "mlp"), cfg, d)
      self.down = _param(rngs, (f, d), ("mlp", "embed"), cfg, f)


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


# ----------------------------------------------------------------------------- functions


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  xf = x.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  hd = cfg.hd
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  rs = cfg.rope_scaling_dict
  if rs and rs.get("rope_type", rs.get("type")) == "llama3":
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - lo) / (hi - lo)
    scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
    mid = (1 - smooth) * inv / factor + smooth * inv
    is_mid = (wavelen <= old / lo) & (wavelen >= old / hi)
    inv = jnp.where(is_mid, mid, scaled)
  elif rs and rs.get("rope_type", rs.get("type")) not in (None, "default"):
    raise NotImplementedError(f"rope_scaling type {rs!r} is not supported")
  return inv


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """HF (non-interleaved, rotate-half) RoPE. x: [B, T, H, Dh], positions: [B, T]."""
  ang = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, Dh/2]
  cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[:, :, None, :]
  sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rot = jnp.concatenate([-x2, x1], axis=-1)
  return (xf * cos + rot * sin).astype(x.dtype)


# Additive mask: 0 where a query may attend, this where it may not. Finite, so a query with
# no visible key (a left-padding slot) gets a uniform softmax, never a NaN.
MASKED = -1e30


def _attention(q, k, v, bias, dtype):
  """q [B,T,H,Dh], k/v [B,S,Hkv,Dh], bias [B,T,S] (0 or MASKED) -> [B,T,H,Dh].

  The dots run on explicitly transposed operands, [B, Hkv, T*G, Dh] x [B, Hkv, S, Dh] (G
  query heads per kv head), so both are plain batched matmuls, and the mask is one add:
  as one einsum over the natural layouts with a select, XLA:CPU ran the forward 2.8x and
  the forward+backward 1.4x slower (SmolLM2-135M's heads, 32 rows of 127 queries).
  """
  b, t, h, hd = q.shape
  s, kvh = k.shape[1], k.shape[2]
  g = h // kvh
  q = (q * jnp.asarray(1 / math.sqrt(hd), q.dtype)).reshape(b, t, kvh, g, hd)
  q = q.transpose(0, 2, 1, 3, 4).reshape(b, kvh, t * g, hd)
  scores = jnp.einsum("bkmd,bksd->bkms", q, k.transpose(0, 2, 1, 3),
                      preferred_element_type=jnp.float32)
  scores = scores.reshape(b, kvh, t, g, s) + bias[:, None, :, None, :]
  p = jax.nn.softmax(scores, axis=-1).astype(dtype).reshape(b, kvh, t * g, s)
  out = jnp.einsum("bkms,bksd->bkmd", p, v.transpose(0, 2, 1, 3))
  return out.reshape(b, kvh, t, g, hd).transpose(0, 2, 1, 3, 4).reshape(b, t, h, hd)


def _dense(x: jax.Array, layer: Params, name: str, cast) -> jax.Array:
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


def route(x: jax.Array, router: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, ...]:
  """Softmax top-k routing of tokens x [N, D]: (probs [N, E] float32, top-k weights [N, k]
  float32, expert ids [N, k]); the weights are renormalised when `norm_topk_prob`."""
  logits = jnp.einsum("nd,de->ne", x, router.astype(x.dtype), preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  weights, experts = jax.lax.top_k(probs, cfg.num_experts_per_tok)
  if cfg.norm_topk_prob:
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  return probs, weights, experts


MOE_IMPLS = ("ragged", "blocks")


def _block_layout(sizes: jax.Array, n_pairs: int, block: int):
  """Where each expert's group goes when every group is padded to whole blocks of `block`
  rows: (padded start of each group [E], the expert of each block [n_blocks], n_blocks)."""
  e = sizes.shape[0]
  padded = (sizes + block - 1) // block * block
  ends = jnp.cumsum(padded)
  n_blocks = -(-(n_pairs + e * (block - 1)) // block)  # static bound on the padded total
  owner = jnp.searchsorted(ends, jnp.arange(n_blocks) * block, side="right")
  return ends - padded, jnp.minimum(owner, e - 1), n_blocks


def moe_mlp(x: jax.Array, layer: Params, cfg: ModelConfig, cast,
            impl: str | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixture of SwiGLU experts on tokens x [N, D] -> (y [N, D], probs [N, E], experts [N, k]).

  No token is dropped, whatever the load balance: the N*k (token, expert) pairs are sorted
  by expert, each expert multiplies its contiguous group, and the outputs are unsorted and
  summed with the router weights. The grouped matmul is `impl`:
    ragged  `lax.ragged_dot` (TPU and GPU lower it to a grouped matmul; XLA:CPU's lowering
            masks every pair against every expert, E times the work)
    blocks  each group padded to whole row blocks, one batched matmul over the blocks with
            each block's expert weights gathered (at most E-1 partial blocks of extra rows)
  None picks blocks on CPU (4x faster than ragged at 8 experts), ragged elsewhere.
  """
  impl = impl or ("blocks" if jax.default_backend() == "cpu" else "ragged")
  if impl not in MOE_IMPLS:
    raise ValueError(f"moe impl={impl!r}; choose from {MOE_IMPLS}")
  n, k, e = x.shape[0], cfg.num_experts_per_tok, cfg.num_experts
  probs, weights, experts = route(x, layer["router"], cfg)
  flat = experts.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  sizes = jnp.bincount(flat, length=e).astype(jnp.int32)
  xs = jnp.take(x, order // k, axis=0)
  if impl == "ragged":
    mm = lambda a, w: jax.lax.ragged_dot(a, cast(w), sizes, preferred_element_type=jnp.float32
                                         ).astype(x.dtype)
    h = jax.nn.silu(mm(xs, layer["experts_gate"])) * mm(xs, layer["experts_up"])
    ys = mm(h, layer["experts_down"])
  else:
    # About one block per expert at an even load, between 8 and 128 rows.
    block = min(128, max(8, 1 << max(0, math.ceil(math.log2(max(1, n * k // e))))))
    pstart, owner, nb = _block_layout(sizes, n * k, block)
    e_sorted = jnp.take(flat, order)
    dest = pstart[e_sorted] + jnp.arange(n * k) - (jnp.cumsum(sizes) - sizes)[e_sorted]
    xp = jnp.zeros((nb * block, x.shape[1]), x.dtype).at[dest].set(xs, unique_indices=True)

    def mm(a, w):
      out = jnp.einsum("jbd,jdf->jbf", a.reshape(nb, block, -1),
                       jnp.take(cast(w), owner, axis=0), preferred_element_type=jnp.float32)
      return out.astype(x.dtype).reshape(nb * block, -1)

    h = jax.nn.silu(mm(xp, layer["experts_gate"])) * mm(xp, layer["experts_up"])
    ys = jnp.take(mm(h, layer["experts_down"]), dest, axis=0)
  y = jnp.zeros_like(ys).at[order].set(ys, unique_indices=True).reshape(n, k, -1)
  y = jnp.einsum("nkd,nk->nd", y, weights.astype(x.dtype))
  return y, probs, experts


def _router_stats(probs, experts, mask, cfg: ModelConfig) -> dict:
  """Per-layer sums the load-balancing loss and load metrics are built from (real tokens)."""
  m = mask.reshape(-1).astype(jnp.float32)
  counts = jnp.einsum("nke,n->e", jax.nn.one_hot(experts, cfg.num_experts, dtype=jnp.float32), m)
  return {"counts": counts, "prob_sum": jnp.einsum("ne,n->e", probs, m), "tokens": jnp.sum(m)}


def _block(x, layer, cfg: ModelConfig, positions, inv_freq, bias, cache_kv, index, mask):
  dt = jnp.dtype(cfg.dtype)
  c = lambda w: w.astype(dt)
  hn = rms_norm(x, layer["attn_norm"], cfg.rms_norm_eps)
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
  attn = _attention(q, k.astype(dt), v.astype(dt), bias, dt)
  x = x + _dense(attn, layer, "o", c)
  x = constrain(x, ("batch", "length", "embed"))
  hn = rms_norm(x, layer["mlp_norm"], cfg.rms_norm_eps)
  stats = None
  if "router" in layer:
    b, t, d = hn.shape
    y, probs, experts = moe_mlp(hn.reshape(b * t, d), layer, cfg, c)
    x = x + y.reshape(b, t, d)
    stats = _router_stats(probs, experts, mask, cfg)
  else:
    g = _dense(hn, layer, "gate", c)
    u = _dense(hn, layer, "up", c)
    mlp = constrain(jax.nn.silu(g) * u, ("batch", "length", "mlp"))
    x = x + _dense(mlp, layer, "down", c)
  return constrain(x, ("batch", "length", "embed")), new_kv, stats


def unembed_matrix(params: Params, cfg: ModelConfig) -> jax.Array:
  """[D, V] output projection (the transposed embedding when tied)."""
  return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


def router_summary(stats: list[dict] | dict, cfg: ModelConfig) -> dict[str, jax.Array]:
  """Router sums -> {"aux_loss": scalar, "expert_load": [L_moe, E], and the sums}.

  `stats` is the MoE layers' per-layer sums, or an earlier summary (whose sums, added
  leaf-wise to another forward's, `merge_router_stats` re-summarises).
  aux_loss is the Switch-Transformer load-balancing loss as HF Qwen3-MoE computes it:
  E * sum_e f_e * P_e, f_e the fraction of (real token, top-k slot) pairs sent to expert e
  and P_e its mean router probability, both pooled over the MoE layers; unscaled (a trainer
  adds a coefficient, e.g. `cfg.router_aux_loss_coef`, times it). expert_load[l, e] is the
  fraction of layer l's routed pairs expert e got (1/E each when balanced). A dense model
  gives 0 and [0, 0].
  """
  if isinstance(stats, dict):
    counts, prob_sum, tokens = stats["counts"], stats["prob_sum"], stats["tokens"]
  elif stats:
    counts, prob_sum, tokens = (jnp.stack([s[k] for s in stats])
                                for k in ("counts", "prob_sum", "tokens"))
  else:
    e = cfg.num_experts
    counts, prob_sum, tokens = jnp.zeros((0, e)), jnp.zeros((0, e)), jnp.zeros((0,))
  total = jnp.maximum(jnp.sum(tokens), 1.0)
  f = jnp.sum(counts, axis=0) / total
  p = jnp.sum(prob_sum, axis=0) / total
  k = max(cfg.num_experts_per_tok, 1)
  return {"aux_loss": cfg.num_experts * jnp.sum(f * p),
          "expert_load": counts / (jnp.maximum(tokens, 1.0)[:, None] * k),
          "counts": counts, "prob_sum": prob_sum, "tokens": tokens}


def merge_router_stats(a: dict, b: dict, cfg: ModelConfig) -> dict[str, jax.Array]:
  """The summary of two forwards' routing (e.g. a prompt and its continuation via a cache)."""
  return router_summary({k: a[k] + b[k] for k in ("counts", "prob_sum", "tokens")}, cfg)


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array,
            mask: jax.Array | None = None, cache: KVCache | None = None, *,
            return_hidden: bool = False, segment_ids: jax.Array | None = None,
            return_router_stats: bool = False) -> tuple:
  """Run the transformer.

  tokens, positions, mask: [B, T] (mask False marks padding, which no query attends to).
  Without a cache attention is causal over the T tokens; with `segment_ids` [B, T] (packed
  rows) a token attends only to earlier tokens of its own segment (positions should then
  restart at 0 in each segment). With a cache the tokens are
  written at slots [index, index+T) and attend to every valid earlier slot.
  Returns (logits [B, T, V] float32, or final-normed hidden [B, T, D] if
  `return_hidden`), and the updated cache (None without one); with `return_router_stats`
  a third item, `router_summary`'s dict (aux loss and per-expert load over real tokens).
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
    causal = jnp.tril(jnp.ones((t, t), bool))
    allowed = causal[None] & mask[:, None, :]
    if segment_ids is not None:
      allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
    index = None
  else:
    if segment_ids is not None:
      raise ValueError("segment_ids (packed rows) are not supported with a KV cache")
    index = cache.index
    s = cache.mask.shape[1]
    slot_mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, mask, index, axis=1)
    q_slot = index + jnp.arange(t)
    allowed = (jnp.arange(s)[None, :] <= q_slot[:, None])[None] & slot_mask[:, None, :]
  bias = jnp.where(allowed, 0.0, MASKED).astype(jnp.float32)
  block = _block
  if cfg.remat:
    from r1jax.memory import remat_policy
    block = jax.checkpoint(_block, static_argnums=(2,), policy=remat_policy(cfg.remat))
  new_k, new_v, stats = [], [], []
  for i in range(cfg.num_layers):
    layer = params["layers"][i]
    kv = (cache.k[i], cache.v[i]) if cache is not None else None
    x, kv, st = block(x, layer, cfg, positions, inv_freq, bias, kv, index, mask)
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
  if return_hidden:
    return (x, new_cache) + extra
  logits = jnp.einsum("btd,dv->btv", x, unembed_matrix(params, cfg).astype(dt),
                      preferred_element_type=jnp.float32)
  return (constrain(logits, ("batch", "length", "vocab")), new_cache) + extra


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Positions for left-padded rows: 0 at each row's first real token."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
