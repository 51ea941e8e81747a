"""The RL family (`rl` config section): GRPO, RLOO, REINFORCE++ and PPO, one objective.

Pure functions on arrays (see MISSION.md 1.1):

  A     = advantages of the algorithm (`rl.algorithm`, r1jax/advantages.py ESTIMATORS; ppo:
          GAE from a critic, r1jax/ppo.py)
  rho   = exp(logp - old_logp)
  obj   = surrogate(rho, A) - beta * kl       (`rl.policy_loss`, r1jax/policy_loss.py)
  k3    = exp(ref_logp - logp) - (ref_logp - logp) - 1               (`rl.kl_estimator`)
  loss  = -aggregate(obj)

Aggregations (`loss_aggregation`):
  seq-mean-token-mean       1/G sum_i 1/|o_i| sum_t  (the paper's form, default)
  token-mean                sum_i,t / sum_i |o_i|    (DAPO)
  seq-mean-token-sum-norm   1/G sum_i sum_t / L_max  (Dr. GRPO)
Across several groups in one batch, the per-sequence mean runs over all sequences.

`from_config` reads the `rl` section: knobs left None take the algorithm's default, and a
knob that the chosen algorithm, loss or KL placement ignores is an error (`ignored_knobs`).

A mixture-of-experts policy adds `router_aux_coef` times the load-balancing loss of the
batch's routing (`transformer.router_summary`; None: the model's `router_aux_loss_coef`) and
logs `router_aux_loss` and the most / least loaded expert's share of the routed tokens.
With `router_replay` (verl's "router replay", R3) the batch carries the experts the sampler
routed each token to, and every forward of the step (pi_old, reference, the loss) uses them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import advantages as adv_lib
from r1jax import policy_loss as pl
from r1jax.cli import ConfigError, check_moved
from r1jax.mesh import kernel_axes
from r1jax.model import ModelConfig, forward, init_cache, positions_from_mask, unembed_matrix
from r1jax.model.transformer import merge_router_stats

# rl.algorithm: the outcome estimators' names, and ppo (GAE with a critic, r1jax/ppo.py).
ALGORITHMS = (*adv_lib.ESTIMATORS, "ppo")
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k3", "k1", "k2")
KL_IN = ("loss", "reward")  # where beta * KL goes; "reward" (k1 per token) needs ppo's critic


@dataclasses.dataclass(frozen=True)
class RLConfig:
  algorithm: str = "grpo"  # ALGORITHMS
  epsilon: float = 0.2  # clip low (and high unless epsilon_high is set)
  epsilon_high: float | None = None  # DAPO clip-higher
  beta: float = 0.04  # KL weight; 0 skips the reference model entirely
  kl_estimator: str = "k3"  # the loss's KL term (kl_in="loss")
  kl_in: str = "loss"  # KL_IN
  loss_aggregation: str = "seq-mean-token-mean"
  advantage_norm: str = "std"  # grpo only
  advantage_eps: float = 1e-6  # grpo only
  std_ddof: int = 1  # grpo only: unbiased std, as torch.std in TRL/verl; 0 for population std
  max_completion_len: int = 0  # L_max for seq-mean-token-sum-norm; 0 = padded length
  temperature: float = 1.0  # logits are divided by it, as in sampling
  logprob_impl: str = "auto"  # kernels.token_logprobs implementation
  policy_loss: str = "ppo_clip"  # policy_loss.POLICY_LOSSES
  dual_clip_c: float = 3.0  # dual_clip's bound on the loss of negative-advantage tokens
  tis: str = "none"  # truncated importance sampling vs the sampler: none | token | sequence
  tis_cap: float = 2.0  # C in min(pi_old / pi_sampler, C)
  # MoE load-balancing loss weight; None: the model's router_aux_loss_coef (0 if dense).
  router_aux_coef: float | None = None
  # Router replay: the sampler returns each token's experts and the trainer's forwards route
  # through them (the sampler's and trainer's log-probs then share their experts).
  router_replay: bool = False

  def __post_init__(self):
    def bad(field, why, group="rl"):  # names the config key, e.g. rl.policy_loss
      return ConfigError(f"{group}.{field}", getattr(self, field), why)
    for field, allowed in (("algorithm", ALGORITHMS), ("loss_aggregation", AGGREGATIONS),
                           ("advantage_norm", adv_lib.ADVANTAGE_NORMS),
                           ("kl_estimator", KL_ESTIMATORS), ("kl_in", KL_IN),
                           ("policy_loss", tuple(pl.POLICY_LOSSES)), ("tis", pl.TIS_MODES)):
      if getattr(self, field) not in allowed:
        raise bad(field, f"unknown; choose one of {allowed}")
    if not 0 <= self.epsilon < 1:
      raise bad("epsilon", "must be in [0, 1)")
    if self.epsilon_high is not None and self.epsilon_high < 0:
      raise bad("epsilon_high", "must be >= 0")
    if self.beta < 0:
      raise bad("beta", "must be >= 0")
    if self.temperature <= 0:
      raise bad("temperature", "must be > 0", "sampling")
    if self.kl_in == "reward" and self.algorithm != "ppo":
      raise bad("kl_in", f"needs rl.algorithm='ppo' (a per-token reward for the critic), not "
                f"{self.algorithm!r}; use kl_in='loss'")
    if self.policy_loss == "gspo" and self.loss_aggregation != "seq-mean-token-mean":
      raise bad("policy_loss", f"with loss_aggregation={self.loss_aggregation!r}: GSPO's unit "
                "is the sequence, use seq-mean-token-mean (or gspo_token)")
    if self.policy_loss == "gspo" and self.algorithm == "ppo":
      raise bad("policy_loss", "with algorithm='ppo': a sequence ratio needs per-sequence "
                "advantages (GAE's are per token), use gspo_token")
    if self.policy_loss == "dual_clip" and self.dual_clip_c <= 1:
      raise bad("dual_clip_c", "must be > 1")
    if self.tis_cap <= 0:
      raise bad("tis_cap", "must be > 0")
    if self.router_aux_coef is not None and self.router_aux_coef < 0:
      raise bad("router_aux_coef", "must be >= 0")

  @property
  def critic(self) -> bool:
    """PPO: advantages come from a critic (GAE), not from the group's rewards."""
    return self.algorithm == "ppo"

  def loss_config(self) -> "RLConfig":
    """The policy loss's config: with the KL in the reward, no KL term in the loss."""
    return dataclasses.replace(self, beta=0.0) if self.kl_in == "reward" else self

  def advantages(self, rewards, group_size: int):
    """Per-completion advantages [B*G] of an outcome algorithm (zeros for ppo: its per-token
    advantages come from the critic, `ppo.update_critic`)."""
    if self.critic:
      return np.zeros(len(rewards))
    knobs = adv_lib.ESTIMATOR_KNOBS[self.algorithm]
    return adv_lib.outcome_advantages(rewards, group_size, self.algorithm,
                                      **{arg: getattr(self, k) for k, arg in knobs.items()})

  def aux_coef(self, model_cfg: ModelConfig) -> float:
    """The load-balancing loss weight for `model_cfg`; a weight for a dense model is an error."""
    if self.router_aux_coef is None:
      return model_cfg.router_aux_loss_coef
    if self.router_aux_coef and not model_cfg.num_experts:
      raise ValueError(f"rl.router_aux_coef={self.router_aux_coef} needs a mixture-of-experts "
                       "model (this one has num_experts=0)")
    return self.router_aux_coef

  def check_replay(self, model_cfg: ModelConfig) -> None:
    """Router replay needs experts to replay: an error on a dense model."""
    if self.router_replay and not model_cfg.num_experts:
      raise ValueError("rl.router_replay=True needs a mixture-of-experts model (this one "
                       "has num_experts=0)")

  @property
  def routes(self) -> bool:
    """Whether a router knob is set (a load-balancing weight or router replay)."""
    return bool(self.router_aux_coef) or self.router_replay

  def check_model(self, model_cfg: ModelConfig) -> None:
    """The router knobs (`routes`) need a mixture-of-experts model: an error on a dense one."""
    self.aux_coef(model_cfg)
    self.check_replay(model_cfg)


