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
  (`_decimal_gold_verdict`): its exact value, or with 6 or more decimals the exact value
  it rounds (0.333333 accepts 1/3, 0.33 does not);
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
"""

from __future__ import annotations

import functools
import logging
import math
import re
import unicodedata
from typing import Any

from r1jax.rewards import answer_forms
from r1jax.rewards.base import Example, InvalidReference
from r1jax.rewards.explosive import is_explosive
from r1jax.rewards.extract import (_UNIT_RE, _strip_math_delims, _unwrap_commands, extract_answer,
                                   last_boxed)

MAX_ANSWER_CHARS = 1000  # longer "answers" are not answers; parsing them costs seconds
MAX_NESTING = 12  # bracket depth; latex2sympy is super-linear in it
_MAX_NODES = 3000
_MAX_DIGITS = 100_000  # log10 of the largest exact number sympy may be asked to build
_MAX_EXPONENT_LOG10 = 6
_MAX_FACTORIAL_ARG = 20_000
EQUATION_POLICIES = ("assignment", "strict")


class _DropTimeoutWarning(logging.Filter):
  """math-verify warns once that its timeout is off; that is deliberate here."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Timeout is disabled" not in record.getMessage()


@functools.cache
def _mv():
  """math_verify and the sympy names the guards need, imported on first use."""
  import math_verify
  import sympy
  from latex2sympy2_extended import is_expr_of_only_symbols
  for name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(name).addFilter(_DropTimeoutWarning())
  return math_verify, sympy, is_expr_of_only_symbols


def _wrap(s: str) -> str:
  return "\\boxed{" + s + "}"


@functools.lru_cache(maxsize=2048)
def _parse(s: str) -> tuple:
  math_verify, _, _ = _mv()
  return tuple(math_verify.parse(_wrap(s), parsing_timeout=None))


def _first_expr(parsed: tuple) -> Any:
  _, sympy, _ = _mv()
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
      _first_expr(_parse(r)) is not None for r in _rewrites(gold) if not is_explosive(r)):
    raise InvalidReference(f"reference does not parse: {gold[:200]!r}")
  return gold


# ---------------------------------------------------------------------------------------
# Cheap rejections before sympy.

def _nesting(s: str) -> int:
  depth = best = 0
  for c in s:
    if c in "{([":
      depth += 1
      best = max(best, depth)
    elif c in "})]":
      depth = max(depth - 1, 0)
  return best


def _log10_size(e: Any, budget: list[int]) -> float:
  """Rough log10 of the size of the exact number `e` builds (inf: too big to build)."""
  _, sympy, _ = _mv()
  budget[0] -= 1
  if budget[0] < 0:
    return math.inf
  if isinstance(e, sympy.Integer):
    return abs(int(e)).bit_length() * 0.30103
  if isinstance(e, sympy.Rational):
    return max(abs(e.p).bit_length(), e.q.bit_length()) * 0.30103
  if isinstance(e, sympy.Float):
    return 20.0
  if isinstance(e, sympy.Pow):
    base = _log10_size(e.base, budget)
    exp = _log10_size(e.exp, budget)
    if exp > _MAX_EXPONENT_LOG10:
      # Huge powers of 0, 1, -1 and of symbols are harmless only in theory; refuse all.
      return math.inf
    if e.exp.free_symbols:
      return base
    try:
      x = abs(float(sympy.N(e.exp, 15)))
    except (TypeError, ValueError):
      return base
    return max(base, 1.0) * max(x, 1.0)
  if isinstance(e, sympy.factorial):
    arg = e.args[0]
    if arg.free_symbols:
      return _log10_size(arg, budget)
    try:
      n = abs(float(sympy.N(arg, 15)))
    except (TypeError, ValueError):
      return math.inf
    return math.inf if n > _MAX_FACTORIAL_ARG else n * math.log10(max(n, 2.0))
  if not getattr(e, "args", ()):
    return 1.0
  sizes = [_log10_size(a, budget) for a in e.args]
  return sum(sizes) if isinstance(e, sympy.Mul) else max(sizes)


def _is_bomb(parsed: tuple) -> bool:
  _, sympy, _ = _mv()
  for p in parsed:
    if isinstance(p, (sympy.Basic, sympy.MatrixBase)):
      if _log10_size(p, [_MAX_NODES]) > _MAX_DIGITS:
        return True
  return False


