"""Held-out metrics of a reward model that tell learning from guessing the majority class.

Host-side numpy on the scores of a whole held-out set:
  label_metrics  (ORM) accuracy of `score > threshold`, balanced accuracy (the mean of the
                 per-class recalls), ROC AUC (ties count half), the majority class's share
                 and the class counts: a verifier that always answers the majority class
                 has accuracy = majority share, balanced accuracy 0.5 and AUC 0.5. With
                 prompt ids, also the AUC within prompts (over every correct/incorrect pair
                 of one prompt): a verifier, not a judge of which prompts are hard, is what
                 GRPO's per-group advantages can use (a score that only ranks prompts
                 cancels in each group's centring);
  pair_metrics   (Bradley-Terry) pairwise accuracy (r_c > r_r; already balanced) and the
                 AUC of all chosen scores against all rejected ones (does a chosen answer
                 outscore a rejected one of another prompt, as a batch-normalised RL reward
                 compares them).
An AUC with one class absent is undefined and left out (None).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def auc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
  """P(a positive scores above a negative), ties counting half (Mann-Whitney U / (n_p n_n))."""
  pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
  if not len(pos) or not len(neg):
    return None
  ranks = _midranks(np.concatenate([pos, neg]))
  u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
  return float(u / (len(pos) * len(neg)))


def _midranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of x, tied values sharing the mean of their ranks."""
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]  # first index of each run of equal values
  ends = np.r_[starts[1:], len(xs)]
  ranks = np.empty(len(x))
  ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
  return ranks


def auc_within(scores: Sequence[float], labels: Sequence[float],
               groups: Sequence) -> tuple[float | None, int]:
  """(AUC over the (positive, negative) pairs that share a group, ties half; pair count)."""
  s, y, g = np.asarray(scores, np.float64), np.asarray(labels) > 0.5, np.asarray(groups)
  wins = pairs = 0.0
  for key in dict.fromkeys(g.tolist()):
    sel = g == key
    pos, neg = s[sel & y], s[sel & ~y]
    if len(pos) and len(neg):
      wins += auc(pos, neg) * len(pos) * len(neg)
      pairs += len(pos) * len(neg)
  return (wins / pairs if pairs else None), int(pairs)


def label_metrics(scores: Sequence[float], labels: Sequence[float], threshold: float = 0.0,
                  groups: Sequence | None = None) -> dict[str, float | int | None]:
  """ORM metrics of scores against 0/1 labels (predicted 1 where score > threshold); with
  `groups` (prompt ids) also the within-prompt AUC and its pair count."""
  s, y = np.asarray(scores, np.float64), np.asarray(labels) > 0.5
  pred = s > threshold
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  recalls = [float(np.mean(pred[y == c] == c)) for c in (True, False) if np.any(y == c)]
  return {"accuracy": float(np.mean(pred == y)) if len(y) else None,
          "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
          "auc": auc(s[y], s[~y]),
          "majority_share": max(n_pos, n_neg) / len(y) if len(y) else None,
          "positives": n_pos, "negatives": n_neg,
          **(dict(zip(("auc_within_prompt", "pairs_within_prompt"), auc_within(s, y, groups)))
             if groups is not None else {})}


def pair_metrics(r_chosen: Sequence[float],
                 r_rejected: Sequence[float]) -> dict[str, float | int | None]:
  """Bradley-Terry metrics: pairwise accuracy (strictly r_c > r_r), the chosen-vs-rejected
  AUC and the pair count."""
  rc, rr = np.asarray(r_chosen, np.float64), np.asarray(r_rejected, np.float64)
  return {"accuracy": float(np.mean(rc > rr)) if len(rc) else None,
          "auc": auc(rc, rr), "pairs": len(rc)}
