"""Rejection-sampling filters (DeepSeek-R1 stage 3): which sampled completions become SFT data.

Every filter is a pure function of one completion (the full text, prefill included) that
returns the drop reason, or None to keep it. `check_sample` runs them in a fixed order
and returns the first reason; `select_group` adds the per-prompt ones (duplicates, at
most `max_per_prompt` kept). Each filter is switched by a `FilterConfig` field (0 / False
turns it off). Pass rates (share of a prompt's samples that are correct) serve both the
SFT records and RL prompt selection (`select_by_pass_rate`, as open-r1 filters its data).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np

from r1jax.data.templates import COLD_START_TOKEN
from r1jax.rewards.language import language_share

# Every drop reason, in the order the checks run (also the keys of the stats file).
REASONS = ("truncated", "unverifiable", "incorrect", "mixed_language", "long_paragraph",
           "code_in_cot", "repetition", "duplicate", "over_limit")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  drop_truncated: bool = True  # hit the length limit, or the reasoning never closed
  min_language: float = 0.95  # language-consistency share of the CoT; 0 disables
  max_paragraph_chars: int = 2000  # longest paragraph (blank-line separated); 0 disables
  drop_code_in_cot: bool = True  # a ``` code fence inside the chain of thought
  repetition_ngram: int = 6  # word n-gram size of the repetition check
  max_repeat_fraction: float = 0.3  # share of repeated n-grams above which to drop; 0 disables
  dedup: bool = True  # drop a completion equal (up to whitespace) to one kept for the prompt
  max_per_prompt: int = 4  # at most m kept per prompt; 0: no limit
  min_reward: float = 1.0  # correctness: the correctness reward is >= this

  def __post_init__(self):
    if not 0 <= self.min_language <= 1:
      raise ValueError(f"filters.min_language={self.min_language} must be in [0, 1]")
    if not 0 <= self.max_repeat_fraction <= 1:
      raise ValueError(f"filters.max_repeat_fraction={self.max_repeat_fraction} must be in [0, 1]")
    if self.repetition_ngram < 1:
      raise ValueError(f"filters.repetition_ngram={self.repetition_ngram} must be >= 1")
    if self.max_paragraph_chars < 0 or self.max_per_prompt < 0:
      raise ValueError("filters.max_paragraph_chars and filters.max_per_prompt must be >= 0")


def split_reasoning(text: str) -> tuple[str, str] | None:
  """(reasoning, summary) of a full completion, or None when the reasoning never closes.

  The reasoning ends at the first `</think>` after `<think>`, or (the cold-start format
  `|special_token|reasoning|special_token|summary`) at the second special token.
  """
  if text.lstrip().startswith(COLD_START_TOKEN):
    start = text.find(COLD_START_TOKEN) + len(COLD_START_TOKEN)
    end = text.find(COLD_START_TOKEN, start)
    return None if end < 0 else (text[start:end], text[end + len(COLD_START_TOKEN):])
  open_ = text.find("<think>")
  start = open_ + len("<think>") if open_ >= 0 else 0
  end = text.find("</think>", start)
  return None if end < 0 else (text[start:end], text[end + len("</think>"):])


def truncated(text: str, hit_limit: bool) -> str | None:
  """Drop a completion that hit the length limit or whose reasoning has no closing tag."""
  return "truncated" if hit_limit or split_reasoning(text) is None else None


def mixed_language(text: str, example: Mapping[str, Any], min_share: float) -> str | None:
  """Drop when the CoT's share of words in the example's language (default en) < min_share.
  A CoT with no words at all (only numbers and symbols) is kept: it mixes nothing."""
  if min_share <= 0:
    return None
  cot = split_reasoning(text)
  body = f"<think>{cot[0]}</think>" if cot else text
  share = language_share(body, example)
  return "mixed_language" if share is not None and share < min_share else None


def long_paragraph(text: str, max_chars: int) -> str | None:
  """Drop when some paragraph (text between blank lines) is longer than max_chars."""
  if max_chars <= 0:
    return None
  longest = max((len(p.strip()) for p in re.split(r"\n\s*\n", text)), default=0)
  return "long_paragraph" if longest > max_chars else None


def code_in_cot(text: str) -> str | None:
  """Drop when the chain of thought holds a ``` code block (the paper filters these)."""
  cot = split_reasoning(text)
  return "code_in_cot" if "```" in (cot[0] if cot else text) else None


def repeat_fraction(text: str, n: int) -> float:
  """Share of the word n-grams of `text` that repeat an earlier one (0 when none)."""
  words = text.split()
  grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
  return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def repetition(text: str, n: int, max_fraction: float) -> str | None:
  """Drop when more than max_fraction of the word n-grams are repeats."""
  if max_fraction <= 0:
    return None
  return "repetition" if repeat_fraction(text, n) > max_fraction else None


def check_sample(text: str, example: Mapping[str, Any], cfg: FilterConfig, *,
                 hit_limit: bool = False, correct: bool | None = True) -> str | None:
  """The first drop reason of one completion (full text), or None to keep it.

  `correct` is None when the example cannot be verified (no usable reference).
  """
  if cfg.drop_truncated and truncated(text, hit_limit):
    return "truncated"
  if correct is None:
    return "unverifiable"
  if not correct:
    return "incorrect"
  return (mixed_language(text, example, cfg.min_language)
          or long_paragraph(text, cfg.max_paragraph_chars)
          or (code_in_cot(text) if cfg.drop_code_in_cot else None)
          or repetition(text, cfg.repetition_ngram, cfg.max_repeat_fraction))


def select_group(texts: Sequence[str], reasons: Sequence[str | None],
                 cfg: FilterConfig) -> list[str | None]:
  """Per-prompt filters over one prompt's samples: duplicates of a kept sample, then more
  than `max_per_prompt` kept. Returns the reasons with those added (None = kept)."""
  out, seen, kept = list(reasons), set(), 0
  for i, text in enumerate(texts):
    if out[i] is not None:
      continue
    key = " ".join(text.split())
    if cfg.dedup and key in seen:
      out[i] = "duplicate"
    elif cfg.max_per_prompt and kept >= cfg.max_per_prompt:
      out[i] = "over_limit"
    else:
      seen.add(key)
      kept += 1
  return out


def pass_rate(correct: Sequence[bool | None]) -> float | None:
  """Share of a prompt's samples that are correct; None when none could be verified."""
  known = [bool(c) for c in correct if c is not None]
  return float(np.mean(known)) if known else None


def select_by_pass_rate(rates: Sequence[float | None], lo: float = 0.0,
                        hi: float = 1.0) -> np.ndarray:
  """bool mask of prompts whose pass rate is strictly inside (lo, hi): neither always
  solved nor never solved, so GRPO groups carry signal. Unverified (None) prompts: False."""
  return np.asarray([r is not None and lo < r < hi for r in rates], bool)


def count_reasons(reasons: Sequence[str | None]) -> dict[str, int]:
  """{"kept": n, reason: n for every reason in REASONS} of a list of verdicts."""
  out = {"kept": sum(r is None for r in reasons), **{r: 0 for r in REASONS}}
  for r in reasons:
    if r is not None:
      out[r] = out.get(r, 0) + 1
  return out
