"""A string-level screen for answers whose evaluation explodes, run before sympy sees them.

sympy evaluates some constructs as soon as they are built: `factorial(10**6)`,
`gamma(10**9)`, `binomial(10**10, 5*10**9)`, `2**(10**9)` are computed while math-verify
*parses* the answer, in C code or long pure-Python loops that no deadline in the same
process can interrupt; `(x + 1)**5000` is harmless to build but `simplify` expands it.
So the dangerous shapes are refused on the LaTeX text itself, conservatively (a real
final answer is never one of them):

* a factorial (`n!`, multifactorials `n!!`), `\\Gamma(...)`, or a binomial
  (`\\binom{a}{b}`, `{a \\choose b}`) whose argument is a number above `MAX_COMBINATORIAL`
  or holds a power, a factorial or a binomial itself;
* an exponent (`^`, `**`, `\\exp(...)`) above `MAX_EXPONENT`, or one that itself holds a
  power, a factorial or a binomial, or is followed by another `^` (towers: `2**2**2**2`);
* a power of a parenthesized expression with a letter in it (a polynomial to expand) with
  an exponent above `MAX_EXPANSION`.

Cheap: one scan for the operators, each operand found by bracket matching; the caller
caps the text at `accuracy.MAX_ANSWER_CHARS`, so even the worst case is microseconds.
"""

from __future__ import annotations

import math
import re

MAX_COMBINATORIAL = 5_000  # 5000! has 16,326 digits: sympy builds it in milliseconds
MAX_EXPONENT = 10_000
MAX_EXPANSION = 64

_NUMBER = re.compile(r"\d+(?:\.\d*)?")
_NESTED = re.compile(r"\^|\*\*|!|\\binom|\\dbinom|\\tbinom|\\choose|\\exp|\\Gamma")
_CLOSE = {"{": "}", "(": ")", "[": "]"}
_OPEN = {v: k for k, v in _CLOSE.items()}


def _group_after(s: str, i: int) -> tuple[str, int]:
  """The operand starting at s[i] (after spaces): a bracketed group, a number, or one
  character; returns (text, index after it)."""
  while i < len(s) and s[i] == " ":
    i += 1
  if i >= len(s):
    return "", i
  if s[i] in _CLOSE:
    depth, j = 0, i
    while j < len(s):
      if s[j] in _CLOSE:
        depth += 1
      elif s[j] in _OPEN:
        depth -= 1
        if depth == 0:
          return s[i + 1:j], j + 1
      j += 1
    return s[i + 1:], len(s)
  m = _NUMBER.match(s, i)
  if m:
    return m.group(), m.end()
  if s[i] == "\\":  # a command: \pi, \infty
    j = i + 1
    while j < len(s) and s[j].isalpha():
      j += 1
    return s[i:j], j
  return s[i], i + 1


def _group_before(s: str, j: int) -> tuple[str, int]:
  """The operand ending at s[j] (inclusive): a bracketed group, a number, or one character;
  returns (text, start index)."""
  if j < 0:
    return "", 0
  if s[j] in _OPEN:
    depth, k = 0, j
    while k >= 0:
      if s[k] in _OPEN:
        depth += 1
      elif s[k] in _CLOSE:
        depth -= 1
        if depth == 0:
          return s[k + 1:j], k
      k -= 1
    return s[:j], 0
  k = j
  while k >= 0 and (s[k].isdigit() or s[k] == "."):
    k -= 1
  return (s[k + 1:j + 1], k + 1) if k < j else (s[j], j)


def _factorial_too_big(s: str, start: int, bangs: int) -> bool:
  """`operand!!..!` ending before s[start]: latex2sympy reads `n!!` as (n!)! and `a^{b}!`
  as (a^b)!, so the operand is followed back over a power and iterated `bangs` times."""
  j = start - 1
  while j >= 0 and s[j] == " ":
    j -= 1
  operand, k = _group_before(s, j)
  if s[k - 1:k] == "^" or s[k - 2:k] == "^ ":
    return True  # a^{b}! is (a^b)!: a power inside a factorial
  if _too_big(operand, MAX_COMBINATORIAL):
    return True
  numbers = [float(x) for x in _NUMBER.findall(operand)]
  value = max(numbers, default=0.0)
  for _ in range(bangs - 1):
    if value > 7:  # 7! = 5040 is the largest operand of a further factorial allowed
      return True
    value = float(math.factorial(int(value)))
  return value > MAX_COMBINATORIAL


def _too_big(operand: str, limit: int) -> bool:
  """True if the operand holds a nested power/factorial/binomial or a number above limit."""
  if _NESTED.search(operand):
    return True
  for m in _NUMBER.finditer(operand):
    if float(m.group()) > limit:
      return True
  return False


def _is_expansion(base: str, exponent: str) -> bool:
  return (any(c.isalpha() for c in base) and any(op in base for op in "+-")
          and _too_big(exponent, MAX_EXPANSION))


def is_explosive(s: str) -> bool:
  """Whether evaluating (or expanding) the LaTeX answer `s` could take unbounded time."""
  s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
  s = s.replace("\\exp", "e^").replace("**", "^")
  for m in re.finditer(r"\\Gamma|\\(?:d|t)?binom|\^|!+", s):
    op = m.group()
    if op[0] == "!":
      if s.startswith("=", m.end()) and len(op) == 1:
        continue  # "!="
      if _factorial_too_big(s, m.start(), len(op)):
        return True
    elif op == "^":
      exponent, end = _group_after(s, m.end())
      if _too_big(exponent, MAX_EXPONENT) or s[end:end + 2].lstrip().startswith("^"):
        return True
      if s[m.start() - 1:m.start()] in (")", "}", "]") and _is_expansion(
          _group_before(s, m.start() - 1)[0], exponent):
        return True
    else:  # \Gamma(x), \binom{a}{b}
      first, j = _group_after(s, m.end())
      args = [first] + ([_group_after(s, j)[0]] if op != "\\Gamma" else [])
      if any(_too_big(a, MAX_COMBINATORIAL) for a in args):
        return True
  for m in re.finditer(r"\\choose", s):  # {a \choose b}: the numbers around it
    if _too_big(s[max(0, m.start() - 40):m.end() + 40].replace("\\choose", ""),
                MAX_COMBINATORIAL):
      return True
  return False