# ---------------------------------------------------------------------------------------
# Guards against math-verify false positives (applied when it says "equal").

def _relations(e: Any) -> list:
  return list(getattr(e, "_unsorted_args", e.args))


def _is_equation(e: Any) -> bool:
  _, sympy, _ = _mv()
  if isinstance(e, sympy.Eq):
    return True
  return isinstance(e, sympy.And) and bool(e.args) and all(
    isinstance(a, sympy.Eq) for a in _relations(e))


def _values(e: Any) -> list:
  """Numeric readings of a scalar: itself, and for "50%" also 50 (math-verify's rule)."""
  _, sympy, _ = _mv()
  out = [e.doit()]
  if (isinstance(e, sympy.Mul) and len(e.args) == 2
      and e.args[1] == sympy.UnevaluatedExpr(sympy.Rational(1, 100))):
    out.append(e.args[0])
  return out


def _rel_close(a: Any, b: Any, rel: float) -> bool | None:
  """|a-b| <= rel*max(|a|,|b|) at 30 digits; None when not numerically comparable."""
  _, sympy, _ = _mv()
  try:
    va, vb = sympy.N(a, 30), sympy.N(b, 30)
    if not all(v.is_number and v.is_finite is True for v in (va, vb)):
      return None
    scale = max(abs(va), abs(vb))
    if scale == 0:
      return True
    return bool(abs(sympy.N(va - vb, 30)) <= rel * scale)
  except Exception:  # sympy raises many types on exotic input
    return None


def _magnitude(a: Any, b: Any) -> float | None:
  _, sympy, _ = _mv()
  try:
    return float(max(abs(sympy.N(a, 30)), abs(sympy.N(b, 30))))
  except Exception:
    return None


def _is_scalar_number(e: Any) -> bool:
  _, sympy, _ = _mv()
  return (isinstance(e, sympy.Expr) and not isinstance(e, sympy.MatrixBase)
          and not e.free_symbols)


def _exact(e: Any) -> Any:
  """A written decimal as the exact number it writes (0.142857 -> 142857/10^6)."""
  _, sympy, _ = _mv()
  floats = e.atoms(sympy.Float)
  return e.xreplace({f: sympy.Rational(str(f)) for f in floats}) if floats else e


def _is_decimal(e: Any) -> bool:
  _, sympy, _ = _mv()
  return isinstance(e, sympy.Float) or (isinstance(e, sympy.Mul) and len(e.args) == 2
                                        and e.args[0] == -1 and isinstance(e.args[1], sympy.Float))


_PLAIN_DECIMAL = re.compile(r"-?\d*\.(\d+)")
ROUNDED_GOLD_MIN_DECIMALS = 6


def _decimal_gold_verdict(gold: str, pred: Any) -> bool | None:
  """A plain decimal gold (`0.33`, `3.141593`) against an exact number (no decimal in it).

  The rule: the prediction must be the gold's exact value, or, when the gold is written
  with d >= 6 decimal places, round to it (|pred - gold| <= 10^-d / 2). A reference given
  to 6 or more places stands for the exact value it rounds (0.333333 accepts 1/3 and
  3.141593 accepts pi); one rounded more coarsely names its own number (0.33 rejects 1/3,
  3.14 rejects pi): accepting 1/3 for 0.33 would accept every exact value within 0.005.
  None when the rule does not apply (gold not a plain decimal, pred not an exact number).
  """
  _, sympy, _ = _mv()
  m = _PLAIN_DECIMAL.fullmatch(gold)
  if m is None or not _is_scalar_number(pred) or pred.has(sympy.Float):
    return None
  decimals = len(m.group(1))
  try:
    diff = abs(sympy.N(pred - sympy.Rational(gold), 60))
    if not diff.is_number or diff.is_finite is not True:
      return None
    if decimals < ROUNDED_GOLD_MIN_DECIMALS:
      return bool(diff < sympy.Rational(1, 10**50))
    return bool(diff <= sympy.Rational(1, 2 * 10**decimals))
  except Exception:  # sympy raises many types on exotic input
    return None


