"""Format rewards: the strict R1-Zero template check and a partial-credit variant.

`format_strict` decides exactly what `re.match(r"^<think>.*?</think>\\s*<answer>.*?</answer>$",
completion, re.DOTALL)` decides, without running that regex: its lazy groups backtrack
quadratically on adversarial text with many closing tags. (`$` also matches before one
final newline, so "...</answer>\\n" passes, as with the regex.)
"""

from __future__ import annotations

import re

from r1jax.rewards.base import Example

FORMAT_PATTERN = r"^<think>.*?</think>\s*<answer>.*?</answer>$"
_BRIDGE = re.compile(r"</think>\s*<answer>")
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_strict(completion: str, example: Example | None = None) -> float:
  """1.0 if the completion matches `FORMAT_PATTERN` (DOTALL), else 0.0."""
  s = completion[:-1] if completion.endswith("\n") else completion
  head, tail = len("<think>"), len("</answer>")
  if not (s.startswith("<think>") and s.endswith("</answer>")) or len(s) < head + tail:
    return 0.0
  # The regex matches iff some "</think>\s*<answer>" lies after the opening tag and
  # ends before the closing one; the earliest such bridge is the best candidate.
  for m in _BRIDGE.finditer(s, head):
    return 1.0 if m.end() <= len(s) - tail else 0.0
  return 0.0


def _longest_ordered(positions: list[int | None]) -> int:
  """Length of the longest chain of present tags whose positions follow the tag order."""
  best = [0] * len(positions)
  for i, p in enumerate(positions):
    if p is None:
      continue
    best[i] = 1 + max((best[j] for j in range(i) if positions[j] is not None
                       and positions[j] < p), default=0)
  return max(best, default=0)


def format_partial(completion: str, example: Example | None = None) -> float:
  """0.25 per tag (<think>, </think>, <answer>, </answer>) appearing exactly once.

  Order is respected: credit goes to the longest run of such tags whose positions follow
  the template order (so "</think>...<think>" earns one of the two think tags, not both).
  """
  positions = [completion.find(t) if completion.count(t) == 1 else None for t in _TAGS]
  return 0.25 * _longest_ordered(positions)
