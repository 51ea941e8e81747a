"""Policy-gradient surrogates (`rl.policy_loss`: the table `POLICY_LOSSES`) and rollout-
correction weights, per token.

Each surrogate returns the per-token objective J[b, t] (to maximise, before aggregation) from
log-probs [B, N] under the trained policy (`logp`) and pi_old (`old_logp`), and advantages
[B, N] (per-sequence advantages broadcast over tokens). r = exp(logp - old_logp).
  ppo_clip    min(r A, clip(r, 1 - eps, 1 + eps_high) A)                          (PPO / GRPO)
  dual_clip   ppo_clip, and where A < 0 at least c * A (c > 1): a huge ratio on a bad token
              cannot make the loss unbounded (Ye et al. 2020; verl's clip_ratio_c)
  gspo        s_i = exp(mean_t log r_it) per sequence; min(s_i A_i, clip(s_i) A_i) for every
              token of sequence i (GSPO, Zheng et al. 2025; use its small clip range,
              e.g. epsilon=3e-4, epsilon_high=4e-4). Needs per-sequence advantages and the
              per-sequence mean aggregation (the sequence is the unit).
  gspo_token  s_it = sg(s_i) * p_it / sg(p_it): the value of gspo, a per-token gradient, so
              per-token advantages and any aggregation are allowed
  cispo       sg(clip(r, 1 - eps, 1 + eps_high)) * A * log p: the clipped importance weight
              is a constant, so every token keeps a gradient (MiniMax-M1, 2025)

Truncated importance sampling (`rl.tis`): the sampler (e.g. a bf16 decode) is not exactly
pi_old, so the surrogate is multiplied by w = min(pi_old / pi_sampler, C) (stop-gradient),
per token ("token") or per sequence ("sequence": the product of the token ratios).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TIS_MODES = ("none", "token", "sequence")

sg = jax.lax.stop_gradient


def _masked_mean(x: jax.Array, maskf: jax.Array) -> jax.Array:
  return (x * maskf).sum() / jnp.maximum(maskf.sum(), 1.0)


def seq_sum(x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
  """Per-sequence sums of per-token values: each row's [B, 1]; with `segment_ids` (packed
  rows [R, L], ids per row, r1jax.packing) each token's segment total [R, L]."""
  if segment_ids is None:
    return x.sum(-1, keepdims=True)
  r, n = x.shape
  key = (jnp.arange(r)[:, None] * (n + 1) + segment_ids).reshape(-1)
  tot = jax.ops.segment_sum(x.reshape(-1), key, num_segments=r * (n + 1))
  return tot[key].reshape(r, n)


def _seq_log_ratio_mean(logp, old_logp, maskf, segment_ids=None):
  return seq_sum((logp - old_logp) * maskf, segment_ids) / jnp.maximum(
      seq_sum(maskf, segment_ids), 1.0)


def _ppo_clip(ratio, logp, old_logp, adv, maskf, lo, hi, dual_clip_c, segment_ids):
  obj = jnp.minimum(ratio * adv, jnp.clip(ratio, lo, hi) * adv)
  clipped = ((ratio > hi) & (adv > 0)) | ((ratio < lo) & (adv < 0))
  return obj, clipped, {}


def _dual_clip(ratio, logp, old_logp, adv, maskf, lo, hi, dual_clip_c, segment_ids):
  obj, clipped, _ = _ppo_clip(ratio, logp, old_logp, adv, maskf, lo, hi, dual_clip_c,
                              segment_ids)
  floor = dual_clip_c * adv
  dual = (adv < 0) & (obj < floor)
  obj = jnp.where(adv < 0, jnp.maximum(obj, floor), obj)
  return obj, clipped | dual, {"dual_clip_frac": _masked_mean(dual, maskf)}


