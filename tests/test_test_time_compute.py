"""Best-of-N and verifier-weighted majority voting against hand-made numbers."""

import numpy as np
import pytest

from r1jax import evaluate as ev


def test_best_of_n():
  assert ev.best_of_n([0.1, 0.9, 0.3], [0, 1, 0]) == 1.0
  assert ev.best_of_n([0.9, 0.9, 0.3], [0, 1, 1]) == 0.0  # tie: first seen
  assert ev.best_of_n([], []) == 0.0


def test_weighted_majority_vote_differs_from_plain_vote():
  answers = ["3", "3", "3", "4", "4"]
  correct = [0, 0, 0, 1, 1]
  assert ev.majority_vote(answers, correct) == 0.0  # "3" has 3 votes
  # Weighted: "3" -> 0.1 + 0.2 + 0.1 = 0.4, "4" -> 0.3 + 0.3 = 0.6.
  assert ev.weighted_majority_vote(answers, [0.1, 0.2, 0.1, 0.3, 0.3], correct) == 1.0
  # Uniform weights reduce to plain majority voting; empty answers get no vote.
  assert ev.weighted_majority_vote(answers, [1] * 5, correct) == 0.0
  assert ev.weighted_majority_vote([None, "4"], [5.0, 0.1], [1, 0]) == 0.0
  assert ev.weighted_majority_vote([None, None], [1, 1], [1, 1]) == 0.0
  with pytest.raises(ValueError, match="weights >= 0"):
    ev.weighted_majority_vote(["1"], [-0.5], [1])


def test_records_metrics_with_a_scorer():
  # Two problems, k = 3. A scorer that reads a field of the record (any callable works).
  recs = [dict(task="t", length=5, completion="", normalized=a, **{"reward/accuracy": c},
               orm=s)
          for a, c, s in [("1", 0, 0.2), ("1", 0, 0.2), ("2", 1, 0.9),
                          ("5", 1, 0.1), ("6", 0, 0.8), ("5", 1, 0.3)]]
  m = ev.records_metrics(recs, 3, scorer=lambda rs: [r["orm"] for r in rs])
  assert m["cons@3"] == pytest.approx(1 / 2)  # "1" (wrong), "5" (right)
  assert m["best_of_3"] == pytest.approx(1 / 2)  # 0.9 -> right; 0.8 -> wrong
  # Weighted: p1 "2" 0.9 > "1" 0.4 -> right; p2 "6" 0.8 > "5" 0.4 -> wrong.
  assert m["weighted_cons@3"] == pytest.approx(1 / 2)
  np.testing.assert_allclose(m["pass@1"], 3 / 6)
