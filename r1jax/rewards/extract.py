"""Pulling parts out of a completion: final answer, chain of thought, code block; and the
reference answer out of a dataset's answer field (`reference_answer`, same box parser).

Everything here is plain string scanning, linear in the completion length (completions
can be megabytes of adversarial text), with no sympy and no regex backtracking.
`normalize_answer` gives the canonical string used for majority voting (cons@k).
"""

from __future__ import annotations

import fractions
import re
import unicodedata

from r1jax.rewards import answer_forms

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_MAX_BOX_TRIES = 8  # unclosed \boxed{ candidates tried before giving up (bounds the work)
_MAX_GROUP_CHARS = 20_000  # a braced group longer than this is not an answer
_BRACES = re.compile(r"[{}]")


def _match_brace(s: str, open_idx: int, limit: int = _MAX_GROUP_CHARS) -> int:
  """Index of the '}' closing the '{' at `open_idx` (within `limit` chars), or -1."""
  depth = 0
  for m in _BRACES.finditer(s, open_idx, min(len(s), open_idx + limit)):
    if m.group() == "{":
      depth += 1
    else:
      depth -= 1
      if depth == 0:
        return m.start()
  return -1


def _boxed_at(s: str, idx: int, cmd: str) -> str | None:
  """Content of `cmd{...}` (or `cmd 5`) starting at `idx`, None if malformed."""
  j = idx + len(cmd)
  if j < len(s) and (s[j].isalpha()):  # e.g. \boxedfoo: another command
    return None
  while j < len(s) and s[j] == " ":
    j += 1
  if j < len(s) and s[j] == "{":
    end = _match_brace(s, j)
    return s[j + 1:end] if end >= 0 else None
  if j > idx + len(cmd):  # "\boxed 5": the next token
    k = j
    while k < len(s) and not s[k].isspace() and s[k] not in "$":
      k += 1
    return s[j:k] if k > j else None
  return None


def _box_positions(text: str) -> list[tuple[int, str]]:
  """(index, command) of the last `_MAX_BOX_TRIES` occurrences of each box command."""
  positions = []
  for cmd in _BOX_COMMANDS:
    end = len(text)
    for _ in range(_MAX_BOX_TRIES):
      idx = text.rfind(cmd, 0, end)
      if idx < 0:
        break
      positions.append((idx, cmd))
      end = idx
  return positions


def last_boxed(text: str) -> str | None:
  """Content of the last well-formed \\boxed{...} / \\fbox{...} (nested braces kept)."""
  for idx, cmd in sorted(_box_positions(text), reverse=True)[:_MAX_BOX_TRIES]:
    content = _boxed_at(text, idx, cmd)
    if content is not None:
      return content
  return None


def all_boxed(text: str) -> list[str]:
  """Contents of the last `_MAX_BOX_TRIES` well-formed boxes, in text order."""
  positions = _box_positions(text)
  out = []
  for idx, cmd in sorted(positions)[-_MAX_BOX_TRIES:]:
    content = _boxed_at(text, idx, cmd)
    if content is not None and not any(idx < j < idx + len(cmd) + len(content) + 2
                                       for j, _ in positions):
      out.append(content)
  return out


def _boxes(text: str) -> str | None:
  """The boxed answer: one box's content, or several distinct boxes joined as a list
  ("\\boxed{2} and \\boxed{3}" -> "2, 3"), which matches a multi-answer set but not a single
  value (two different boxes offered as alternatives are not an answer)."""
  boxes = list(dict.fromkeys(b.strip() for b in all_boxed(text)))
  if len(boxes) <= 1:
    return boxes[0] if boxes else None
  return ", ".join(_strip_math_delims(b) for b in boxes)


_STATED = ("final answer is", "answer is", "final answer:", "answer:")


def _stated(text: str) -> str | None:
  """The explicitly stated final answer: the last "... answer is X" / "Answer: X" line
  (Minerva's "Final Answer: The final answer is $3$. I hope it is correct." gives "3")."""
  low = text[-20_000:].lower()
  offset = len(text) - len(low)
  best = -1
  for phrase in _STATED:
    i = low.rfind(phrase)
    if i >= 0 and i + len(phrase) > best:
      best = i + len(phrase)
  if best < 0:
    return None
  line = text[offset + best:offset + best + 2000].split("\n", 1)[0].strip()
  while line[:1] == ":" or line.lower().startswith("is "):
    line = line[1:].strip() if line[:1] == ":" else line[3:].strip()
  for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if line.startswith(left):
      end = line.find(right, len(left))
      return line[len(left):end].strip() if end > 0 else None
  end = re.search(r"\.(?:\s|$)", line)  # a sentence end, not a decimal point
  line = line[:end.start()] if end else line
  return line.strip() or None


