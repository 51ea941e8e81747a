"""Reward models inside GRPO, and per-source reward routing (R1 stage 4, all scenarios).

A reward-model checkpoint (a `r1jax.reward_model` workdir) scores completions in one
jitted batch forward on the training mesh (not in the host reward pool):

  c.rewards.reward_model = dict(checkpoint=DIR, weight=1.0, scope="summary", max_len=512,
                                batch_size=32)

scope "summary" scores the prompt + the text after the reasoning (after `</think>`, or
after the cold-start format's second `|special_token|`; empty when the reasoning never
closed): the paper's helpfulness reward. scope "full" scores prompt + the whole response:
the paper's harmlessness reward. The RM reads text (re-encoded with its own tokenizer),
keeping the last `max_len` tokens; its score is `reward/reward_model` in the metrics.

Per-source routing: in a data mixture each example carries its source's `task`;

  c.rewards.routing = {"basic_arithmetic": dict(accuracy=1.0, format=0.2),
                       "general_chat": dict(reward_model=1.0)}

gives the rows of those tasks their own weights (names from r1jax.rewards.REWARDS, plus
"reward_model" and "judge"); other rows use `rewards.weights`, `rewards.reward_model.weight`
and `rewards.judge.weight`. The pool scores every rule reward some route uses; the total is
recombined per row.

A generative judge (r1jax/rewards/judge.py) is the other model-based reward, sampled on the
mesh in one batched call per step: `c.rewards.judge = dict(model=SPEC or {"source": "policy"},
weight=1.0, ...)`; its score is `reward/judge`, its unparsed verdicts
`reward_failures/judge`, and each logged sample carries `judge/verdict` and `judge/output`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from r1jax import reward_head
from r1jax.filters import split_reasoning

RM = "reward_model"
JUDGE = "judge"
MODEL_REWARDS = (RM, JUDGE)
SCOPES = ("summary", "full")


def rm_text(prompt: str, completion: str, prefill: str, scope: str) -> str:
  """What the RM reads: prompt + response ("full") or prompt + the text after the
  reasoning ("summary"). `completion` is the sampled text (the prompt ends with prefill)."""
  if scope == "full":
    return prompt + completion
  parts = split_reasoning(prefill + completion)
  return prompt + (parts[1] if parts else "")


def load_scorer(workdir: str, mesh, scope: str = "full", max_len: int = 0,
                batch_size: int = 32, prefill: str = "") -> Callable[[Sequence[str],
                                                                       Sequence[str]], np.ndarray]:
  """(prompts, completions) -> float32 scores of the RM checkpoint in `workdir`, computed in a
  jitted forward on `mesh` (params placed by the logical-axis rules)."""
  from r1jax.checkpoint import restore_params
  from r1jax.mesh import shard_batch, to_host, use_mesh
  from r1jax.model.loader import load_model

  if scope not in SCOPES:
    raise ValueError(f"reward_model.scope={scope!r}; choose one of {SCOPES}")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"reward_model.checkpoint={workdir!r} has no config.json "
                            "(want a r1jax.reward_model workdir)")
  with open(path) as f:
    rm_cfg = json.load(f)
  cfg, params, tokenizer = load_model(rm_cfg["model"], mesh, seed=rm_cfg.get("seed", 0))
  params, _ = restore_params(workdir, reward_head.with_head(params, cfg, mesh))
  max_len = max_len or rm_cfg["data"]["max_len"]
  pool = rm_cfg.get("head", {}).get("pool", "last")  # runs before the knob read the last token
  fn = jax.jit(functools.partial(reward_head.scores, pool=pool), static_argnums=1)

  def score(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    texts = [rm_text(p, t, prefill, scope) for p, t in zip(prompts, completions)]
    out = []
    for i in range(0, len(texts), batch_size):
      chunk = texts[i:i + batch_size]
      toks, mask = reward_head.encode(chunk + [""] * (batch_size - len(chunk)), tokenizer, max_len)
      with use_mesh(mesh):
        r = to_host(fn(params, cfg, *shard_batch((toks, mask), mesh)))
      out.append(np.asarray(r[:len(chunk)], np.float32))
    return np.concatenate(out) if out else np.zeros(0, np.float32)

  return score


def row_weights(tasks: Sequence[str], default: Mapping[str, float],
                routing: Mapping[str, Mapping[str, float]]) -> dict[str, np.ndarray]:
  """name -> float32[n]: each row's weight of each reward (its task's route, else default)."""
  names = sorted(set(default) | {k for r in routing.values() for k in r})
  return {name: np.asarray([(routing[t] if t in routing else default).get(name, 0.0)
                            for t in tasks], np.float32) for name in names}


def combine(per_reward: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> np.ndarray:
  """float32[n] total: sum over rewards of the row's weight times its score."""
  n = len(next(iter(weights.values())))
  total = np.zeros(n, np.float32)
  for name, w in weights.items():
    if np.any(w):
      total += w * np.asarray(per_reward[name], np.float32)
  return total