def _kl_in(r) -> str:
  """Where the KL goes: rl.kl_in, unset: the reward for ppo (per-token k1), else the loss."""
  return r.get("kl_in") or ("reward" if r["algorithm"] == "ppo" else "loss")


# The knobs that only some choices read, each with the condition under which it is read. In
# the config they are None when unset (the algorithm's default); set while unread, an error.
CONDITIONAL = {
    **{k: (f"rl.algorithm={name!r}", lambda r, name=name: r["algorithm"] == name)
       for name, knobs in adv_lib.ESTIMATOR_KNOBS.items() for k in knobs},
    "dual_clip_c": ("rl.policy_loss='dual_clip'", lambda r: r["policy_loss"] == "dual_clip"),
    "tis_cap": ("rl.tis='token' or 'sequence'", lambda r: r["tis"] != "none"),
    "kl_estimator": ("rl.beta > 0 with the KL in the loss (rl.kl_in='loss')",
                     lambda r: r["beta"] > 0 and _kl_in(r) == "loss"),
    "kl_in": ("rl.algorithm='ppo'", lambda r: r["algorithm"] == "ppo"),
}


def ignored_knobs(section, ppo_section=None) -> None:
  """Raise on a knob of the `rl` section (or of the `ppo` section) that the chosen algorithm,
  policy loss, tis mode or KL placement would ignore; unset knobs are None."""
  r = dict(section)
  if r.get("algorithm") not in ALGORITHMS:
    raise ConfigError("rl.algorithm", r.get("algorithm"), f"unknown; choose one of {ALGORITHMS}")
  for key, (needs, used) in CONDITIONAL.items():
    if r.get(key) is not None and not used(r):
      raise ConfigError(f"rl.{key}", r[key], f"ignored unless {needs}; leave it unset")
  if r["algorithm"] != "ppo":
    for key, value in dict(ppo_section or {}).items():
      if value is not None and not (hasattr(value, "keys") and not dict(value)):
        raise ConfigError(f"ppo.{key}", value, "ignored unless rl.algorithm='ppo' (the critic's "
                          "knobs); leave it unset")


