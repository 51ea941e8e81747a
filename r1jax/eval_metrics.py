"""Test-time-compute metrics over a grid of graded samples (pure functions, numpy):
pass@k, majority and weighted-majority vote (cons@k), best-of-N, reflection rate, and the
per-problem / summary tables `r1jax.evaluate` reports."""

from __future__ import annotations

import collections
import math
import re
from typing import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
  if k > n:
    raise ValueError(f"pass@k needs k <= n, got k={k}, n={n}")
  if n - c < k:
    return 1.0
  return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def majority_vote(answers: Sequence[str | None], correct: Sequence[float]) -> float:
  """Correctness of the most common non-empty answer (first seen wins ties); 0 if none."""
  return weighted_majority_vote(answers, [1.0] * len(answers), correct)


def best_of_n(scores: Sequence[float], correct: Sequence[float]) -> float:
  """Correctness of the sample an outcome scorer (ORM / verifier) ranks highest (first
  seen wins ties); 0 with no samples."""
  if len(scores) == 0:
    return 0.0
  return float(correct[int(np.argmax(np.asarray(scores, np.float64)))])


def weighted_majority_vote(answers: Sequence[str | None], weights: Sequence[float],
                           correct: Sequence[float]) -> float:
  """Verifier-weighted majority voting: the non-empty answer with the largest summed
  weight (weights >= 0, e.g. an ORM's probability of correct) wins; first seen wins ties."""
  totals: dict[str, float] = collections.defaultdict(float)
  for a, w in zip(answers, weights):
    if a:
      if w < 0:
        raise ValueError(f"weighted majority voting needs weights >= 0, got {w}")
      totals[a] += float(w)
  if not totals:
    return 0.0
  best = max(totals.values())
  for a, ok in zip(answers, correct):
    if a and totals[a] == best:
      return float(ok)
  return 0.0


def test_time_metrics(correct: np.ndarray, answers: Sequence[Sequence[str | None]],
                      scores: np.ndarray) -> dict[str, float]:
  """correct, scores [P, k]; answers [P][k] -> best-of-k and verifier-weighted cons@k."""
  correct, scores = np.asarray(correct, np.float64), np.asarray(scores, np.float64)
  k = correct.shape[1]
  return {f"best_of_{k}": float(np.mean([best_of_n(s, c) for s, c in zip(scores, correct)])),
          f"weighted_cons@{k}": float(np.mean([weighted_majority_vote(a, s, c) for a, s, c
                                               in zip(answers, scores, correct)]))}


def reflection_rate(texts: Sequence[str], words: Sequence[str]) -> float:
  """Share of texts containing any reflection phrase (case-insensitive, word-bounded)."""
  if not texts or not words:
    return 0.0
  pat = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
  return float(np.mean([bool(pat.search(t)) for t in texts]))


def per_problem(correct: np.ndarray, answers: Sequence[Sequence[str | None]]
                ) -> dict[str, np.ndarray]:
  """correct [P, k] in {0,1}; answers [P][k] -> each problem's pass@1 and cons@k [P]."""
  correct = np.asarray(correct, np.float64)
  k = correct.shape[1]
  return {"pass@1": correct.mean(axis=1) if correct.size else np.zeros(len(correct)),
          f"cons@{k}": np.asarray([majority_vote(a, c) for a, c in zip(answers, correct)],
                                  np.float64)}


def summarize(correct: np.ndarray, answers: Sequence[Sequence[str | None]],
              ks: Sequence[int] = ()) -> dict[str, float]:
  """correct [P, k] in {0,1}; answers [P][k] normalised answers -> protocol metrics."""
  correct = np.asarray(correct, np.float64)
  p, k = correct.shape
  out = {name: float(v.mean()) if v.size else 0.0
         for name, v in per_problem(correct, answers).items()}
  for kk in ks:
    if 1 < kk <= k:
      out[f"pass@{kk}"] = float(np.mean([pass_at_k(k, int(c.sum()), kk) for c in correct]))
  return out