def _numbers_agree(gold: Any, pred: Any) -> bool:
  """Reject math-verify's absolute 6-decimal / chopped equality of distinct numbers.

  A decimal in the prediction must be exactly the gold value when the gold is exact or
  itself a plain decimal: 0.142857 is not 1/7 and 3.141593 is not pi, however many digits
  (a grader does not accept a rounded value for an exact one), and 1.0000002 is not
  1.0000001. A plain decimal gold against an exact prediction never reaches this guard:
  `_decimal_gold_verdict` decides it (a gold with 6 or more decimals accepts the exact
  value it rounds, a coarser one only its own value: gold 0.33 rejects 1/3). Other
  inexact golds (`6.02\\times10^{23}`) keep math-verify's rounding, made relative for
  numbers below 0.01.
  """
  _, sympy, _ = _mv()
  if not (_is_scalar_number(gold) and _is_scalar_number(pred)):
    return True
  pairs = [(g, p) for g in _values(gold) for p in _values(pred)]
  if pred.has(sympy.Float) and (not gold.has(sympy.Float) or _is_decimal(gold)):
    return any(_rel_close(_exact(g), _exact(p), 1e-25) for g, p in pairs)
  inexact = gold.has(sympy.Float) or pred.has(sympy.Float)
  verdicts = []
  for g, p in pairs:
    if inexact:
      # Floats: math-verify rounds to 6 decimals, which is meaningless for tiny numbers.
      close = _rel_close(g, p, 1e-2)
      scale = _magnitude(g, p)
      verdicts.append(close is None or close or scale is None or scale >= 1e-2)
    else:
      close = _rel_close(g, p, 1e-12)
      verdicts.append(close is None or close)
  return any(verdicts)


def _honest_equation(pred: Any) -> bool:
  """`x = 5`, `AB = 5`, `x = 10/2 = 5`, `2 + 3 = 5`: every side after a variable agrees."""
  _, sympy, only_symbols = _mv()
  rels = [pred] if isinstance(pred, sympy.Eq) else _relations(pred)
  sides = []
  for i, r in enumerate(rels):
    if not (i == 0 and only_symbols(r.lhs)):
      sides.append(r.lhs)
    sides.append(r.rhs)
  last = sides[-1]
  for s in sides[:-1]:
    if s.free_symbols or last.free_symbols:
      try:
        if sympy.expand(s - last) != 0:
          return False
      except Exception:
        return False
    elif not _rel_close(s, last, 1e-9):
      return False
  return True


_UNEVALUATED = ("Integral", "Limit", "Sum", "Product", "Derivative")


def _has_unevaluated(e: Any) -> bool:
  _, sympy, _ = _mv()
  return isinstance(e, sympy.Basic) and e.has(*(getattr(sympy, n) for n in _UNEVALUATED))


def _plausible(gold: Any, pred: Any, equation_policy: str) -> bool:
  """False where math-verify's "equal" is one of its known false positives."""
  if gold is None or pred is None:
    return True
  if _has_unevaluated(pred) and not _has_unevaluated(gold):
    return False
  if _is_equation(pred) and not _is_equation(gold):
    if equation_policy == "strict" or not _honest_equation(pred):
      return False
  return _numbers_agree(gold, pred)


# ---------------------------------------------------------------------------------------
# Rescues (tried only when the plain comparison fails).

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


def _rewrites(s: str) -> list[str]:
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


def _rescues(pred: str) -> list[str]:
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
  out += _rewrites(out[0])
  seen = {pred}
  return [c for c in out if c and not (c in seen or seen.add(c))]


# ---------------------------------------------------------------------------------------

def _verify_one(gold: str, pred: str, equation_policy: str) -> bool:
  math_verify, _, _ = _mv()
  if len(pred) > MAX_ANSWER_CHARS or _nesting(pred) > MAX_NESTING or is_explosive(pred):
    return False
  g, p = _parse(gold), _parse(pred)
  if not p or _is_bomb(p):
    return False
  g0, p0 = _first_expr(g), _first_expr(p)
  if _has_unevaluated(p0) and not _has_unevaluated(g0):
    return False  # before verify: sympy would try to evaluate it, which can take minutes
  verdict = _decimal_gold_verdict(gold, p0) if p0 is not None else None
  if verdict is not None:
    return verdict
  if not math_verify.verify(list(g), list(p), timeout_seconds=None):
    return False
  return _plausible(g0, p0, equation_policy)


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
  golds += [g for g in _rewrites(gold) if g not in golds and not is_explosive(g)]
  for g in golds:
    for candidate in ([pred] if g != gold else []) + _rescues(pred):
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
