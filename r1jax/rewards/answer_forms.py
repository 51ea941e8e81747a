"""Rewrites of answer notations latex2sympy does not read, into ones it does.

Each function maps an answer string to an equivalent string (or None when the notation
is absent); `accuracy` tries them only after the plain comparison failed, so they can
add matches but never change an answer that already parses. All are plain string work,
linear in the (already length-capped) answer.

* repeating decimals: `0.\\overline{3}` -> `\\frac{1}{3}`, `1.2\\overline{45}`;
* Unicode math: `√2`, `2√{3}`, `π`, `∞`, `≤`, `≥`, `−`, `×`, `·`;
* a one-variable inequality -> the interval it describes: `0 \\le x < 1` -> `[0, 1)`,
  `x > 2` -> `(2, \\infty)`;
* an absolute-value inequality -> the union of intervals it describes: `|x| > 3` ->
  `(-\\infty, -3) \\cup (3, \\infty)`, `|2x - 1| \\le 5` -> `[-2, 3]`;
* a multiple-choice answer -> its label and its value: `(B) 12` -> `B`, `12`;
* number words inside a sentence: `There are twelve apples` -> `12`;
* a percentage -> its bare number: `12.5\\%` -> `12.5` (math-verify reads `50\\%` as 50 or
  0.5 but not a percentage with decimals).

`compound_quantity` reads `5 hours and 30 minutes` as its number-unit pairs, so that such
an answer equals the same pairs (`5 h 30 min`) and never its first number.

`canonical` is different: it rewrites whole answers that latex2sympy misreads rather than
refuses (`3 3/4` is read as 3 * 3/4, `3e8` as 3 * e * 8), so it runs on both sides before
any comparison: a plain-text mixed number -> its fraction, e-notation -> `a\\times10^{b}`.
"""

from __future__ import annotations

import fractions
import re

_REPEATING = re.compile(r"(-?)(\d*)\.(\d*)\\overline\{(\d{1,30})\}")


def repeating_decimal(s: str) -> str | None:
  """`0.1\\overline{6}` -> `\\frac{1}{6}` (every occurrence); None if there is none."""
  def exact(m: re.Match) -> str:
    sign, whole, fixed, rep = m.groups()
    value = fractions.Fraction(int(whole or "0"))
    if fixed:
      value += fractions.Fraction(int(fixed), 10 ** len(fixed))
    value += fractions.Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
    value = -value if sign else value
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
  out, n = _REPEATING.subn(exact, s)
  return out if n else None


_UNICODE = {"π": "\\pi ", "∞": "\\infty ", "≤": "\\le ", "≥": "\\ge ", "−": "-", "×": "\\times ",
            "·": "\\cdot ", "⋅": "\\cdot ", "÷": "\\div ", "≠": "\\ne "}
_ROOT = re.compile(r"√\s*(\{[^{}]*\}|\([^()]*\)|\d+(?:\.\d+)?|\\?[A-Za-z]+)")


def unicode_math(s: str) -> str | None:
  """`2√3` -> `2\\sqrt{3}`, `√(x+1)` -> `\\sqrt{x+1}`, `π` -> `\\pi`; None if nothing changed."""
  if not any(c in s for c in "√" + "".join(_UNICODE)):
    return None
  out = s
  for ch, tex in _UNICODE.items():
    out = out.replace(ch, tex)

  def root(m: re.Match) -> str:
    arg = m.group(1)
    if arg[0] in "{(":
      arg = arg[1:-1]
    return "\\sqrt{" + arg + "}"
  out = _ROOT.sub(root, out)
  return out.strip() if out != s else None


_REL = r"(<=|>=|<|>|\\leq|\\geq|\\le|\\ge|\\lt|\\gt|≤|≥)"
_SIDE = r"([^<>=≤≥\\]*(?:\\(?!le|ge|lt|gt)[A-Za-z]+[^<>=≤≥\\]*)*)"
_CHAIN = re.compile(r"^\s*" + _SIDE + _REL + r"\s*([A-Za-z])\s*" + _REL + _SIDE + r"\s*$")
_ONE = re.compile(r"^\s*([A-Za-z])\s*" + _REL + _SIDE + r"\s*$")
_ONE_REV = re.compile(r"^\s*" + _SIDE + _REL + r"\s*([A-Za-z])\s*$")


def _direction(rel: str) -> tuple[bool, bool]:
  """(is a less-than, is strict)."""
  less = rel in ("<", "<=", "\\le", "\\leq", "\\lt", "≤")
  return less, rel in ("<", ">", "\\lt", "\\gt")


