"""Math accuracy: the extracted answer checked against the reference with math-verify.

The core is exactly `math_verify.verify(parse(gold), parse(pred))` (gold first), both
sides wrapped as `\\boxed{...}` so that math-verify reads the whole answer as LaTeX. Its
timeouts (`signal.alarm`, main thread only) are disabled: the pool's parent-side
deadline bounds the time instead. Around that core:

* both sides are first put in `answer_forms.canonical` form (`3 3/4` -> 15/4, `3e8` ->
  3 x 10^8: notations latex2sympy misreads rather than refuses);
* a reference that does not parse, and none of whose `answer_forms` rewrites does
  (`0.\\overline{3}` does, as 1/3), raises `InvalidReference` (scored 0 and counted);
* a compound quantity (`5 hours and 30 minutes`) equals only the same number-unit pairs
  (`5 h 30 min`), never its first number;
* a plain decimal gold against an exact prediction follows one precision rule
  (`math_guards.decimal_gold_verdict`): its exact value, or with 6 or more decimals the
  exact value it rounds (0.333333 accepts 1/3, 0.33 does not);
* predictions that are too long, too deeply nested, or numerically explosive
  (`9^{9^{9^{9}}}`, `(10^{10})!`, `\\binom{10^{9}}{5}`, `(x+1)^{10^5}`: see
  `explosive.py`) are rejected on the text before sympy sees them (sympy evaluates
  factorials and binomials while parsing), and again on the parsed size;
* guards against known math-verify false positives, applied only when it says "equal":
  an equation collapsing to its right-hand side when the gold is a bare value (`6 = 5`
  for gold 5; `x = 5` stays accepted unless `equation_policy="strict"`), tiny or huge
  exact numbers compared with a 6-decimal absolute tolerance (1/2^99 "equals" 1/2^98),
  a rounded decimal against an exact value (0.142857 for 1/7, 3.141593 for pi) or two
  different decimals (1.0000002 for 1.0000001),
  and an unevaluated integral/limit/sum standing for its value;
* a few rescues, tried only when the plain comparison fails: a lead-in ("the answer /
  solution / result is", "we get", "so we find that", "this gives"),
  \\text{} wrappers, thousands separators written with spaces, degree signs and unit
  words after a number ("5 dollars"), numbers in words ("forty-two", also inside a
  sentence), and the `answer_forms` rewrites (repeating decimals, Unicode √ and π, an
  inequality for its interval, an absolute-value inequality for its union of intervals, a
  percentage with decimals for its number, a multiple-choice label with its value).

The checks around sympy live in `math_guards.py`, the rescues in `answer_rescues.py`.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any

from r1jax.rewards import answer_forms
from r1jax.rewards.answer_rescues import rescues, rewrites, words_to_number
from r1jax.rewards.base import Example, InvalidReference
from r1jax.rewards.explosive import is_explosive
from r1jax.rewards.extract import _strip_math_delims, extract_answer, last_boxed
from r1jax.rewards.math_guards import (decimal_gold_verdict, has_unevaluated, is_bomb,
                                       math_libs, nesting, plausible)

MAX_ANSWER_CHARS = 1000  # longer "answers" are not answers; parsing them costs seconds
MAX_NESTING = 12  # bracket depth; latex2sympy is super-linear in it
EQUATION_POLICIES = ("assignment", "strict")


def _wrap(s: str) -> str:
  return "\\boxed{" + s + "}"


@functools.lru_cache(maxsize=2048)
def _parse(s: str) -> tuple:
  math_verify, _, _ = math_libs()
  return tuple(math_verify.parse(_wrap(s), parsing_timeout=None))


def _first_expr(parsed: tuple) -> Any:
  _, sympy, _ = math_libs()
  for p in parsed:
    if isinstance(p, (sympy.Basic, sympy.MatrixBase)):
      return p
  return None


def gold_answer(example: Example) -> str:
  """The reference answer string of an example, cleaned ("#### 72" -> "72", \\boxed unwrapped).

  Raises InvalidReference if it is missing or math-verify cannot parse it.
  """
  raw = example.get("answer")
  if raw is None:
    raise InvalidReference("example has no 'answer'")
  gold = unicodedata.normalize("NFKC", str(raw)).strip()
  if "####" in gold:
    gold = gold.rsplit("####", 1)[1].strip()
  boxed = last_boxed(gold)
  if boxed is not None:
    gold = boxed
  gold = _strip_math_delims(gold)
  if not gold:
    raise InvalidReference(f"empty reference {raw!r}")
  if len(gold) > MAX_ANSWER_CHARS or is_explosive(gold):
    raise InvalidReference(f"reference too long or explosive to evaluate: {gold[:200]!r}")
  gold = answer_forms.canonical(gold)
  # A notation the parser cannot read may still have a readable rewrite (0.\overline{3}).
  if _first_expr(_parse(gold)) is None and not any(
      _first_expr(_parse(r)) is not None for r in rewrites(gold) if not is_explosive(r)):
    raise InvalidReference(f"reference does not parse: {gold[:200]!r}")
  return gold


def _verify_one(gold: str, pred: str, equation_policy: str) -> bool:
  math_verify, _, _ = math_libs()
  if len(pred) > MAX_ANSWER_CHARS or nesting(pred) > MAX_NESTING or is_explosive(pred):
    return False
  g, p = _parse(gold), _parse(pred)
  if not p or is_bomb(p):
    return False
  g0, p0 = _first_expr(g), _first_expr(p)
  if has_unevaluated(p0) and not has_unevaluated(g0):
    return False  # before verify: sympy would try to evaluate it, which can take minutes
  verdict = decimal_gold_verdict(gold, p0) if p0 is not None else None
  if verdict is not None:
    return verdict
  if not math_verify.verify(list(g), list(p), timeout_seconds=None):
    return False
  return plausible(g0, p0, equation_policy)


def answers_match(gold: str, pred: str, *, equation_policy: str = "assignment") -> bool:
  """Whether the predicted answer string equals the (cleaned) gold answer string."""
  if equation_policy not in EQUATION_POLICIES:
    raise ValueError(f"equation_policy={equation_policy!r}; expected one of {EQUATION_POLICIES}")
  if len(pred) > 4 * MAX_ANSWER_CHARS:  # also bounds the rescues' regex work
    return False
  pred = answer_forms.canonical(unicodedata.normalize("NFKC", pred).strip())
  if not pred:
    return False
  if pred == gold:
    return True
  compound = answer_forms.compound_quantity(gold), answer_forms.compound_quantity(pred)
  if compound != (None, None):  # "5 hours and 30 minutes" is not 5
    return compound[0] == compound[1]
  if _verify_one(gold, pred, equation_policy):
    return True
  golds = [gold]
  gold_words = words_to_number(gold)
  if gold_words is not None:
    golds.append(gold_words)
  golds += [g for g in rewrites(gold) if g not in golds and not is_explosive(g)]
  for g in golds:
    for candidate in ([pred] if g != gold else []) + rescues(pred):
      if candidate == g or _verify_one(g, candidate, equation_policy):
        return True
  return False


def accuracy(completion: str, example: Example, *, equation_policy: str = "assignment") -> float:
  """1.0 if the completion's final answer equals example["answer"] mathematically, else 0.0.

  Raises InvalidReference when the reference itself is unusable.
  """
  gold = gold_answer(example)
  pred = extract_answer(completion)
  if pred is None:
    return 0.0
  return 1.0 if answers_match(gold, pred, equation_policy=equation_policy) else 0.0


def warmup() -> None:
  """Import and exercise math-verify once (worker start-up, off the deadline clock)."""
  answers_match("\\frac{1}{2}", "0.5")
  answers_match("x=1", "1")
