"""The reward registry: name -> pure function `fn(completion, example, **kwargs) -> float`.

Heavy dependencies (math-verify, reasoning-gym, lingua) are imported on first use, so
importing the registry is cheap; `warmup(names)` pays those costs up front (the pool's
workers call it before taking work, off the deadline clock).
"""

from __future__ import annotations

import importlib

from r1jax.rewards.accuracy import accuracy
from r1jax.rewards.base import RewardFn
from r1jax.rewards.code_exec import code_reward
from r1jax.rewards.cold_start import cold_start_format
from r1jax.rewards.format import format_partial, format_strict
from r1jax.rewards.gym import reasoning_gym_score
from r1jax.rewards.language import language_consistency
from r1jax.rewards.length import cosine, overlong

REWARDS: dict[str, RewardFn] = {
  "format": format_strict,
  "format_partial": format_partial,
  "cold_start_format": cold_start_format,
  "accuracy": accuracy,
  "reasoning_gym": reasoning_gym_score,
  "language": language_consistency,
  "code": code_reward,
  "overlong": overlong,
  "cosine": cosine,
}

# Which module's warmup() prepares each reward.
_WARMUP = {
  "accuracy": "r1jax.rewards.accuracy",
  "cosine": "r1jax.rewards.accuracy",
  "reasoning_gym": "r1jax.rewards.gym",
  "language": "r1jax.rewards.language",
  "code": "r1jax.rewards.code_exec",
}


def warmup(names) -> None:
  """Import and exercise what the named rewards need (idempotent)."""
  for module in dict.fromkeys(_WARMUP[n] for n in names if n in _WARMUP):
    importlib.import_module(module).warmup()
