"""Mixture of SwiGLU experts: routing (softmax top-k as Qwen3-MoE, or sigmoid with a
load-balancing bias and group-limited choice as DeepSeek-V3), the dropless grouped matmul,
router statistics and the load-balancing loss, and the aux-loss-free bias update.

Router replay (RL, `rl.router_replay`): `route` can be given the expert ids a sampler
chose (`forced`) and then uses exactly those experts, with their weights recomputed from
this forward's router scores, so the policy gradient still reaches the router.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.model.config import ModelConfig

Params = dict[str, Any]


# How router logits become expert scores: Qwen3-MoE's softmax, DeepSeek-V3's sigmoid.
SCORING_FUNCS = {"softmax": lambda l: jax.nn.softmax(l, axis=-1), "sigmoid": jax.nn.sigmoid}


# Storage dtype of recorded expert ids (sampler output, train batch); -1 marks "not recorded".
EXPERT_DTYPE = jnp.int16


def route(x: jax.Array, router: jax.Array, cfg: ModelConfig, bias: jax.Array | None = None,
          forced: jax.Array | None = None) -> tuple[jax.Array, ...]:
  """Top-k routing of tokens x [N, D] -> (probs [N, E], top-k weights [N, k], expert ids
  [N, k]), all float32.

  Scores are `cfg.scoring_func` of the router logits. The experts are chosen by score +
  `bias` (DeepSeek-V3's e_score_correction_bias; it never enters the weights) among the
  `topk_group` best of `n_group` expert groups (a group ranked by the sum of its two best
  biased scores); the weights are the chosen experts' scores, renormalised when
  `norm_topk_prob`, times `routed_scaling_factor`. `probs` is the scores normalised to sum
  to 1 per token (the softmax itself), for the load-balancing statistics.

  `forced` [N, k] (router replay) replaces the choice: a token whose k ids are all >= 0 uses
  those experts (a row with a -1 is routed as usual). Their weights come from this call's
  scores by the same formula (for softmax + norm_topk_prob: the softmax restricted to the
  replayed set, as verl's R3), so the router still gets a gradient; only the set is replayed.
  """
  logits = jnp.einsum("nd,de->ne", x, router.astype(x.dtype), preferred_element_type=jnp.float32)
  scores = SCORING_FUNCS[cfg.scoring_func](logits)
  choice = scores if bias is None else scores + jax.lax.stop_gradient(bias.astype(jnp.float32))
  if cfg.n_group > 1:
    n, e = choice.shape
    grouped = choice.reshape(n, cfg.n_group, e // cfg.n_group)
    group_scores = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [N, n_group]
    keep = jax.lax.top_k(group_scores, cfg.topk_group)[1]
    keep = jnp.any(keep[:, :, None] == jnp.arange(cfg.n_group), axis=1)  # [N, n_group]
    choice = jnp.where(keep[:, :, None], grouped, -jnp.inf).reshape(n, e)
  _, experts = jax.lax.top_k(choice, cfg.num_experts_per_tok)
  if forced is not None:
    replay = jnp.all(forced >= 0, axis=-1, keepdims=True)
    experts = jnp.where(replay, forced.astype(experts.dtype), experts)
  weights = jnp.take_along_axis(scores, experts, axis=-1)
  if cfg.norm_topk_prob:
    weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
  weights = weights * cfg.routed_scaling_factor
  probs = scores if cfg.scoring_func == "softmax" else scores / jnp.sum(scores, -1, keepdims=True)
  return probs, weights, experts


def fit_experts(x, width: int, left: bool = False):
  """Host expert ids [R, L_moe, T, k] -> [R, L_moe, width, k]: cut or padded with -1 (no
  routing recorded) at the end, or at the start when `left` (left-padded prompts)."""
  x = np.asarray(x)
  t = x.shape[2]
  if t >= width:
    return x[:, :, t - width:] if left else x[:, :, :width]
  pad = (width - t, 0) if left else (0, width - t)
  return np.pad(x, ((0, 0), (0, 0), pad, (0, 0)), constant_values=-1)


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


def moe_mlp(x: jax.Array, layer: Params, cfg: ModelConfig, cast, impl: str | None = None,
            forced: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixture of SwiGLU experts on tokens x [N, D] -> (y [N, D], probs [N, E], experts [N, k]);
  `forced` [N, k]: replayed expert ids (see `route`).

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
  probs, weights, experts = route(x, layer["router"], cfg, layer.get("router_bias"), forced)
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


def router_stats(probs, experts, mask, cfg: ModelConfig) -> dict:
  """Per-layer sums the load-balancing loss and load metrics are built from (real tokens)."""
  m = mask.reshape(-1).astype(jnp.float32)
  counts = jnp.einsum("nke,n->e", jax.nn.one_hot(experts, cfg.num_experts, dtype=jnp.float32), m)
  return {"counts": counts, "prob_sum": jnp.einsum("ne,n->e", probs, m), "tokens": jnp.sum(m)}



def router_summary(stats: list[dict] | dict, cfg: ModelConfig) -> dict[str, jax.Array]:
  """Router sums -> {"aux_loss": scalar, "expert_load": [L_moe, E], and the sums}.

  `stats` is the MoE layers' per-layer sums, or an earlier summary (whose sums, added
  leaf-wise to another forward's, `merge_router_stats` re-summarises).
  aux_loss is the Switch-Transformer load-balancing loss as HF Qwen3-MoE computes it:
  E * sum_e f_e * P_e, f_e the fraction of (real token, top-k slot) pairs sent to expert e
  and P_e its mean router probability (sigmoid routing: the per-token normalised scores,
  as DeepSeek-V3's balance loss uses them), both pooled over the MoE layers; unscaled (a
  trainer adds a coefficient, e.g. `cfg.router_aux_loss_coef`, times it). expert_load[l, e] is the
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



def update_router_bias(params: Params, summary: dict, cfg: ModelConfig,
                       speed: float | None = None) -> Params:
  """DeepSeek-V3's auxiliary-loss-free balancing, one step: every MoE layer's `router_bias`
  moves by `speed` (default `cfg.router_bias_update_speed`) towards balance,
  bias_e += speed * sign(mean load - load_e), load from `summary["counts"]` (a
  `router_summary` of the step's batch, rows in `cfg.moe_layers` order). Returns new params
  (the other leaves shared); a model without router biases comes back unchanged."""
  speed = cfg.router_bias_update_speed if speed is None else speed
  layers = [params["layers"][i] for i in range(cfg.num_layers)]
  for row, i in enumerate(cfg.moe_layers):
    if "router_bias" not in layers[i]:
      continue
    counts = summary["counts"][row]
    step = speed * jnp.sign(jnp.mean(counts) - counts)
    bias = layers[i]["router_bias"]
    layers[i] = {**layers[i], "router_bias": (bias + step).astype(bias.dtype)}
  new = dict(enumerate(layers)) if isinstance(params["layers"], dict) else layers
  return {**params, "layers": new}


def has_router_bias(cfg: ModelConfig) -> bool:
  """Whether the model's MoE layers carry a `router_bias` (sigmoid routing, DeepSeek-V3)."""
  return bool(cfg.num_experts) and cfg.scoring_func == "sigmoid"


def decay_mask_for(cfg: ModelConfig) -> Callable[[Params], Any] | None:
  """`steps.make_optimizer`'s `decay_mask` for a model: `decay_mask` if it has router biases."""
  return decay_mask if has_router_bias(cfg) else None


def decay_mask(params: Params) -> Any:
  """`steps.make_optimizer`'s weight-decay mask: False on router biases. No gradient
  reaches a bias that only chooses experts, so AdamW's decay would be its only update and
  would pull a loaded (or balanced) bias towards 0."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(getattr(k, "key", None) == "router_bias" for k in path), params)


def balancing_update(cfg: ModelConfig) -> Callable[[Params, dict], tuple[Params, dict]] | None:
  """The train step's `post_update` for DeepSeek-V3's auxiliary-loss-free balancing (None
  when `cfg.router_bias_update_speed` is 0 or the model has no router bias): pops the
  loss's `router_counts` (the step's per-layer expert counts, micro-batches weighted as
  their losses), moves every bias by `update_router_bias`, and logs `router_bias_absmax`.
  A step that `nonfinite_skipped` (when already known) leaves the biases as they were."""
  if not (has_router_bias(cfg) and cfg.router_bias_update_speed > 0):
    return None

  def post(params: Params, metrics: dict) -> tuple[Params, dict]:
    metrics = dict(metrics)
    counts = metrics.pop("router_counts")
    speed = cfg.router_bias_update_speed
    if "nonfinite_skipped" in metrics:
      speed = speed * (1 - metrics["nonfinite_skipped"]).astype(jnp.float32)
    params = update_router_bias(params, {"counts": counts}, cfg, speed)
    biases = [params["layers"][i]["router_bias"] for i in cfg.moe_layers
              if "router_bias" in params["layers"][i]]
    metrics["router_bias_absmax"] = jnp.max(jnp.stack([jnp.abs(b).max() for b in biases]))
    return params, metrics
  return post
