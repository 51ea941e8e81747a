"""The R1 cold-start readable format: `|special_token|<reasoning_process>|special_token|<summary>`.

`cold_start_format` is 1.0 when the completion (with any prefill prepended by the pool) is
exactly that: the marker twice, a non-empty reasoning process between them and a non-empty
summary after; 0.0 otherwise (a third marker included). Linear time.
"""

from __future__ import annotations

from r1jax.rewards.base import Example

COLD_START_TOKEN = "|special_token|"


def cold_start_format(completion: str, example: Example | None = None) -> float:
  s = completion.strip()
  if not s.startswith(COLD_START_TOKEN) or s.count(COLD_START_TOKEN) != 2:
    return 0.0
  _, reasoning, summary = s.split(COLD_START_TOKEN)
  return 1.0 if reasoning.strip() and summary.strip() else 0.0
