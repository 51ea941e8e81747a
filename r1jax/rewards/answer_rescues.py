"""Rescues of a predicted answer, tried only when the plain comparison fails.

`rescues(pred)`: the prediction without a lead-in ("the answer is", "we get", "this
gives"), without \\text{} wrappers, thousands separators written with spaces, degree signs
and unit words after a number, as a number when written in words, and its `rewrites`.
`rewrites(s)`: the `answer_forms` rewrites of an answer (repeating decimals, Unicode √ and
π, inequality -> interval, absolute-value inequality -> union of intervals, percentage ->
number, multiple-choice label and value, number words in a sentence); also applied to the
gold answer. `words_to_number`: "forty-two" -> "42".
"""

from __future__ import annotations

import re

from r1jax.rewards import answer_forms
from r1jax.rewards.extract import _UNIT_RE, _strip_math_delims, _unwrap_commands

_LEAD = re.compile(r"^\s*(?:(?:the\s+)?(?:final\s+)?(?:answer|solution|result|value)\s*(?:is|:)\s*:?|"
                   r"(?:so\s+|thus\s+|hence\s+|therefore\s+)?(?:we|i)\s+(?:get|have|find|obtain)(?:\s+that)?\s*:?|"
                   r"(?:this|which|that)\s+gives\s*:?|therefore,?|thus,?|hence,?|so,?)\s*",
                   re.IGNORECASE)
_DIGIT_GROUPS = re.compile(r"(?<=\d)(?:\s|\\,|\\ |\\;|\\!|~)+(?=\d{3}(?!\d))")
_TEXT_LIKE = ("\\text", "\\textbf", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox")
_ONES = {w: i for i, w in enumerate(
  "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
  "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate(
  "twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}


def words_to_number(s: str) -> str | None:
  """'forty-two' -> '42', 'minus three' -> '-3', 'one hundred and five' -> '105'; else None."""
  words = re.sub(r"[-,]", " ", s.lower().strip().rstrip(".")).split()
  # "and" only inside a number ("one hundred and five"), not between two ("one and two").
  if any(w == "and" and (i == 0 or words[i - 1] not in _SCALES) for i, w in enumerate(words)):
    return None
  words = [w for w in words if w != "and"]
  if not words or len(words) > 12:
    return None
  sign = 1
  if words[0] in ("minus", "negative"):
    sign, words = -1, words[1:]
  total, current, seen = 0, 0, False
  for w in words:
    low = current % 100
    if w in _ONES:
      if low and (low < 20 or low % 10):  # "one two", "twenty one two": not one number
        return None
      current += _ONES[w]
    elif w in _TENS:
      if low:
        return None
      current += _TENS[w]
    elif w == "hundred":
      current = max(current, 1) * 100
    elif w in _SCALES:
      total += max(current, 1) * _SCALES[w]
      current = 0
    else:
      return None
    seen = True
  return str(sign * (total + current)) if seen else None


def rewrites(s: str) -> list[str]:
  """`answer_forms` rewrites of s: repeating decimals, Unicode, inequality -> interval,
  absolute-value inequality -> union of intervals, percentage -> number, multiple-choice
  label and value, number words in a sentence."""
  out = []
  for f in (answer_forms.repeating_decimal, answer_forms.unicode_math):
    r = f(s)
    if r is not None:
      out.append(r)
      s = r
  for f in (answer_forms.inequality_interval, answer_forms.abs_inequality,
            answer_forms.percent_number):
    r = f(s)
    if r is not None:
      out.append(r)
  out += answer_forms.choice_parts(s)
  run = answer_forms.number_words_run(s)
  words = words_to_number(run) if run else None
  if words is not None:
    out.append(words)
  return out


def rescues(pred: str) -> list[str]:
  out = []
  s = _strip_math_delims(_LEAD.sub("", pred, count=1))
  out.append(s)
  s = _strip_math_delims(_unwrap_commands(s, _TEXT_LIKE))
  out.append(s)
  s = _DIGIT_GROUPS.sub("", s)
  out.append(s)
  for degree in ("^{\\circ}", "^\\circ", "\\circ", "\u00b0"):
    s = s.replace(degree, "")
  s = _UNIT_RE.sub("", s).strip()
  out.append(s)
  words = words_to_number(s)
  if words is not None:
    out.append(words)
  out += rewrites(out[0])
  seen = {pred}
  return [c for c in out if c and not (c in seen or seen.add(c))]

