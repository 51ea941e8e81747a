"""Confidence intervals for evaluation scores: the percentile bootstrap over problems.

A held-out score (pass@1, cons@k) is the mean of one number per problem; its sampling
noise comes from which problems were drawn. `bootstrap_ci` resamples the problems with
replacement (`num_resamples` times, a fixed `seed`, so a run's interval is reproducible)
and returns the percentile interval of the resampled means. `paired_diff_ci` compares two
runs scored on the same problems: each resample draws the same problems for both, i.e.
it bootstraps the per-problem differences, which removes the spread between easy and
hard problems that two unpaired intervals would count twice; `paired_difference` matches
two evaluations' per-problem rows by problem id first.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

NUM_RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0


def _check(num_resamples: int, confidence: float) -> None:
  if num_resamples < 1:
    raise ValueError(f"num_resamples={num_resamples} must be >= 1")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence={confidence} must be in (0, 1)")


def bootstrap_ci(scores: Sequence[float], *, num_resamples: int = NUM_RESAMPLES,
                 confidence: float = CONFIDENCE, seed: int = SEED) -> tuple[float, float]:
  """(lo, hi): the `confidence` percentile-bootstrap interval of mean(scores), one score
  per problem. All-equal scores (or one problem) give a zero-width interval."""
  _check(num_resamples, confidence)
  x = np.asarray(scores, np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError("bootstrap_ci needs at least one score")
  idx = np.random.default_rng(seed).integers(0, x.size, size=(num_resamples, x.size))
  means = x[idx].mean(axis=1)
  tail = 100 * (1 - confidence) / 2
  lo, hi = np.percentile(means, [tail, 100 - tail])
  # The float mean of equal numbers can differ from them in the last bit; keep the
  # interval within the observed range so that equal scores give exactly [x, x].
  return float(np.clip(lo, x.min(), x.max())), float(np.clip(hi, x.min(), x.max()))


def paired_diff_ci(a: Sequence[float], b: Sequence[float], *,
                   num_resamples: int = NUM_RESAMPLES, confidence: float = CONFIDENCE,
                   seed: int = SEED) -> tuple[float, float, float]:
  """(mean(b) - mean(a), lo, hi): the difference of two runs' scores on the same problems
  (a[i] and b[i] score problem i) with its paired percentile-bootstrap interval."""
  a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"paired scores need the same problems, got {a.size} and {b.size}")
  d = b - a
  lo, hi = bootstrap_ci(d, num_resamples=num_resamples, confidence=confidence, seed=seed)
  return float(d.mean()), lo, hi


def significant(lo: float, hi: float) -> bool:
  """Whether an interval of a difference excludes 0."""
  return not lo <= 0.0 <= hi


def paired_difference(before: Mapping[str, Sequence], after: Mapping[str, Sequence],
                      key: str = "pass@1", **ci) -> dict[str, float]:
  """`after` - `before` in `key` over the problems both scored, matched by id (two rows
  of a trainer's eval_problems.jsonl, or `evaluate.problem_scores` of two runs), with its
  paired bootstrap interval (`ci`: `paired_diff_ci`'s keywords) and whether it excludes 0."""
  x, y = paired_scores(before, after, key)
  diff, lo, hi = paired_diff_ci(x, y, **ci)
  return {"diff": diff, "lo": lo, "hi": hi, "num_problems": len(x),
          "significant": significant(lo, hi)}


def paired_scores(before: Mapping[str, Sequence], after: Mapping[str, Sequence],
                  key: str = "pass@1") -> tuple[tuple, tuple]:
  """(before's, after's) `key` scores of the problems both scored, matched by id."""
  b = dict(zip(before["id"], before[key]))
  pairs = [(b[i], v) for i, v in zip(after["id"], after[key]) if i in b]
  if not pairs:
    raise ValueError("the two evaluations share no problem ids")
  x, y = zip(*pairs)
  return x, y
