"""Language consistency (DeepSeek-R1 stage 2): share of chain-of-thought words in the target.

Words are found by Unicode script: each Han / kana character counts as one word (Chinese
and Japanese have no spaces), other scripts count letter runs. Math ($...$, \\(...\\),
LaTeX commands), code (``` fences, `inline`) and one-letter tokens (variables such as x)
are ignored. A word is in the target language when its script is the target's script.

The script decides zh/en mixing but cannot tell English from French. For targets that
share their script with other languages (Latin, Cyrillic) we use lingua
(`lingua-language-detector`): a Rust-backed n-gram detector that works offline from
bundled models, is accurate on short text (the reason to prefer it over langdetect /
fastText here) and costs ~0.1 ms per sentence. Sentences of at least
`min_words_for_detection` words that lingua confidently (>= 0.5) assigns to another
language count as off-target; shorter or ambiguous ones keep the benefit of the doubt.
Without lingua installed the reward is purely script based.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from r1jax.rewards.base import Example
from r1jax.rewards.extract import extract_cot

_SCRIPTS = {
  "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff",
  "kana": "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f",
  "hangul": "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af",
  "cyrillic": "\u0400-\u04ff\u0500-\u052f",
  "greek": "\u0370-\u03ff",
  "arabic": "\u0600-\u06ff\u0750-\u077f",
  "hebrew": "\u0590-\u05ff",
  "devanagari": "\u0900-\u097f",
  "thai": "\u0e00-\u0e7f",
  "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f",
}
_PER_CHAR = ("han", "kana")
_WORD_RE = re.compile("|".join(
  f"(?P<{name}>[{chars}]{'' if name in _PER_CHAR else '+'})" for name, chars in _SCRIPTS.items()))
_SENTENCE = re.compile(r"[^.!?;:\n\u3002\uff01\uff1f\uff1b]+")
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")

# Target language (ISO 639-1) -> scripts whose words count as that language.
_LANG_SCRIPTS = {
  "zh": ("han",), "ja": ("han", "kana"), "ko": ("hangul",),
  "ru": ("cyrillic",), "uk": ("cyrillic",), "bg": ("cyrillic",), "sr": ("cyrillic",),
  "el": ("greek",), "ar": ("arabic",), "fa": ("arabic",), "he": ("hebrew",),
  "hi": ("devanagari",), "mr": ("devanagari",), "th": ("thai",),
}
# Languages lingua chooses among, per shared script (the target is always added).
_LINGUA_CANDIDATES = {
  "latin": ("en", "fr", "de", "es", "pt", "it", "nl", "pl", "tr", "vi", "id"),
  "cyrillic": ("ru", "uk", "bg", "sr"),
}
MAX_DETECTED_SENTENCES = 256  # bound lingua's work on very long chains of thought
MAX_COT_CHARS = 256_000  # ~64k tokens; the rest of a longer chain of thought is ignored


def _strip_spans(text: str, open_: str, close: str) -> str:
  """Remove open_...close spans (linear scan; an unclosed span is kept as text)."""
  out, pos = [], 0
  while True:
    start = text.find(open_, pos)
    if start < 0:
      break
    end = text.find(close, start + len(open_))
    if end < 0:
      break
    out.append(text[pos:start])
    out.append(" ")
    pos = end + len(close)
  out.append(text[pos:])
  return "".join(out)


def _prose(text: str) -> str:
  for open_, close in (("```", "```"), ("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"),
                       ("$", "$"), ("`", "`")):
    text = _strip_spans(text, open_, close)
  return _LATEX_CMD.sub(" ", text)


def _target_scripts(language: str) -> tuple[str, ...]:
  return _LANG_SCRIPTS.get(language, ("latin",))


@functools.lru_cache(maxsize=16)
def _detector(language: str) -> Any:
  """A lingua detector over the target and its same-script rivals; None if unavailable."""
  scripts = _target_scripts(language)
  if len(scripts) != 1 or scripts[0] not in _LINGUA_CANDIDATES:
    return None
  try:
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder
  except ImportError:
    return None
  codes = dict.fromkeys((language,) + _LINGUA_CANDIDATES[scripts[0]])
  langs = []
  for code in codes:
    try:
      langs.append(Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())))
    except (AttributeError, ValueError):
      if code == language:
        return None  # lingua does not know the target: script only
  target = langs[0]
  detector = LanguageDetectorBuilder.from_languages(*langs).with_preloaded_language_models().build()
  return detector, target


def _off_target(sentence_words: list[str], detector: Any) -> bool:
  det, target = detector
  values = det.compute_language_confidence_values(" ".join(sentence_words))
  if not values:
    return False
  top = values[0]
  return top.language != target and top.value >= 0.5


def language_consistency(completion: str, example: Example, *, use_lingua: bool = True,
                         min_words_for_detection: int = 4) -> float:
  """Share (0..1) of the chain of thought's words in example.get("language", "en"); 0 when
  it has no words (the reward pays for readable prose, not for bare formulas).

  The language is an ISO 639-1 code ("en", "zh", "fr"; "zh-CN" reads as "zh").
  """
  share = language_share(completion, example, use_lingua=use_lingua,
                         min_words_for_detection=min_words_for_detection)
  return 0.0 if share is None else share


def language_share(completion: str, example: Example, *, use_lingua: bool = True,
                   min_words_for_detection: int = 4) -> float | None:
  """As `language_consistency`, but None when the chain of thought has no words (a bare
  `13 - 92 = -79.` is in no language, so a filter has nothing to call mixed)."""
  language = str(example.get("language") or "en").lower().replace("_", "-").split("-")[0]
  scripts = _target_scripts(language)
  text = _prose(extract_cot(completion)[:MAX_COT_CHARS])
  detector = _detector(language) if use_lingua else None
  total = in_target = 0
  checked = 0
  for sentence in _SENTENCE.finditer(text):
    words = [(m.lastgroup, m.group()) for m in _WORD_RE.finditer(sentence.group())
             if m.lastgroup in _PER_CHAR or len(m.group()) > 1]
    if not words:
      continue
    same = [w for s, w in words if s in scripts]
    total += len(words)
    if (detector is not None and len(same) >= min_words_for_detection
        and checked < MAX_DETECTED_SENTENCES):
      checked += 1
      if _off_target(same, detector):
        continue
    in_target += len(same)
  return in_target / total if total else None


def warmup() -> None:
  _detector("en")
