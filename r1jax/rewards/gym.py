"""reasoning-gym tasks scored by the task's own verifier.

`reasoning_gym.get_score_answer_fn(task)(answer, entry)` is the reference scorer of each
procedural task (partial credit included); we only extract the answer. The answer is
taken raw (surrounding whitespace only), as reasoning-gym's own extraction does, since
some tasks compare text exactly.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

from r1jax.rewards.base import Example, InvalidReference
from r1jax.rewards.extract import extract_answer


@functools.lru_cache(maxsize=None)
def _scorer(task: str) -> Callable[[Any, Mapping], float]:
  import reasoning_gym
  return reasoning_gym.get_score_answer_fn(task)


def gym_task(example: Example) -> tuple[str, Mapping]:
  """(task name, entry) of a reasoning-gym example; InvalidReference if unusable."""
  entry = example.get("entry")
  if not isinstance(entry, Mapping):
    raise InvalidReference("example has no reasoning-gym 'entry'")
  task = example.get("task") or (entry.get("metadata") or {}).get("source_dataset")
  if not task:
    raise InvalidReference("example has no reasoning-gym 'task'")
  try:
    _scorer(task)
  except ValueError as e:  # not a registered dataset
    raise InvalidReference(str(e)) from e
  return task, entry


def reasoning_gym_score(completion: str, example: Example) -> float:
  """The task's own score (0..1) of the completion's final answer; 0 if none."""
  task, entry = gym_task(example)
  answer = extract_answer(completion, clean=False)
  if answer is None:
    return 0.0
  return float(_scorer(task)(answer, entry))


def warmup() -> None:
  import reasoning_gym  # noqa: F401  (1 s of imports, off the deadline clock)