def inequality_interval(s: str) -> str | None:
  """The interval a one-variable inequality describes: `0 \\le x < 1` -> `[0, 1)`."""
  if len(s) > 200:
    return None
  m = _CHAIN.match(s)
  if m:
    lo, r1, _, r2, hi = (g.strip() for g in m.groups())
    (less1, strict1), (less2, strict2) = _direction(r1), _direction(r2)
    if not (lo and hi) or less1 != less2:
      return None
    if not less1:  # 1 > x >= 0: read right to left
      lo, hi, strict1, strict2 = hi, lo, strict2, strict1
    return ("(" if strict1 else "[") + f"{lo}, {hi}" + (")" if strict2 else "]")
  m = _ONE.match(s)
  if m:
    _, rel, bound = (g.strip() for g in m.groups())
    less, strict = _direction(rel)
  else:
    m = _ONE_REV.match(s)
    if not m:
      return None
    bound, rel, _ = (g.strip() for g in m.groups())
    less, strict = _direction(rel)
    less = not less  # 2 < x is x > 2
  if not bound:
    return None
  if less:
    return f"(-\\infty, {bound}" + (")" if strict else "]")
  return ("(" if strict else "[") + f"{bound}, \\infty)"


_CHOICE = re.compile(r"^\s*(?:\\text(?:bf)?\{\s*)?\(?([A-Ea-e])\)(?:\s*\})?[\s:.]*(.*)$|"
                     r"^\s*(?:\\text(?:bf)?\{\s*)?([A-E])(?:\s*\})?\s*[:.]\s*(.+)$")


def choice_parts(s: str) -> list[str]:
  """`(B) 12`, `B) 12`, `\\text{(B) } 12`, `B: 12` -> [`B`, `12`]; [] if not a choice."""
  m = _CHOICE.match(s)
  if not m:
    return []
  label, value = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
  value = value.strip().strip("$").strip()
  return [label.upper()] + ([value] if value else [])


_NUMBER_WORDS = frozenset(
  "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
  "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
  "eighty ninety hundred thousand million billion minus negative".split())
_WORD = re.compile(r"[A-Za-z]+")


def number_words_run(s: str) -> str | None:
  """The one run of number words in a sentence (`There are twenty-one apples` ->
  `twenty-one`); None if there is no run, several, or the sentence has digits."""
  if len(s) > 300 or any(c.isdigit() for c in s):
    return None
  runs: list[list[str]] = [[]]
  last_end = 0
  for m in _WORD.finditer(s):
    w = m.group().lower()
    adjacent = s[last_end:m.start()].strip(" -") == ""
    last_end = m.end()
    current = runs[-1]
    after_scale = current and current[-1] in ("hundred", "thousand", "million", "billion")
    if current and adjacent and ((w == "and" and after_scale) or (
        w in _NUMBER_WORDS and w not in ("minus", "negative"))):
      current.append(w)  # "forty-two", "one hundred and five"
    elif w in _NUMBER_WORDS:
      runs.append([w])
    elif current:
      runs.append([])
  runs = [r[:len(r) - (r[-1] == "and")] for r in runs if r]
  runs = [r for r in runs if r and r[-1] not in ("minus", "negative")]
  return " ".join(runs[0]) if len(runs) == 1 else None


_MIXED = re.compile(r"^\s*([-+]?)(\d{1,12})(?:\s+(\d{1,12})\s*/\s*(\d{1,12})|"
                    r"\s*\\[dt]?frac\s*\{(\d{1,12})\}\s*\{(\d{1,12})\})\s*$")
# Exponents up to 3 digits: physical constants need no more, and 10^{999999} costs sympy a
# second to build.
_E_NOTATION = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))[eE]([-+]?\d{1,3})\s*$")


def mixed_number(s: str) -> str | None:
  """`3 3/4` (or `3\\frac{3}{4}`) -> `\\frac{15}{4}`: a whole number, then a proper
  fraction; else None."""
  m = _MIXED.match(s)
  if not m:
    return None
  sign, whole = m.group(1), m.group(2)
  num, den = (m.group(3), m.group(4)) if m.group(3) else (m.group(5), m.group(6))
  if not 0 < int(num) < int(den):
    return None
  top = int(whole) * int(den) + int(num)
  return ("-" if sign == "-" else "") + f"\\frac{{{top}}}{{{int(den)}}}"


def e_notation(s: str) -> str | None:
  """`6.02E23` -> `6.02\\times10^{23}`; else None."""
  m = _E_NOTATION.match(s)
  return f"{m.group(1)}\\times10^{{{int(m.group(2))}}}" if m else None


def canonical(s: str) -> str:
  """s with a plain-text mixed number or e-notation rewritten (`mixed_number`,
  `e_notation`); any other answer unchanged."""
  for f in (mixed_number, e_notation):
    r = f(s)
    if r is not None:
      return r
  return s


_PERCENT = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*\\?%\s*$")


def percent_number(s: str) -> str | None:
  """`12.5\\%` -> `12.5`; None unless s is one number with a percent sign."""
  m = _PERCENT.match(s)
  return m.group(1) if m else None