def _answer_tag(text: str) -> str | None:
  end = text.rfind("</answer>")
  if end < 0:
    return None
  start = text.rfind("<answer>", 0, end)
  if start < 0:
    return None
  return text[start + len("<answer>"):end]


def _gsm8k(text: str) -> str | None:
  idx = text.rfind("####")
  if idx < 0:
    return None
  line = text[idx + 4:].split("\n", 1)[0]
  return line


def _strip_math_delims(s: str) -> str:
  s = s.strip()
  for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
      inner = s[len(left):len(s) - len(right)]
      if left not in inner and right not in inner:  # "$3$ or $5$" stays whole
        s = inner.strip()
  if s.endswith(".") and not s.endswith(".."):
    s = s[:-1].rstrip()
  return s


def extract_answer(completion: str, *, clean: bool = True) -> str | None:
  """The final answer of a completion, or None.

  Order: the last <answer>...</answer> (and, if it holds boxes, its boxed answer); else the
  boxed answer anywhere (several distinct boxes are joined into a list: a set of answers,
  or alternatives that then match no single value); else a GSM8K-style `#### 72` line;
  else the explicitly stated final answer ("The answer is 5", "Final Answer: The final
  answer is $3$", an "Answer: 5" line), never merely the last number in the text. With
  `clean`, math delimiters ($...$, \\(...\\)) around the answer and a final period are
  removed; without, only surrounding whitespace (task scorers that compare raw text).
  """
  if not completion:
    return None
  ans = _answer_tag(completion)
  if ans is not None:
    boxed = _boxes(ans)
    if boxed is not None:
      ans = boxed
  else:
    ans = _boxes(completion)
    if ans is None:
      ans = _gsm8k(completion)
    if ans is None:
      ans = _stated(completion)
  if ans is None:
    return None
  ans = _strip_math_delims(ans) if clean else ans.strip()
  return ans or None


REFERENCE_FORMATS = ("auto", "raw", "gsm8k", "boxed")


def gsm8k_reference(text: str) -> str:
  """The final answer of a GSM8K solution: what follows the last '####' (commas removed
  from thousands separators); the whole stripped text when there is no marker."""
  if "####" not in text:
    return text.strip()
  ans = text.rsplit("####", 1)[1].strip()
  return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", ans)


def reference_answer(text: str, answer_format: str = "auto") -> str:
  """The reference answer in a dataset's answer/solution field (not in a completion).

  "auto": after '####' if present (GSM8K), else the last \\boxed{} (MATH) if present,
  else the stripped text. "raw": stripped text. "gsm8k"/"boxed": force one rule.
  """
  if answer_format not in REFERENCE_FORMATS:
    raise ValueError(f"unknown answer_format {answer_format!r}; expected one of "
                     f"{REFERENCE_FORMATS}")
  if answer_format == "raw":
    return text.strip()
  if answer_format == "gsm8k" or (answer_format == "auto" and "####" in text):
    return gsm8k_reference(text)
  boxed = last_boxed(text)
  return boxed.strip() if boxed is not None else text.strip()


def extract_cot(completion: str) -> str:
  """The chain of thought: inside <think>...</think>, else the text before the answer.

  An unclosed <think> (a truncated completion) makes the rest of the text the chain of
  thought.
  """
  start = completion.find("<think>")
  body_start = start + len("<think>") if start >= 0 else 0
  end = completion.find("</think>", body_start)
  if end < 0:
    end = completion.find("<answer>", body_start)
  if end < 0:
    end = len(completion)
  return completion[body_start:end]


_FENCE = "```"
_PY_TAGS = ("python", "py", "python3")


def extract_code(completion: str) -> str | None:
  """The last ```python (or ```py / ```python3) fenced block; else the last bare ``` block."""
  tagged, bare = None, None
  pos = 0
  while True:
    open_idx = completion.find(_FENCE, pos)
    if open_idx < 0:
      break
    line_end = completion.find("\n", open_idx)
    if line_end < 0:
      break
    close_idx = completion.find(_FENCE, line_end)
    if close_idx < 0:
      break
    tag = completion[open_idx + 3:line_end].strip().lower()
    body = completion[line_end + 1:close_idx]
    if tag in _PY_TAGS:
      tagged = body
    elif not tag:
      bare = body
    pos = close_idx + 3
  return tagged if tagged is not None else bare


# ---------------------------------------------------------------------------------------
# normalize_answer: canonical strings for majority voting.

_TEXT_CMDS = ("\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm", "\\mathbf",
              "\\mathit", "\\mbox", "\\operatorname", "\\displaystyle")
