"""Format rewards: the strict R1-Zero template check and a partial-credit variant.

`format_strict` accepts exactly one `<think>` block followed by exactly one `<answer>`
block: the text matches `FORMAT_PATTERN` (DOTALL) *and* holds each of the four tags
exactly once. A second, nested or stray tag of either kind (`<answer>1</answer><answer>2
</answer>`, `<think><think>`, `</think>` inside the thought) scores 0: those are reward-hacking
routes (two answers, one of which the accuracy extractor might pick). Tag look-alikes
(`<Answer>`, `< /think >`, `<answer/>`) count as tags too, so they cannot hide a second
block either.

Linear time by construction: one scan with a regex whose quantifiers are all bounded
(`\\s{0,8}`), so each start position costs O(1) and nothing backtracks across the text;
the lazy `.*?` of FORMAT_PATTERN itself is never run. (`$` also matches before one final
newline, so "...</answer>\\n" passes, as with the regex.)
"""

from __future__ import annotations

import re

from r1jax.rewards.base import Example

FORMAT_PATTERN = r"^<think>.*?</think>\s*<answer>.*?</answer>$"
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# Anything that reads as one of the tags: any case, spaces inside, a self-closing slash.
_TAG_LIKE = re.compile(r"<\s{0,8}/?\s{0,8}(?:think|answer)\s{0,8}/?\s{0,8}>", re.IGNORECASE)


def format_strict(completion: str, example: Example | None = None) -> float:
  """1.0 for exactly `<think>...</think>` `\\s*` `<answer>...</answer>` (each tag once), else 0."""
  s = completion[:-1] if completion.endswith("\n") else completion
  tags = []
  for m in _TAG_LIKE.finditer(s):
    tags.append(m)
    if len(tags) > len(_TAGS):
      return 0.0
  if tuple(m.group() for m in tags) != _TAGS:
    return 0.0
  think, end_think, answer, end_answer = tags
  ok = (think.start() == 0 and end_answer.end() == len(s)
        and not s[end_think.end():answer.start()].strip())
  return 1.0 if ok else 0.0


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
