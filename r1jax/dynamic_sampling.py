"""Dynamic sampling (DAPO): keep only groups whose rewards differ, draw more until full.

A group whose G rewards are all equal has zero advantage under every group baseline, so it
adds no gradient and dilutes the batch. `fill_batch` calls `draw(round)` (one rollout of a
fresh batch of prompts: sample + score) until `want` groups with varied rewards are kept or
`max_rounds` rounds were drawn. At the bound it warns and pads the batch with constant groups
(zero advantage, so no gradient), which keeps the batch's shape fixed (no recompilation).
Host-side and pure apart from `draw`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from absl import logging

from r1jax.model.moe import fit_experts


class Rollout(NamedTuple):
  """One batch of prompts and their G completions each (rows prompt-major)."""
  examples: list  # [B] task examples
  prompts: list  # [B] rendered prompt strings
  prompt_ids: list  # [B] prompt token lists (padded by the caller)
  out: Any  # sampling.SampleOutput of host arrays, [B*G, ...]
  texts: list  # [B*G] decoded completions
  res: Any  # rewards.RewardResult over the B*G rows


def _rows(x, rows):
  if x is None:
    return None
  return [x[i] for i in rows] if isinstance(x, list) else np.asarray(x)[rows]


def select(r: Rollout, groups: Sequence[int], g: int) -> Rollout:
  """The rollout restricted to prompt indices `groups` (and their G rows each)."""
  groups = list(groups)
  rows = [i * g + j for i in groups for j in range(g)]
  res = dataclasses.replace(
      r.res, total=r.res.total[rows],
      per_reward={k: v[rows] for k, v in r.res.per_reward.items()},
      invalid_mask=r.res.invalid_mask[rows], invalid=int(r.res.invalid_mask[rows].sum()),
      extras={k: [v[i] for i in rows] for k, v in r.res.extras.items()})
  return Rollout(_rows(r.examples, groups), _rows(r.prompts, groups),
                 _rows(r.prompt_ids, groups), type(r.out)(*(_rows(x, rows) for x in r.out)),
                 _rows(r.texts, rows), res)


def concat(parts: Sequence[Rollout], num_tokens: int) -> Rollout:
  """Rollouts stacked in order; completion arrays are padded to `num_tokens` columns (the
  sampler's experts too, and its prompt experts on the left to the widest prompt)."""
  def pad(x, name):
    x = np.asarray(x)
    if name == "prompt_experts":
      return fit_experts(x, max(p.out.prompt_experts.shape[2] for p in parts), left=True)
    if name == "experts":
      return fit_experts(x, num_tokens)
    return x if x.ndim == 1 else np.pad(x, ((0, 0), (0, num_tokens - x.shape[1])))
  res0 = parts[0].res
  res = dataclasses.replace(
      res0, total=np.concatenate([p.res.total for p in parts]),
      per_reward={k: np.concatenate([p.res.per_reward[k] for p in parts])
                  for k in res0.per_reward},
      failures={k: sum(p.res.failures[k] for p in parts) for k in res0.failures},
      invalid=sum(p.res.invalid for p in parts),
      invalid_mask=np.concatenate([p.res.invalid_mask for p in parts]),
      invalid_per_reward={k: sum(p.res.invalid_per_reward[k] for p in parts)
                          for k in res0.invalid_per_reward},
      max_seconds={k: max(p.res.max_seconds[k] for p in parts) for k in res0.max_seconds},
      extras={k: sum((list(p.res.extras[k]) for p in parts), []) for k in res0.extras})
  fields = parts[0].out._fields
  out = type(parts[0].out)(*(None if parts[0].out[i] is None else
                             np.concatenate([pad(p.out[i], fields[i]) for p in parts])
                             for i in range(len(fields))))
  return Rollout(*(sum((list(getattr(p, f)) for p in parts), [])
                   for f in ("examples", "prompts", "prompt_ids")), out,
                 sum((list(p.texts) for p in parts), []), res)


def varied_groups(total: np.ndarray, g: int) -> np.ndarray:
  """bool[B]: the groups whose rewards are not all equal."""
  r = np.asarray(total).reshape(-1, g)
  return r.max(axis=1) > r.min(axis=1)


def fill_batch(draw: Callable[[int], Rollout], want: int, g: int, max_rounds: int
               ) -> tuple[Rollout, dict[str, float]]:
  """Draw rounds until `want` varied groups are kept (at most `max_rounds` rounds).

  Returns the batch (exactly `want` groups: varied ones first, then constant padding if the
  bound was hit) and metrics: dynamic/rounds, dynamic/dropped_share (constant groups among
  all drawn), dynamic/padded_groups, dynamic/reward_mean_drawn.
  """
  if max_rounds < 1:
    raise ValueError(f"dynamic sampling max_rounds={max_rounds} must be >= 1")
  kept, spare, n_kept, drawn, dropped, rewards = [], [], 0, 0, 0, []
  rounds = 0
  while n_kept < want and rounds < max_rounds:
    r = draw(rounds)
    rounds += 1
    ok = varied_groups(r.res.total, g)
    drawn += ok.size
    dropped += int((~ok).sum())
    rewards.append(np.asarray(r.res.total))
    take = np.flatnonzero(ok)[:want - n_kept]
    if take.size:
      kept.append(select(r, take, g))
      n_kept += take.size
    if n_kept + sum(len(s.examples) for s in spare) < want:
      spare.append(select(r, np.flatnonzero(~ok), g))
  padded = want - n_kept
  if padded:
    logging.warning("dynamic sampling: %d of %d groups with varied rewards after max_rounds=%d "
                    "rounds; padding the batch with %d constant groups (no gradient)",
                    n_kept, want, max_rounds, padded)
    pool = concat(spare, max(s.out.tokens.shape[1] for s in spare))
    kept.append(select(pool, range(padded), g))
  batch = concat(kept, max(k.out.tokens.shape[1] for k in kept))
  return batch, {"dynamic/rounds": float(rounds), "dynamic/dropped_share": dropped / drawn,
                 "dynamic/padded_groups": float(padded),
                 "dynamic/reward_mean_drawn": float(np.concatenate(rewards).mean())}
