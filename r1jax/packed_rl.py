"""The RL step on packed rows (`train.packing=True`; rows from `r1jax.packing.pack_batch`).

The same objective as the padded step (`rl.grpo_loss`), computed without padding: one
forward over packed rows [R, L] whose segments attend only to themselves, log-probs of each
position's target, and the loss as -sum(objective * weights) with the aggregation folded
into the per-token weights, so every micro-batch's share is exact and the micro-batches
simply add up (`loss`). Sequence-level quantities (GSPO's ratio, sequence TIS) are segment
sums (`policy_loss.seq_sum`); PPO's GAE stops at every segment's end (`advantages.gae`).

Each sample's prompt runs once per sample here (the padded step shares it within a group):
the same values and gradients, more prompt FLOPs, no padding. A mixture-of-experts policy's
load-balancing loss therefore counts every prompt token once per sample.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from r1jax import rl
from r1jax.mesh import kernel_axes
from r1jax.model import ModelConfig, forward, unembed_matrix
from r1jax.packing import PackedBatch


class CriticBatch(NamedTuple):
  """PPO's critic batch on packed rows (`ppo.CriticBatch`'s counterpart)."""
  tokens: jax.Array  # [R, L]
  positions: jax.Array
  segment_ids: jax.Array
  loss_mask: jax.Array
  returns: jax.Array
  old_values: jax.Array


def hidden(params: Any, model_cfg: ModelConfig, batch: Any, router_stats: bool = False,
           experts: jax.Array | None = None):
  """Final hidden states [R, L, D] of packed rows (and the MoE routing summary); `experts`
  [R, L_moe, L, k] replays a sampler's routing (`PackedBatch.experts`)."""
  seg = batch.segment_ids
  out = forward(params, model_cfg, batch.tokens, batch.positions, seg > 0,
                return_hidden=True, segment_ids=seg, return_router_stats=router_stats,
                experts=experts)
  return (out[0], out[2]) if router_stats else out[0]


def logprobs(params: Any, model_cfg: ModelConfig, batch: PackedBatch, temperature: float = 1.0,
             impl: str = "auto", return_entropy: bool = False, router_stats: bool = False):
  """log p(target) at every position [R, L] (and entropy, and the routing summary)."""
  from r1jax.kernels import token_logprobs
  h = hidden(params, model_cfg, batch, router_stats, batch.experts)
  h, stats = h if router_stats else (h, None)
  r, n, d = h.shape
  out = token_logprobs(h.reshape(r * n, d), unembed_matrix(params, model_cfg).astype(h.dtype),
                       batch.targets.reshape(-1), temperature, return_entropy=return_entropy,
                       impl=impl, **kernel_axes())
  out = tuple(x.reshape(r, n) for x in out) if return_entropy else (out.reshape(r, n),)
  out += (stats,) if router_stats else ()
  return out if len(out) > 1 else out[0]


def batch_logprobs(params: Any, batch: PackedBatch, model_cfg: ModelConfig,
                   temperature: float = 1.0, impl: str = "auto") -> jax.Array:
  """No-grad log-probs of packed rows (pi_old, the reference); 0 off the loss mask."""
  lp = logprobs(params, model_cfg, batch, temperature, impl)
  return jax.lax.stop_gradient(jnp.where(batch.loss_mask > 0, lp, 0.0))


def loss(params: Any, batch: PackedBatch, cfg: rl.RLConfig, model_cfg: ModelConfig,
         n_micro: int = 1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`rl.grpo_loss` on packed rows. `batch.weights` sum to the whole batch's loss, so a
  micro-batch's share is scaled by `n_micro` (`steps.make_train_step` averages them)."""
  logp, *rest = logprobs(params, model_cfg, batch, cfg.temperature, cfg.logprob_impl,
                         return_entropy=True, router_stats=bool(model_cfg.num_experts))
  # Off-mask positions hold the log-prob of a prompt or padding token: keep them out of
  # exp() in the ratios (0 * inf would be NaN).
  logp = jnp.where(batch.loss_mask > 0, logp, 0.0)
  return rl.loss_from_logprobs((logp, *rest), batch.old_logp, batch.ref_logp,
                                 batch.advantages, batch.loss_mask, batch.sampler_logp, cfg,
                                 model_cfg, batch.segment_ids, batch.weights * n_micro)


def values(critic: dict, model_cfg: ModelConfig, batch: Any) -> jax.Array:
  """PPO's V(state before each position's target) on packed rows: [R, L] float32."""
  h = hidden(critic["model"], model_cfg, batch)
  return h.astype(jnp.float32) @ critic["head"]["w"] + critic["head"]["b"]
