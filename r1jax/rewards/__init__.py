"""Rule-based rewards (MISSION.md 1.3, 2): pure functions, scored in a process pool.

Every reward is `fn(completion, example, **kwargs) -> float`; `REWARDS` maps names to
them. `RewardPool` scores batches in worker processes with per-item deadlines;
`score_inline` does the same in-process. `extract_answer` / `normalize_answer` serve
evaluation (majority voting).
"""

from r1jax.rewards.accuracy import accuracy, answers_match, gold_answer
from r1jax.rewards.base import Example, InvalidReference, RewardFn, with_prefill
from r1jax.rewards.code_exec import code_reward
from r1jax.rewards.extract import extract_answer, extract_code, extract_cot, normalize_answer
from r1jax.rewards.format import FORMAT_PATTERN, format_partial, format_strict
from r1jax.rewards.gym import reasoning_gym_score
from r1jax.rewards.language import language_consistency
from r1jax.rewards.length import cosine, overlong
from r1jax.rewards.pool import (RewardPool, RewardResult, call_reward, pool_from_config,
                                score_inline, scored_weights)
from r1jax.rewards.registry import REWARDS

__all__ = [
  "REWARDS", "RewardPool", "RewardResult", "score_inline", "call_reward", "InvalidReference",
  "Example", "RewardFn", "with_prefill", "extract_answer", "extract_code", "extract_cot",
  "normalize_answer", "accuracy", "answers_match", "gold_answer", "format_strict",
  "format_partial", "FORMAT_PATTERN", "reasoning_gym_score", "language_consistency",
  "code_reward", "overlong", "cosine", "scored_weights", "pool_from_config",
]