_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\displaystyle", "~")
_UNITS = (
  "dollars", "dollar", "cents", "cent", "usd", "euros", "euro", "percent",
  "units", "unit", "degrees", "degree", "deg",
  "cm", "mm", "km", "m", "meters", "meter", "metres", "metre", "inches", "inch", "in",
  "feet", "foot", "ft", "miles", "mile", "mi", "yards", "yard", "yd",
  "kg", "g", "grams", "gram", "pounds", "pound", "lbs", "lb", "ounces", "ounce", "oz",
  "liters", "liter", "litres", "litre", "l", "ml", "gallons", "gallon",
  "hours", "hour", "hrs", "hr", "h", "minutes", "minute", "mins", "min",
  "seconds", "second", "secs", "sec", "s", "days", "day", "weeks", "week",
  "months", "month", "years", "year", "mph", "km/h",
  "sq", "square", "cubic", "cm^2", "m^2", "cm^3", "m^3", "ft^2", "in^2",
)
_UNIT_RE = re.compile(r"(?<=[\d}])\s*(?:(?:" + "|".join(re.escape(u) for u in sorted(
    _UNITS, key=len, reverse=True)) + r")\b\.?\s*)+$", re.IGNORECASE)
_NUM_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,3})?")  # 3e8 too
_FRAC_RE = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_SLASH_RE = re.compile(r"^(-?\d+)/(\d+)$")
_ASSIGN_RE = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?=\S)")
_MAX_NORM_CHARS = 2000


def _unwrap_commands(s: str, cmds: tuple[str, ...]) -> str:
  """Replace `\\cmd{content}` by `content` for each command (nested braces respected)."""
  for cmd in sorted(cmds, key=len, reverse=True):
    guard = 0
    while guard < 64:
      guard += 1
      idx = s.find(cmd + "{")
      if idx < 0:
        break
      end = _match_brace(s, idx + len(cmd))
      if end < 0:
        break
      s = s[:idx] + s[idx + len(cmd) + 1:end] + s[end + 1:]
  return s


def _canonical_number(s: str) -> str | None:
  """'0.50' -> '1/2', '\\frac{6}{4}' -> '3/2', '72.0' -> '72'; None if not a plain number."""
  try:
    m = _FRAC_RE.match(s)
    if m:
      value = fractions.Fraction(int(m.group(2)), int(m.group(3)))
      value = -value if m.group(1) else value
    elif _SLASH_RE.match(s):
      a, b = s.split("/")
      value = fractions.Fraction(int(a), int(b))
    elif _NUM_RE.fullmatch(s):
      value = fractions.Fraction(s)
    else:
      return None
  except (ValueError, ZeroDivisionError):
    return None
  if value.denominator == 1:
    return str(value.numerator)
  return f"{value.numerator}/{value.denominator}"


def normalize_answer(ans: str) -> str:
  """Canonical string of an answer, for cons@k voting (equal strings = same vote).

  NFKC, drop $ and \\( \\) delimiters, \\boxed, \\text{}-style wrappers, \\left/\\right and
  spacing commands, degree signs, percent signs, trailing unit words, a leading
  single-variable assignment (`x = 5` -> `5`), thousands separators and whitespace;
  \\dfrac/\\tfrac -> \\frac; a plain-text mixed number is its fraction ("3 3/4" -> "15/4");
  plain numbers (e-notation too) become reduced fractions or integers ("72.0", "144/2"
  and "\\frac{144}{2}" all give "72", "3e8" gives "300000000"). Letters are lower-cased.
  """
  if not ans:
    return ""
  s = unicodedata.normalize("NFKC", str(ans))[:_MAX_NORM_CHARS].strip()
  boxed = last_boxed(s)
  if boxed is not None:
    s = boxed
  s = _strip_math_delims(s)
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  s = _unwrap_commands(s, _TEXT_CMDS)
  for noise in _NOISE:
    s = s.replace(noise, " " if noise in ("\\ ", "~") else "")
  for deg in ("^{\\circ}", "^\\circ", "\\circ", "°", "\\%", "%", "\\$", "$"):
    s = s.replace(deg, "")
  s = s.strip()
  s = _ASSIGN_RE.sub("", s)
  s = _UNIT_RE.sub("", s).strip()
  s = answer_forms.mixed_number(s) or s  # "3 3/4" is 15/4, not 33/4
  s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # 1,000 -> 1000
  s = s.replace("{,}", "")
  s = re.sub(r"\s+", "", s)
  s = s.rstrip(".")
  number = _canonical_number(s)
  if number is not None:
    return number
  return s.lower()