def _gspo(ratio, logp, old_logp, adv, maskf, lo, hi, dual_clip_c, segment_ids, token=False):
  log_s = _seq_log_ratio_mean(logp, old_logp, maskf, segment_ids)  # [B, 1] or [R, L]
  if token:
    s = jnp.exp(sg(log_s) + logp - sg(logp))
  else:
    s = jnp.broadcast_to(jnp.exp(log_s), logp.shape)
  obj = jnp.minimum(s * adv, jnp.clip(s, lo, hi) * adv)
  clipped = ((s > hi) & (adv > 0)) | ((s < lo) & (adv < 0))
  return obj, clipped, {"seq_ratio_mean": _masked_mean(
      jnp.broadcast_to(jnp.exp(log_s), logp.shape), maskf)}


def _gspo_token(*args):
  return _gspo(*args, token=True)


def _cispo(ratio, logp, old_logp, adv, maskf, lo, hi, dual_clip_c, segment_ids):
  w = sg(jnp.clip(ratio, lo, hi))
  # Value w * A (the clipped surrogate's value), gradient w * A * d log p.
  return w * adv * (1.0 + logp - sg(logp)), (ratio > hi) | (ratio < lo), {}


# rl.policy_loss -> fn(ratio, logp, old_logp, adv, maskf, lo, hi, dual_clip_c, segment_ids)
#   -> (per-token objective, clipped tokens, extra metrics)
POLICY_LOSSES = {"ppo_clip": _ppo_clip, "dual_clip": _dual_clip, "gspo": _gspo,
                 "gspo_token": _gspo_token, "cispo": _cispo}


def surrogate(kind: str, logp: jax.Array, old_logp: jax.Array, adv: jax.Array,
              mask: jax.Array, eps_low: float, eps_high: float, dual_clip_c: float = 3.0,
              segment_ids: jax.Array | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-token objective [B, N] of policy loss `kind` and its metrics (clip_frac, ...).
  With `segment_ids`, rows are packed and a sequence is a segment (gspo's ratio)."""
  if kind not in POLICY_LOSSES:
    raise ValueError(f"policy_loss={kind!r}; choose from {tuple(POLICY_LOSSES)}")
  maskf = mask.astype(jnp.float32)
  adv = jnp.broadcast_to(adv, logp.shape).astype(jnp.float32)
  ratio = jnp.exp(logp - old_logp)
  obj, clipped, metrics = POLICY_LOSSES[kind](ratio, logp, old_logp, adv, maskf, 1.0 - eps_low,
                                              1.0 + eps_high, dual_clip_c, segment_ids)
  metrics["clip_frac"] = _masked_mean(clipped, maskf)
  metrics["ratio_mean"] = _masked_mean(ratio, maskf)
  return obj, metrics


def tis_weights(old_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array, mode: str,
                cap: float, segment_ids: jax.Array | None = None) -> jax.Array:
  """Truncated importance weights [B, N] (or [B, 1] per sequence; per segment on packed
  rows, `segment_ids`), no gradient."""
  maskf = mask.astype(jnp.float32)
  log_w = (sg(old_logp) - sampler_logp) * maskf
  if mode == "token":
    return jnp.minimum(jnp.exp(log_w), cap)
  if mode == "sequence":
    return jnp.minimum(jnp.exp(seq_sum(log_w, segment_ids)), cap)
  raise ValueError(f"tis={mode!r}; choose from {TIS_MODES[1:]}")


def mismatch_metrics(trainer_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array
                     ) -> dict[str, jax.Array]:
  """The sampler/trainer log-prob gap on the sampled tokens: mean and max |diff|, and the k3
  estimate of KL(sampler || trainer) (the tokens were drawn by the sampler)."""
  maskf = mask.astype(jnp.float32)
  d = sg(trainer_logp) - sampler_logp
  return {"mismatch/abs_diff_mean": _masked_mean(jnp.abs(d), maskf),
          "mismatch/abs_diff_max": jnp.max(jnp.abs(d) * maskf),
          "mismatch/k3": _masked_mean(jnp.exp(d) - d - 1.0, maskf)}
