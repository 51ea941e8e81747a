"""Sympy-side checks around math-verify, for `accuracy.answers_match`.

* `math_libs()`: math-verify and the sympy names the checks need, imported on first use
  (with math-verify's "timeout is disabled" warning dropped: that is deliberate);
* cheap rejections before sympy evaluates anything: bracket `nesting` of the text, and
  `is_bomb` on the parsed size (an exact number too large to build);
* `decimal_gold_verdict`: the precision rule for a plain decimal gold against an exact
  prediction;
* `plausible`: False where math-verify's "equal" is one of its known false positives (an
  equation collapsing to its right-hand side, tiny/huge numbers under an absolute 6-decimal
  tolerance, a rounded decimal for an exact value, an unevaluated integral/limit/sum).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from typing import Any

_MAX_NODES = 3000
_MAX_DIGITS = 100_000  # log10 of the largest exact number sympy may be asked to build
_MAX_EXPONENT_LOG10 = 6
_MAX_FACTORIAL_ARG = 20_000


class _DropTimeoutWarning(logging.Filter):
  """math-verify warns once that its timeout is off; that is deliberate here."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Timeout is disabled" not in record.getMessage()


@functools.cache
def math_libs():
  """math_verify and the sympy names the guards need, imported on first use."""
  import math_verify
  import sympy
  from latex2sympy2_extended import is_expr_of_only_symbols
  for name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(name).addFilter(_DropTimeoutWarning())
  return math_verify, sympy, is_expr_of_only_symbols


# ---------------------------------------------------------------------------------------
# Cheap rejections before sympy.

def nesting(s: str) -> int:
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
  _, sympy, _ = math_libs()
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


def is_bomb(parsed: tuple) -> bool:
  _, sympy, _ = math_libs()
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
  _, sympy, _ = math_libs()
  if isinstance(e, sympy.Eq):
    return True
  return isinstance(e, sympy.And) and bool(e.args) and all(
    isinstance(a, sympy.Eq) for a in _relations(e))


def _values(e: Any) -> list:
  """Numeric readings of a scalar: itself, and for "50%" also 50 (math-verify's rule)."""
  _, sympy, _ = math_libs()
  out = [e.doit()]
  if (isinstance(e, sympy.Mul) and len(e.args) == 2
      and e.args[1] == sympy.UnevaluatedExpr(sympy.Rational(1, 100))):
    out.append(e.args[0])
  return out


def _rel_close(a: Any, b: Any, rel: float) -> bool | None:
  """|a-b| <= rel*max(|a|,|b|) at 30 digits; None when not numerically comparable."""
  _, sympy, _ = math_libs()
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
  _, sympy, _ = math_libs()
  try:
    return float(max(abs(sympy.N(a, 30)), abs(sympy.N(b, 30))))
  except Exception:
    return None


def _is_scalar_number(e: Any) -> bool:
  _, sympy, _ = math_libs()
  return (isinstance(e, sympy.Expr) and not isinstance(e, sympy.MatrixBase)
          and not e.free_symbols)


def _exact(e: Any) -> Any:
  """A written decimal as the exact number it writes (0.142857 -> 142857/10^6)."""
  _, sympy, _ = math_libs()
  floats = e.atoms(sympy.Float)
  return e.xreplace({f: sympy.Rational(str(f)) for f in floats}) if floats else e


def _is_decimal(e: Any) -> bool:
  _, sympy, _ = math_libs()
  return isinstance(e, sympy.Float) or (isinstance(e, sympy.Mul) and len(e.args) == 2
                                        and e.args[0] == -1 and isinstance(e.args[1], sympy.Float))


_PLAIN_DECIMAL = re.compile(r"-?\d*\.(\d+)")
ROUNDED_GOLD_MIN_DECIMALS = 6


def decimal_gold_verdict(gold: str, pred: Any) -> bool | None:
  """A plain decimal gold (`0.33`, `3.141593`) against an exact number (no decimal in it).

  The rule: the prediction must be the gold's exact value, or, when the gold is written
  with d >= 6 decimal places, round to it (|pred - gold| <= 10^-d / 2). A reference given
  to 6 or more places stands for the exact value it rounds (0.333333 accepts 1/3 and
  3.141593 accepts pi); one rounded more coarsely names its own number (0.33 rejects 1/3,
  3.14 rejects pi): accepting 1/3 for 0.33 would accept every exact value within 0.005.
  None when the rule does not apply (gold not a plain decimal, pred not an exact number).
  """
  _, sympy, _ = math_libs()
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
  `decimal_gold_verdict` decides it (a gold with 6 or more decimals accepts the exact
  value it rounds, a coarser one only its own value: gold 0.33 rejects 1/3). Other
  inexact golds (`6.02\\times10^{23}`) keep math-verify's rounding, made relative for
  numbers below 0.01.
  """
  _, sympy, _ = math_libs()
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
  _, sympy, only_symbols = math_libs()
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


def has_unevaluated(e: Any) -> bool:
  _, sympy, _ = math_libs()
  return isinstance(e, sympy.Basic) and e.has(*(getattr(sympy, n) for n in _UNEVALUATED))


def plausible(gold: Any, pred: Any, equation_policy: str) -> bool:
  """False where math-verify's "equal" is one of its known false positives."""
  if gold is None or pred is None:
    return True
  if has_unevaluated(pred) and not has_unevaluated(gold):
    return False
  if _is_equation(pred) and not _is_equation(gold):
    if equation_policy == "strict" or not _honest_equation(pred):
      return False
  return _numbers_agree(gold, pred)

