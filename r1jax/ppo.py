"""PPO with a critic (`rl.algorithm="ppo"`, knobs in the `ppo` section): value head, value
loss, GAE advantages.

The critic is a transformer with a scalar value head ([D] -> 1 on the final hidden state
that predicts each completion token, i.e. V(state before token t)); it has its own
optimizer and train state, and shares the mesh, the rollout and the micro-batching with the
policy. Its transformer is `ppo.critic_model`: {} a copy of the policy; a model spec as
`model` takes (gguf, hf_dir, run, ...) a separate model, usually smaller, reading the same
token ids; `dict(source="policy", prune_every=k)` every k-th block of the policy's initial
weights (`load_critic_model`). Every critic function takes the critic's own model config.
One PPO step (`update_critic`, called by the trainer before the policy update):
  1. per-token rewards: the outcome score at each completion's last valid token, minus
     beta * k1 = beta * (log pi_old - log pi_ref) per token when `rl.kl_in="reward"` (PPO's
     default; `rl.kl_in="loss"` keeps the k3 penalty in the policy loss, as GRPO does);
  2. values V_old of the critic, GAE(gamma, lam) by a reverse scan (advantages.gae),
     returns = A + V_old, advantages whitened over the batch's valid tokens;
  3. critic step on  w * 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)
     (token mean; c = value_clip, 0 turns clipping off).
During the first `critic_warmup_steps` steps the trainer updates only the critic.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import advantages as adv_lib
from r1jax import memory, rl, steps
from r1jax.mesh import replicated
from r1jax.model import loader
from r1jax.model.config import runtime_fields

CRITIC_SOURCES = ("policy",) + loader.SOURCES


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  gamma: float = 1.0
  lam: float = 0.95
  value_clip: float = 0.2  # 0: no value clipping
  value_loss_weight: float = 0.5
  whiten_advantages: bool = True
  kl_in: str = "reward"  # rl.kl_in: reward: beta * k1 per token in the reward; loss: the k3 term
  critic_warmup_steps: int = 0
  critic_learning_rate: float = 1e-5

  def __post_init__(self):
    if self.kl_in not in rl.KL_IN:
      raise ValueError(f"rl.kl_in={self.kl_in!r}; choose from {rl.KL_IN}")
    for name in ("gamma", "lam"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"ppo.{name}={getattr(self, name)} must be in [0, 1]")
    if self.value_clip < 0 or self.value_loss_weight <= 0:
      raise ValueError(f"ppo.value_clip={self.value_clip} must be >= 0 and "
                       f"ppo.value_loss_weight={self.value_loss_weight} > 0")
    if self.critic_warmup_steps < 0 or self.critic_learning_rate <= 0:
      raise ValueError(f"ppo.critic_warmup_steps={self.critic_warmup_steps} must be >= 0 and "
                       f"ppo.critic_learning_rate={self.critic_learning_rate} > 0")


def from_config(c, rcfg: rl.RLConfig) -> PPOConfig | None:
  """The `ppo` section (unset knobs: PPOConfig's defaults) when rl.algorithm is ppo, else None."""
  if not rcfg.critic:
    return None
  knobs = {k: v for k, v in c.ppo.to_dict().items() if k != "critic_model" and v is not None}
  return PPOConfig(kl_in=rcfg.kl_in, **knobs)


def check_config(c) -> None:
  """What PPO's critic does not take yet (tool replies; LoRA: `lora.check_config`), and
  `ppo.critic_model`."""
  from r1jax import tools
  critic_spec(c)
  if tools.from_config(c):
    raise ValueError("tools.enabled=True with rl.algorithm='ppo': the critic does not take "
                     "the tool replies' loss mask yet; use an outcome algorithm")


def critic_spec(c) -> dict:
  """`ppo.critic_model` checked, with the policy's dtypes where it names none ({}: a copy)."""
  spec = c.ppo.get("critic_model") or {}
  spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
  if not spec:
    return {}
  source = spec.get("source")
  if source not in CRITIC_SOURCES:
    raise ValueError(f"ppo.critic_model.source={source!r}; choose from {CRITIC_SOURCES} "
                     "(or ppo.critic_model={} for a copy of the policy)")
  every = spec.get("prune_every", 0)
  if not isinstance(every, int) or every < 0:
    raise ValueError(f"ppo.critic_model.prune_every={every!r} must be an int >= 0")
  if source == "policy":
    extra = sorted(set(spec) - {"source", "prune_every"})
    if extra:
      raise ValueError(f"ppo.critic_model={spec}: source='policy' takes only prune_every, "
                       f"not {extra}")
    return spec
  return {**runtime_fields(c.model), **spec}


def load_critic_model(spec: dict, policy_params: Any, policy_cfg, mesh, seed: int = 0):
  """(model config, params) of the critic's transformer from `critic_spec`; the value head
  comes on top in `init_critic_params`. Raises naming `ppo.critic_model` when the critic's
  vocabulary is not the policy's (it reads the policy's token ids)."""
  if not spec:
    return policy_cfg, policy_params
  if spec["source"] == "policy":
    every = spec.get("prune_every", 0)
    if every > 1:
      return loader.prune_layers(policy_params, policy_cfg, every)
    return policy_cfg, policy_params
  cfg, params, _ = loader.load_model(spec, mesh, seed=seed)
  if cfg.vocab_size != policy_cfg.vocab_size:
    raise ValueError(f"ppo.critic_model={spec}: the critic's vocab_size={cfg.vocab_size} is "
                     f"not the policy's {policy_cfg.vocab_size}; the critic reads the policy's "
                     "token ids, so it needs the same tokenizer")
  return cfg, params


def setup(c, pcfg: PPOConfig, policy_params: Any, policy_cfg, ocfg: steps.OptimConfig,
          n_micro: int, mesh, announce: bool = True) -> tuple[steps.TrainState, "Critic"]:
  """The critic of experiment config `c` (`ppo.critic_model`): its train state and jitted
  functions (`make_critic`); `announce` prints its size."""
  spec = critic_spec(c)
  cfg, params = load_critic_model(spec, policy_params, policy_cfg, mesh, seed=c.seed)
  state, critic = make_critic(params, cfg, pcfg, ocfg, n_micro, mesh)
  if announce:
    print(f"PPO critic: {cfg.num_layers} layers, hidden {cfg.hidden_size} "
          f"({spec or 'a copy of the policy'})", flush=True)
  return state, critic


class CriticBatch(NamedTuple):
  prompt_tokens: jax.Array  # [B, P]
  prompt_mask: jax.Array  # [B, P]
  completion_tokens: jax.Array  # [B*G, N]
  completion_mask: jax.Array  # [B*G, N]
  returns: jax.Array  # [B*G, N]
  old_values: jax.Array  # [B*G, N]


def init_critic_params(model_params: Any, model_cfg, mesh=None) -> dict:
  """A copy of the critic's transformer (same shardings; its arrays may be the policy's,
  whose train state is donated) and a zero value head: V = 0 at the start."""
  head = {"w": jnp.zeros((model_cfg.hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
  if mesh is not None:
    head = jax.device_put(head, replicated(mesh))
  return {"model": jax.tree.map(jnp.copy, model_params), "head": head}


def values(critic: dict, model_cfg, prompt_tokens, prompt_mask, completion_tokens,
           completion_mask) -> jax.Array:
  """V(state before completion token t): [B*G, N] float32."""
  h = rl.completion_hidden(critic["model"], model_cfg, prompt_tokens, prompt_mask,
                             completion_tokens, completion_mask)
  return h.astype(jnp.float32) @ critic["head"]["w"] + critic["head"]["b"]


def value_loss(v: jax.Array, old_v: jax.Array, returns: jax.Array, mask: jax.Array,
               clip: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped value loss 0.5 * max((V - R)^2, (V_clip - R)^2), token mean over `mask`."""
  m = mask.astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  unclipped = jnp.square(v - returns)
  if clip > 0:
    v_clip = old_v + jnp.clip(v - old_v, -clip, clip)
    clipped = jnp.square(v_clip - returns)
    per_tok = jnp.maximum(unclipped, clipped)
    frac = ((clipped > unclipped) * m).sum() / n
  else:
    per_tok, frac = unclipped, jnp.zeros(())
  return 0.5 * (per_tok * m).sum() / n, {"value_clip_frac": frac}


def _packed(batch) -> bool:
  return hasattr(batch, "segment_ids")  # rows from r1jax.packing


def _mask(batch) -> jax.Array:
  return batch.loss_mask if _packed(batch) else batch.completion_mask


def batch_values(critic: dict, model_cfg, batch) -> jax.Array:
  """`values` of a batch (a policy or critic batch, padded or packed)."""
  if _packed(batch):
    from r1jax import packed_rl
    return packed_rl.values(critic, model_cfg, batch)
  return values(critic, model_cfg, batch.prompt_tokens, batch.prompt_mask,
                batch.completion_tokens, batch.completion_mask)


def critic_loss(critic: dict, batch: CriticBatch, pcfg: PPOConfig, model_cfg
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  v = batch_values(critic, model_cfg, batch)
  loss, m = value_loss(v, batch.old_values, batch.returns, _mask(batch), pcfg.value_clip)
  maskf = _mask(batch).astype(jnp.float32)
  m["value_mean"] = (v * maskf).sum() / jnp.maximum(maskf.sum(), 1.0)
  m["value_loss"] = loss
  return pcfg.value_loss_weight * loss, m


def ppo_advantages(scores: jax.Array, old_values: jax.Array, mask: jax.Array,
                   old_logp: jax.Array | None, ref_logp: jax.Array | None, beta: float,
                   pcfg: PPOConfig, segment_ids: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """(advantages, returns) [B*G, N] from outcome scores [B*G] and the critic's values; on
  packed rows (`segment_ids`, scores per token) GAE stops at every segment's end."""
  kl = None
  if pcfg.kl_in == "reward" and beta > 0 and ref_logp is not None:
    kl = old_logp - ref_logp  # k1 per token
  r = adv_lib.token_rewards(scores, mask, kl, beta, segment_ids)
  adv, ret = adv_lib.gae(r, old_values, mask, pcfg.gamma, pcfg.lam, segment_ids)
  if pcfg.whiten_advantages:
    adv = adv_lib.whiten(adv, mask)
  return adv, ret


class Critic(NamedTuple):
  """The critic's jitted functions (its state is a steps.TrainState held by the trainer)."""
  values: Callable
  advantages: Callable
  train_step: Callable


def make_critic(model_params: Any, model_cfg, pcfg: PPOConfig, ocfg: steps.OptimConfig,
                n_micro: int, mesh=None) -> tuple[steps.TrainState, Critic]:
  """Initial critic train state (own AdamW at `critic_learning_rate`) and jitted functions.

  `model_params`, `model_cfg`: the critic's transformer (`load_critic_model`), not the policy's.
  """
  ocfg = dataclasses.replace(ocfg, learning_rate=pcfg.critic_learning_rate)
  tx = steps.make_optimizer(ocfg)
  state = memory.init_state(
      init_critic_params(model_params, model_cfg, mesh), tx)
  loss_fn = functools.partial(critic_loss, pcfg=pcfg, model_cfg=model_cfg)
  step = steps.jit_train_step(steps.make_train_step(
      lambda p, b: loss_fn(p, b), tx, n_micro, lambda b: _mask(b).sum()), state)
  vals = jax.jit(lambda p, b: jax.lax.stop_gradient(batch_values(p, model_cfg, b)))
  advs = jax.jit(functools.partial(ppo_advantages, pcfg=pcfg), static_argnames=("beta",))
  return state, Critic(vals, advs, step)


def update_critic(critic: Critic, state: steps.TrainState, batch, scores, beta: float,
                  layout=None) -> tuple[Any, steps.TrainState, dict, np.ndarray]:
  """GAE advantages into `batch` (from the critic before its update) and one critic step.

  `batch.old_logp` must hold pi_old's log-probs when the KL is in the reward. A packed batch
  (r1jax.packing) comes with its `layout`. Returns the batch, the new critic state, its
  metrics and each row's mean advantage (for logging).
  """
  from r1jax import packing
  old_v = critic.values(state.params, batch)
  mask, seg = _mask(batch), getattr(batch, "segment_ids", None)
  if layout is not None:
    scores = packing.place(scores, layout)  # each token gets its sample's score
  adv, ret = critic.advantages(jnp.asarray(scores, jnp.float32), old_v, mask, batch.old_logp,
                               batch.ref_logp, beta=beta, segment_ids=seg)
  if layout is not None:
    from r1jax import packed_rl
    cb = packed_rl.CriticBatch(batch.tokens, batch.positions, seg, mask, ret, old_v)
  else:
    cb = CriticBatch(batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens, mask,
                     ret, old_v)
  state, m = critic.train_step(state, cb)
  m = {f"critic/{k}": v for k, v in jax.device_get(m).items()}
  host_m, host_a = np.asarray(jax.device_get(mask), np.float32), np.asarray(jax.device_get(adv))
  if layout is not None:
    host_m, host_a = packing.unpack(host_m, layout), packing.unpack(host_a, layout)
  row_adv = (host_a * host_m).sum(1) / np.maximum(host_m.sum(1), 1)
  return batch._replace(advantages=adv), state, m, row_adv