def from_config(c) -> RLConfig:
  """The RLConfig of experiment config `c` (its `rl` section; loop knobs from `train`)."""
  check_moved(c)  # an old key (grpo.*, ppo.kl_in): one line naming its new place
  ignored_knobs(c.rl, c.get("ppo"))
  r = dict(c.rl.to_dict(), kl_in=_kl_in(c.rl))
  r = {k: v for k, v in r.items() if v is not None or k in ("epsilon_high", "router_aux_coef")}
  return RLConfig(**r, max_completion_len=c.sampling.max_new_tokens,
                  temperature=c.sampling.temperature or 1.0,
                  logprob_impl=c.train.logprob_impl)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
  """Per-token estimate of KL(pi_theta || pi_ref) from sampled tokens."""
  log_ratio = ref_logp - logp
  if estimator == "k3":
    return jnp.exp(log_ratio) - log_ratio - 1.0
  if estimator == "k2":
    return 0.5 * log_ratio ** 2
  return -log_ratio  # k1


def aggregate(x: jax.Array, mask: jax.Array, how: str, max_len: int = 0) -> jax.Array:
  """Reduce per-token values [B, N] to a scalar with one of AGGREGATIONS."""
  mask = mask.astype(jnp.float32)
  x = x * mask
  if how == "seq-mean-token-mean":
    per_seq = x.sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    return per_seq.mean()
  if how == "token-mean":
    return x.sum() / jnp.maximum(mask.sum(), 1.0)
  if how == "seq-mean-token-sum-norm":
    return (x.sum(-1) / float(max_len or x.shape[-1])).mean()
  raise ValueError(f"loss_aggregation={how!r}; choose from {AGGREGATIONS}")


def micro_batch_weight(cfg: RLConfig):
  """How micro-batch losses combine into the batch loss (`steps.make_train_step`): by
  completion-token count for token-mean (one global token mean), equally otherwise (every
  micro-batch holds the same number of sequences)."""
  if cfg.loss_aggregation == "token-mean":  # the trained tokens (a tool reply's are not)
    return lambda batch: (batch.completion_mask if batch.loss_mask is None
                          else batch.loss_mask).sum()
  return None