@dataclasses.dataclass
class Rewarder:
  """Routing, reward model and judge on top of the rule-reward pool of a GRPO run."""
  default: dict[str, float]
  routing: dict[str, dict[str, float]]
  scorer: Callable | None
  judge: Any = None  # r1jax.rewards.judge.Judge

  @property
  def pool_weights(self) -> dict[str, float]:
    """The rule rewards the pool must score (weight 1 where any route uses them)."""
    names = {k for w in [self.default, *self.routing.values()] for k, v in w.items() if v}
    return {k: 1.0 for k in sorted(names - set(MODEL_REWARDS))} or {"format": 0.0}

  @property
  def judge_uses_policy(self) -> bool:
    return self.judge is not None and self.judge.params is None

  def rescore(self, res, prompts: Sequence[str], texts: Sequence[str],
              examples: Sequence[Mapping[str, Any]], rng: jax.Array | None = None,
              policy_params: Any = None):
    """The pool's RewardResult with the model rewards added and the total recombined per row
    (`rng` draws the judge's samples; `policy_params` when the judge is the policy)."""
    per, failures, extras = dict(res.per_reward), dict(res.failures), dict(res.extras)
    if self.scorer is not None:
      per[RM] = self.scorer(prompts, texts)
    if self.judge is not None:
      v = self.judge([str(ex.get("question", p)) for ex, p in zip(examples, prompts)],
                     [ex.get("answer") for ex in examples], texts,
                     jax.random.key(0) if rng is None else rng, policy_params)
      per[JUDGE] = v.scores
      failures.update(v.failures)
      extras.update({f"{JUDGE}/verdict": v.verdicts, f"{JUDGE}/output": v.outputs})
    weights = row_weights([str(ex.get("task", "")) for ex in examples], self.default,
                          self.routing)
    return dataclasses.replace(res, total=combine(per, weights), per_reward=per,
                               failures=failures, extras=extras)


def from_config(c, mesh, prefill: str = "", policy_cfg=None,
                policy_tokenizer=None) -> Rewarder | None:
  """The run's Rewarder, or None when it uses no reward model, judge or routing. A judge
  on "policy" shares `policy_cfg` / `policy_tokenizer` and takes the params per call."""
  from r1jax.rewards import REWARDS
  from r1jax.rewards import judge as judge_lib
  rm = c.rewards.reward_model
  js = judge_lib.section(c.rewards.judge, "rewards.judge")
  routing = {str(k): dict(v) for k, v in dict(c.rewards.routing).items()}
  default = dict(c.rewards.weights)
  default[RM] = float(rm.weight)
  default[JUDGE] = float(js["weight"])
  for task, w in routing.items():
    for name in w:
      if name not in REWARDS and name not in MODEL_REWARDS:
        raise ValueError(f"rewards.routing.{task} has unknown reward {name!r}; known: "
                         f"{sorted([*REWARDS, *MODEL_REWARDS])}")
  uses = {m: default[m] != 0 or any(w.get(m) for w in routing.values()) for m in MODEL_REWARDS}
  if not any(uses.values()) and not routing:
    return None
  if uses[RM] and not rm.checkpoint:
    raise ValueError("a reward_model weight is set but rewards.reward_model.checkpoint is empty")
  if uses[JUDGE] and not js["model"]:
    raise ValueError("a judge weight is set but rewards.judge.model is empty (a model spec "
                     "or 'policy')")
  scorer = judge = None
  if uses[RM]:
    scorer = load_scorer(rm.checkpoint, mesh, rm.scope, rm.max_len, rm.batch_size, prefill)
  if uses[JUDGE]:
    judge = judge_lib.load(js, mesh, prefill, policy_cfg=policy_cfg,
                           policy_tokenizer=policy_tokenizer, where="rewards.judge",
                           seed=c.seed, decode_dtype=c.sampling.decode_dtype)
  return Rewarder(default, routing, scorer, judge)