_ABS_NUM = r"(\d+(?:\.\d+)?(?:/\d+)?|\\frac\{\d+\}\{\d+\})"
_ABS_REL = r"(<=|>=|<|>|\\leq|\\geq|\\le|\\ge|\\lt|\\gt)"
_ABS_BAR_L = r"(?:\\left\s*\||\\lvert|\|)"
_ABS_BAR_R = r"(?:\\right\s*\||\\rvert|\|)"
_ABS = re.compile(r"^\s*" + _ABS_BAR_L + r"\s*(-?)\s*" + _ABS_NUM + r"?\s*[A-Za-z]\s*(?:([-+])\s*"
                  + _ABS_NUM + r")?\s*" + _ABS_BAR_R + r"\s*" + _ABS_REL + r"\s*" + _ABS_NUM
                  + r"\s*$")


def _fraction(text: str) -> fractions.Fraction:
  m = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", text)
  return fractions.Fraction(int(m.group(1)), int(m.group(2))) if m else fractions.Fraction(text)


def _tex(q: fractions.Fraction) -> str:
  if q.denominator == 1:
    return str(q.numerator)
  return ("-" if q < 0 else "") + f"\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"


def abs_inequality(s: str) -> str | None:
  """The union of intervals `|c x + d| REL b` describes (b > 0): `|x - 3| < 2` -> `(1, 5)`,
  `|x| \\ge 3` -> `(-\\infty, -3] \\cup [3, \\infty)`; None for anything else."""
  if len(s) > 200:
    return None
  m = _ABS.match(s)
  if not m:
    return None
  neg, coef, sign, shift, rel, bound = m.groups()
  try:
    c = (_fraction(coef) if coef else fractions.Fraction(1)) * (-1 if neg else 1)
    d = (_fraction(shift) if shift else fractions.Fraction(0)) * (-1 if sign == "-" else 1)
    b = _fraction(bound)
  except (ValueError, ZeroDivisionError):
    return None
  if c == 0 or b <= 0:
    return None
  lo, hi = sorted(((-b - d) / c, (b - d) / c))
  less, strict = _direction(rel)
  if less:
    return ("(" if strict else "[") + f"{_tex(lo)}, {_tex(hi)}" + (")" if strict else "]")
  left = f"(-\\infty, {_tex(lo)}" + (")" if strict else "]")
  right = ("(" if strict else "[") + f"{_tex(hi)}, \\infty)"
  return f"{left} \\cup {right}"


_UNIT_NAMES = {
  "hours": ("hours", "hour", "hrs", "hr", "h"), "minutes": ("minutes", "minute", "mins", "min"),
  "seconds": ("seconds", "second", "secs", "sec", "s"), "days": ("days", "day"),
  "weeks": ("weeks", "week"), "months": ("months", "month"), "years": ("years", "year"),
  "feet": ("feet", "foot", "ft"), "inches": ("inches", "inch", "in"),
  "yards": ("yards", "yard", "yd"), "miles": ("miles", "mile", "mi"),
  "meters": ("meters", "meter", "metres", "metre", "m"),
  "centimeters": ("centimeters", "centimeter", "cm"), "kilometers": ("kilometers", "km"),
  "pounds": ("pounds", "pound", "lbs", "lb"), "ounces": ("ounces", "ounce", "oz"),
  "kilograms": ("kilograms", "kg"), "grams": ("grams", "gram", "g"),
  "dollars": ("dollars", "dollar"), "cents": ("cents", "cent"),
}
_UNIT_OF = {alias: name for name, aliases in _UNIT_NAMES.items() for alias in aliases}
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)\s*(" + "|".join(sorted(_UNIT_OF, key=len, reverse=True))
                       + r")\b\.?", re.IGNORECASE)
_JOINER = re.compile(r"^\s*(?:,|and|,\s*and)?\s*$", re.IGNORECASE)
_TEXT_WRAP = re.compile(r"\\(?:text|textrm|mathrm|mbox)\s*\{([^{}]*)\}")


def compound_quantity(s: str) -> tuple[tuple[fractions.Fraction, str], ...] | None:
  """`5 hours and 30 minutes`, `5\\text{ h } 30\\text{ min}` -> ((5, hours), (30, minutes)):
  two or more number-unit pairs and nothing else; None for anything else (one quantity
  included)."""
  if len(s) > 200:
    return None
  text = _TEXT_WRAP.sub(lambda m: " " + m.group(1) + " ", s).replace("\\ ", " ").replace("~", " ")
  pairs, end = [], 0
  for m in _QUANTITY.finditer(text):
    if not _JOINER.match(text[end:m.start()]):
      return None
    pairs.append((fractions.Fraction(m.group(1)), _UNIT_OF[m.group(2).lower()]))
    end = m.end()
  if len(pairs) < 2 or text[end:].strip(" .$"):
    return None
  return tuple(pairs)