def grpo_objective(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array | None,
                   advantages: jax.Array, mask: jax.Array, cfg: RLConfig,
                   sampler_logp: jax.Array | None = None, segment_ids: jax.Array | None = None,
                   weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss (to minimise) from per-token log-probs [B, N] and advantages [B] or [B, N]
  (token-level, e.g. GAE); `sampler_logp` is needed for `cfg.tis`. Packed rows
  (r1jax.packing) pass `segment_ids` and the aggregation as per-token `weights`: the loss is
  then -sum(objective * weights)."""
  eps_hi = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
  adv = advantages[:, None] if advantages.ndim == 1 else advantages
  per_token, metrics = pl.surrogate(cfg.policy_loss, logp, old_logp, adv, mask, cfg.epsilon,
                                    eps_hi, cfg.dual_clip_c, segment_ids)
  if cfg.tis != "none":
    if sampler_logp is None:
      raise ValueError(f"tis={cfg.tis!r} needs the sampler's log-probs in the batch")
    w = pl.tis_weights(old_logp, sampler_logp, mask, cfg.tis, cfg.tis_cap, segment_ids)
    per_token = per_token * w
  maskf = mask.astype(jnp.float32)
  ntok = jnp.maximum(maskf.sum(), 1.0)
  if cfg.tis != "none":
    metrics["tis_weight_mean"] = (jnp.broadcast_to(w, mask.shape) * maskf).sum() / ntok
  if cfg.beta > 0:
    if ref_logp is None:
      raise ValueError("beta > 0 needs reference log-probs")
    kl = kl_penalty(logp, ref_logp, cfg.kl_estimator)
    per_token = per_token - cfg.beta * kl
    metrics["kl"] = (kl * maskf).sum() / ntok
  else:
    metrics["kl"] = jnp.zeros(())
  if weights is None:
    loss = -aggregate(per_token, mask, cfg.loss_aggregation, cfg.max_completion_len)
  else:
    loss = -(per_token * maskf * weights).sum()
  return loss, metrics


class Batch(NamedTuple):
  """A training batch: B prompts and their G completions each (prompt-major rows).

  The prompt is run once per group and its keys/values are shared by the group's G
  completions (the same computation as running each full sequence, G times cheaper in
  the prompt; gradients through the shared prompt sum over the group).
  """
  prompt_tokens: jax.Array  # [B, P] left-padded
  prompt_mask: jax.Array  # [B, P]
  completion_tokens: jax.Array  # [B*G, N]
  completion_mask: jax.Array  # [B*G, N]
  advantages: jax.Array  # [B*G], or [B*G, N] per token (gae)
  old_logp: jax.Array | None  # [B*G, N]; None: pi_old is the current params (mu = 1)
  ref_logp: jax.Array | None  # [B*G, N]; None when beta == 0
  sampler_logp: jax.Array | None = None  # [B*G, N] the sampler's log-probs (mismatch, tis)
  # [B*G, N] the tokens the loss trains, where it differs from completion_mask (which is
  # what attention sees): a multi-turn rollout's tool replies are context, not trained.
  loss_mask: jax.Array | None = None
  # Router replay (`RLConfig.router_replay`): the sampler's experts, -1 where none (see
  # `decode.SampleOutput`); the trainer's forwards route through them.
  prompt_experts: jax.Array | None = None  # [B, L_moe, P, k]
  experts: jax.Array | None = None  # [B*G, L_moe, N, k]


def completion_hidden(params: Any, model_cfg: ModelConfig, prompt_tokens: jax.Array,
                      prompt_mask: jax.Array, completion_tokens: jax.Array,
                      completion_mask: jax.Array, router_stats: bool = False,
                      prompt_experts: jax.Array | None = None,
                      experts: jax.Array | None = None):
  """Final hidden states that predict each completion token: [B*G, N, D].

  Row r of the completions belongs to prompt r // G. Position t of the output is the
  hidden state after the prompt and completion tokens < t. With `router_stats`, also the
  MoE routing summary of the prompts (once each) and completions (`router_summary`).
  `prompt_experts` [B, L_moe, P, k] and `experts` [B*G, L_moe, N, k] replay a sampler's
  routing (`Batch`'s fields; None: the model routes).
  """
  b, p = prompt_tokens.shape
  rows, n = completion_tokens.shape
  g = rows // b
  prompt_mask = prompt_mask.astype(bool)
  pos = positions_from_mask(prompt_mask)
  cache = init_cache(model_cfg, b, p + n - 1) if n > 1 else init_cache(model_cfg, b, p)
  h_prompt, cache, *st_prompt = forward(params, model_cfg, prompt_tokens, pos, prompt_mask,
                                       cache, return_hidden=True,
                                       return_router_stats=router_stats,
                                       experts=prompt_experts)
  h_first = jnp.repeat(h_prompt[:, -1:], g, axis=0)  # predicts completion token 0
  if n == 1:
    return (h_first, *st_prompt) if router_stats else h_first
  rep = lambda x: jnp.repeat(x, g, axis=0)
  cache = cache._replace(k=tuple(map(rep, cache.k)), v=tuple(map(rep, cache.v)),
                         mask=rep(cache.mask))
  start = rep(pos[:, -1] + 1)[:, None]
  cpos = start + jnp.arange(n - 1)[None, :]
  h_rest, _, *st_rest = forward(params, model_cfg, completion_tokens[:, :-1], cpos,
                                completion_mask[:, :-1].astype(bool), cache,
                                return_hidden=True, return_router_stats=router_stats,
                                experts=None if experts is None else experts[:, :, :n - 1])
  h = jnp.concatenate([h_first, h_rest], axis=1)
  if router_stats:
    return h, merge_router_stats(st_prompt[0], st_rest[0], model_cfg)
  return h


def completion_logprobs(params: Any, model_cfg: ModelConfig, prompt_tokens: jax.Array,
                        prompt_mask: jax.Array, completion_tokens: jax.Array,
                        completion_mask: jax.Array, temperature: float = 1.0,
                        impl: str = "auto", return_entropy: bool = False,
                        router_stats: bool = False, prompt_experts: jax.Array | None = None,
                        experts: jax.Array | None = None):
  """log p(completion tokens) [B*G, N] (and entropy, and with `router_stats` the MoE routing
  summary, in that order) via the fused unembedding log-prob; `prompt_experts` / `experts`
  replay a sampler's routing (`completion_hidden`)."""
  from r1jax.kernels import token_logprobs
  hidden = completion_hidden(params, model_cfg, prompt_tokens, prompt_mask, completion_tokens,
                             completion_mask, router_stats, prompt_experts, experts)
  h, stats = hidden if router_stats else (hidden, None)
  rows, n, d = h.shape
  out = token_logprobs(h.reshape(rows * n, d), unembed_matrix(params, model_cfg).astype(h.dtype),
                       completion_tokens.reshape(-1), temperature,
                       return_entropy=return_entropy, impl=impl, **kernel_axes())
  out = (out[0].reshape(rows, n), out[1].reshape(rows, n)) if return_entropy else (
      out.reshape(rows, n),)
  out += (stats,) if router_stats else ()
  return out if len(out) > 1 else out[0]


def batch_logprobs(params: Any, batch: Batch, model_cfg: ModelConfig, temperature: float = 1.0,
                   impl: str = "auto") -> jax.Array:
  """No-grad log-probs of a batch's completions (for pi_old and the reference)."""
  return jax.lax.stop_gradient(completion_logprobs(
      params, model_cfg, batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens,
      batch.completion_mask, temperature, impl, prompt_experts=batch.prompt_experts,
      experts=batch.experts))


def grpo_loss(params: Any, batch: Batch, cfg: RLConfig, model_cfg: ModelConfig
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """GRPO loss of `params` on a batch; metrics include kl, clip_frac and entropy (and for a
  mixture of experts router_aux_loss, expert_load_max / _min)."""
  out = completion_logprobs(
      params, model_cfg, batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens,
      batch.completion_mask, cfg.temperature, cfg.logprob_impl, return_entropy=True,
      router_stats=bool(model_cfg.num_experts), prompt_experts=batch.prompt_experts,
      experts=batch.experts)
  mask = batch.completion_mask if batch.loss_mask is None else batch.loss_mask
  return loss_from_logprobs(out, batch.old_logp, batch.ref_logp, batch.advantages, mask,
                            batch.sampler_logp, cfg, model_cfg)


def loss_from_logprobs(out: tuple, old_logp, ref_logp, advantages, mask, sampler_logp,
                       cfg: RLConfig, model_cfg: ModelConfig, segment_ids=None, weights=None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`grpo_loss` from `completion_logprobs`' (logp, entropy[, router summary]); packed rows
  (r1jax.packed_rl) pass `segment_ids` and `weights` (see `grpo_objective`)."""
  logp, ent, *stats = out
  ent = jax.lax.stop_gradient(ent)
  ref = ref_logp if cfg.beta > 0 else None
  old = jax.lax.stop_gradient(logp) if old_logp is None else old_logp
  loss, metrics = grpo_objective(logp, old, ref, advantages, mask, cfg, sampler_logp,
                                 segment_ids, weights)
  if sampler_logp is not None:  # per micro-batch; the max is averaged over them
    metrics.update(pl.mismatch_metrics(old, sampler_logp, mask))
  maskf = mask.astype(jnp.float32)
  metrics["entropy"] = (ent * maskf).sum() / jnp.maximum(maskf.sum(), 1.0)
  if model_cfg.num_experts:
    aux, load = stats[0]["aux_loss"], jax.lax.stop_gradient(stats[0]["expert_load"])
    loss = loss + cfg.aux_coef(model_cfg) * aux
    metrics.update(router_aux_loss=jax.lax.stop_gradient(aux), expert_load_max=load.max(),
                   expert_load_min=load.min())
    if model_cfg.router_bias_update_speed > 0:  # for moe.balancing_update, in the train step
      metrics["router_counts"] = jax.lax.stop_gradient(stats[0]["counts"])
  return loss, metrics
