"""Advantage estimators as pure functions (`rl.algorithm`).

Outcome estimators (`ESTIMATORS`, one table: its keys are the outcome algorithms) give one
advantage per completion, rows prompt-major in groups of G:
  grpo          (r_i - mean_group) / (std_group + eps)          (GRPO, MISSION 1.1)
  rloo          r_i - mean_{j != i} r_j  = G / (G - 1) * (r_i - mean_group)
  reinforce_pp  r_i - mean_group, then whitened over the whole batch (REINFORCE++ baseline)
PPO's token-level estimator is `gae()`: per-token advantages from per-token rewards and a
critic's values, a reverse `lax.scan` over the completion (r1jax/ppo.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ADVANTAGE_NORMS = ("std", "batch_std", "none")


def _groups(rewards) -> tuple[jax.Array, jax.Array]:
  r = jnp.asarray(rewards, jnp.float32)
  return r, r.max(axis=1, keepdims=True) > r.min(axis=1, keepdims=True)


def rloo_advantages(rewards: jax.Array | np.ndarray, group_size: int) -> jax.Array:
  """[B*G] -> [B*G]: each reward minus the mean of the other G - 1 rewards of its group."""
  if group_size < 2:
    raise ValueError(f"rloo needs groups of >= 2 samples, got group_size={group_size}")
  r, varied = _groups(jnp.asarray(rewards, jnp.float32).reshape(-1, group_size))
  loo = (r.sum(axis=1, keepdims=True) - r) / (group_size - 1)
  return jnp.where(varied, r - loo, 0.0).reshape(-1)


def whiten(x: jax.Array, mask: jax.Array | None = None, eps: float = 1e-8,
           shift_mean: bool = True) -> jax.Array:
  """(x - mean) / std over the valid entries (population std); masked entries come out 0."""
  x = jnp.asarray(x, jnp.float32)
  m = jnp.ones_like(x) if mask is None else jnp.asarray(mask, jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  mean = (x * m).sum() / n
  var = (jnp.square(x - mean) * m).sum() / n
  out = (x - mean) if shift_mean else x
  return out * jax.lax.rsqrt(var + eps) * m


def reinforce_pp_advantages(rewards: jax.Array | np.ndarray, group_size: int,
                            eps: float = 1e-8) -> jax.Array:
  """REINFORCE++ with a group baseline: r_i - mean_group, then whitened over the batch."""
  r, varied = _groups(jnp.asarray(rewards, jnp.float32).reshape(-1, group_size))
  centred = jnp.where(varied, r - r.mean(axis=1, keepdims=True), 0.0).reshape(-1)
  return whiten(centred, eps=eps)


def group_advantages(rewards: jax.Array | np.ndarray, group_size: int, norm: str = "std",
                     eps: float = 1e-6, ddof: int = 1) -> jax.Array:
  """rewards [B*G] (prompt-major) -> advantages [B*G]: centred within each group, divided by
  the group's std ("std"), the whole batch's reward std ("batch_std", TRL's
  scale_rewards="batch": a group of near-equal scores, as a reward model gives, stays near 0
  instead of being blown up to +-1), or nothing ("none", Dr. GRPO)."""
  r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
  # A group whose rewards are all equal carries no signal: its advantage is exactly 0.
  # (Tested on the rewards themselves: float error in the mean would otherwise leave
  # ~1e-7 residues that the std division blows up to O(0.1) advantages.)
  varied = (r.max(axis=1, keepdims=True) > r.min(axis=1, keepdims=True))
  centred = jnp.where(varied, r - r.mean(axis=1, keepdims=True), 0.0)
  if norm == "std":
    std = jnp.std(r, axis=1, ddof=ddof, keepdims=True) if group_size > ddof else jnp.ones_like(r)
    centred = jnp.where(varied, centred / (std + eps), 0.0)
  elif norm == "batch_std":
    std = jnp.std(r, ddof=ddof) if r.size > ddof else jnp.ones(())
    centred = centred / (std + eps)
  elif norm != "none":
    raise ValueError(f"advantage_norm={norm!r}; choose from {ADVANTAGE_NORMS}")
  return centred.reshape(-1)


# name -> fn(rewards [B*G], group_size, **knobs) -> advantages [B*G]. ESTIMATOR_KNOBS: the
# `rl` knobs each one reads, as its keyword arguments (another estimator's knob set in the
# config is an error: r1jax.rl.ignored_knobs).
ESTIMATORS = {"grpo": group_advantages, "rloo": rloo_advantages,
              "reinforce_pp": reinforce_pp_advantages}
ESTIMATOR_KNOBS = {"grpo": {"advantage_norm": "norm", "advantage_eps": "eps", "std_ddof": "ddof"},
                   "rloo": {}, "reinforce_pp": {}}


def outcome_advantages(rewards, group_size: int, estimator: str = "grpo", **knobs) -> jax.Array:
  """Per-completion advantages [B*G] of outcome estimator `estimator` (its knobs by keyword)."""
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator={estimator!r} is not an outcome estimator; choose from "
                     f"{tuple(ESTIMATORS)} (ppo's GAE needs a critic: r1jax.ppo)")
  return ESTIMATORS[estimator](rewards, group_size, **knobs)


def next_valid(mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
  """[B, N] float: token t + 1 is valid (and, on packed rows, of the same segment as t)."""
  m = jnp.asarray(mask, jnp.float32)
  nm = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
  if segment_ids is not None:
    same = jnp.concatenate([segment_ids[:, 1:] == segment_ids[:, :-1],
                            jnp.zeros_like(segment_ids[:, :1], bool)], axis=1)
    nm = nm * same
  return nm


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = 1.0,
        lam: float = 1.0, segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation over completions: (advantages, returns), both [B, N].

  rewards[b, t]: reward after token t; values[b, t]: V(state before token t). The episode
  ends after the last valid token of each row (of each segment, on packed rows with
  `segment_ids`): V there bootstraps from 0, and padding (mask 0) contributes nothing.
  Computed by a reverse `lax.scan`:
    delta_t = r_t + gamma * V_{t+1} * valid_{t+1} - V_t
    A_t     = delta_t + gamma * lam * valid_{t+1} * A_{t+1}
  """
  m = jnp.asarray(mask, jnp.float32)
  r = jnp.asarray(rewards, jnp.float32) * m
  v = jnp.asarray(values, jnp.float32) * m
  next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
  next_m = next_valid(m, segment_ids)
  delta = (r + gamma * next_v * next_m - v) * m

  def step(carry, xs):
    d, nm = xs
    a = d + gamma * lam * nm * carry
    return a, a

  _, adv = jax.lax.scan(step, jnp.zeros(r.shape[0], jnp.float32), (delta.T, next_m.T),
                        reverse=True)
  adv = adv.T * m
  return adv, (adv + v) * m


def token_rewards(scores: jax.Array, mask: jax.Array, kl: jax.Array | None = None,
                  beta: float = 0.0, segment_ids: jax.Array | None = None) -> jax.Array:
  """Per-token rewards [B, N]: the outcome score at each row's last valid token, minus
  beta * kl at every valid token (PPO's KL-in-reward, k1 per token). On packed rows
  (`segment_ids`) `scores` is per token [R, L] (each token's sequence's score) and the score
  goes to each segment's last valid token."""
  m = jnp.asarray(mask, jnp.float32)
  if segment_ids is not None:
    r = jnp.asarray(scores, jnp.float32) * m * (1.0 - next_valid(m, segment_ids))
  else:
    n = m.shape[1]
    last = jnp.maximum(m.sum(axis=1).astype(jnp.int32) - 1, 0)
    at_last = (jnp.arange(n)[None, :] == last[:, None]) & (m.sum(axis=1, keepdims=True) > 0)
    r = jnp.where(at_last, jnp.asarray(scores, jnp.float32)[:, None], 0.0)
  if kl is not None and beta:
    r = r - beta * kl * m
  return r * m
