"""Length shaping: DAPO's soft overlong penalty and the cosine length reward.

Lengths are in tokens: `example["completion_tokens"]` when the trainer provides it,
otherwise estimated as characters / `chars_per_token` (the prefill is not counted).
Both rewards take their lengths as keyword arguments, so a config binds them with
`functools.partial` or `RewardPool(reward_kwargs={"overlong": {"max_len": 1024}})`.
"""

from __future__ import annotations

import math

from r1jax.rewards.base import Example


def completion_length(completion: str, example: Example, chars_per_token: float = 4.0) -> float:
  """Token length of the completion (exact if the example carries "completion_tokens")."""
  n = example.get("completion_tokens")
  if n is not None:
    return float(n)
  chars = len(completion) - len(example.get("prefill") or "")
  return max(chars, 0) / chars_per_token


def overlong(completion: str, example: Example, *, max_len: int = 4096, cache_len: int = 1024,
             chars_per_token: float = 4.0) -> float:
  """DAPO soft overlong punishment (Yu et al. 2025, eq. 13), in [-1, 0].

  0 up to max_len - cache_len, then a linear ramp down to -1 at max_len, -1 beyond.
  """
  if not 0 < cache_len <= max_len:
    raise ValueError(f"need 0 < cache_len <= max_len, got {cache_len=} {max_len=}")
  n = completion_length(completion, example, chars_per_token)
  start = max_len - cache_len
  if n <= start:
    return 0.0
  if n <= max_len:
    return (start - n) / cache_len
  return -1.0


def _correctness(name: str):
  """The correctness reward `cosine` scales (imported here, not from the registry, which
  imports this module)."""
  from r1jax.rewards.accuracy import accuracy
  from r1jax.rewards.code_exec import code_reward
  from r1jax.rewards.gym import reasoning_gym_score
  fns = {"accuracy": accuracy, "code": code_reward, "reasoning_gym": reasoning_gym_score}
  if name not in fns:
    raise ValueError(f"cosine: correctness={name!r}; choose from {sorted(fns)}")
  return fns[name]


def cosine(completion: str, example: Example, *, max_len: int = 4096,
           min_value_correct: float = 0.5, max_value_correct: float = 1.0,
           min_value_wrong: float = -1.0, max_value_wrong: float = -0.5,
           correctness: str = "accuracy", chars_per_token: float = 4.0) -> float:
  """Cosine length-scaled correctness (Yeo et al. 2025, "Demystifying long CoT").

  Correct answers earn max_value_correct at length 0 decaying to min_value_correct at
  max_len (short and right is best); wrong answers are penalised min_value_wrong at
  length 0 easing to max_value_wrong at max_len (long and wrong beats short and wrong).
  `correctness` names the reward that decides right/wrong (> 0.5): accuracy, code or
  reasoning_gym.
  """
  correct = _correctness(correctness)(completion, example) > 0.5
  progress = min(completion_length(completion, example, chars_per_token) / max_len, 1.0)
  lo, hi = ((min_value_correct, max_value_correct) if correct
            else (max_value_wrong, min_value_wrong))
  return lo + 0.5 * (hi - lo) * (1.0 + math.cos(progress * math.pi))
