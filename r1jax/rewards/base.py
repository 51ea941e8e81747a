"""Shared types of the reward layer: the reward signature and its one exception.

Every reward is a pure function `fn(completion, example, **kwargs) -> float`. The
example is a mapping with at least "answer"; rewards read only the keys they need.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

Example = Mapping[str, Any]
RewardFn = Callable[..., float]


class InvalidReference(ValueError):
  """The example's reference cannot be used (e.g. a gold answer that does not parse).

  The pool scores such an item 0 and counts it in `RewardResult.invalid`, so a broken
  dataset row never rewards every completion (a reference parsing to nothing would
  otherwise compare equal to a prediction parsing to nothing).
  """


def with_prefill(completion: str, example: Example) -> str:
  """The completion as the model's turn really reads: `example["prefill"]` + completion.

  Trainers that end the prompt with "<think>" pass that text here, so `^<think>` format
  checks and chain-of-thought extraction see the tag. Applied once, by the pool.
  """
  prefill = example.get("prefill") or ""
  return prefill + completion if prefill else completion
