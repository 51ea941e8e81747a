"""Held-out reward-model metrics (r1jax.rm_metrics) against hand computations and a naive loop."""

import itertools

import numpy as np
import pytest

from r1jax import rm_metrics as M


def test_label_metrics_by_hand():
  # pred (score > 0): 1 1 0 1 0 against labels 1 1 0 0 0
  m = M.label_metrics([0.9, 0.4, -0.2, 0.4, -1.0], [1, 1, 0, 0, 0])
  assert m["accuracy"] == pytest.approx(4 / 5)
  assert m["balanced_accuracy"] == pytest.approx((2 / 2 + 2 / 3) / 2)
  # pairs (pos, neg): 0.9 beats all three; 0.4 beats -0.2 and -1.0 and ties 0.4 (half)
  assert m["auc"] == pytest.approx((3 + 2.5) / 6)
  assert m["majority_share"] == pytest.approx(3 / 5)
  assert (m["positives"], m["negatives"]) == (2, 3)


def test_majority_guesser_scores_chance():
  # Every score equal: accuracy is the majority share, balanced accuracy and AUC 0.5.
  m = M.label_metrics([-0.3] * 4, [0, 0, 0, 1])
  assert m["accuracy"] == pytest.approx(0.75) == m["majority_share"]
  assert m["balanced_accuracy"] == pytest.approx(0.5)
  assert m["auc"] == pytest.approx(0.5)


def test_one_class_and_empty():
  m = M.label_metrics([1.0, -1.0, 2.0], [1, 1, 1])
  assert m["accuracy"] == pytest.approx(2 / 3) == m["balanced_accuracy"]  # the one recall
  assert m["auc"] is None and m["majority_share"] == 1.0
  assert (m["positives"], m["negatives"]) == (3, 0)
  e = M.label_metrics([], [])
  assert e["accuracy"] is None and e["balanced_accuracy"] is None and e["auc"] is None
  assert M.auc([], [1.0]) is None


def test_auc_vs_naive_pair_count():
  rng = np.random.default_rng(0)
  for _ in range(20):
    pos, neg = rng.integers(0, 5, size=rng.integers(1, 9)), rng.integers(0, 5, size=7)
    want = np.mean([1.0 if p > n else 0.5 if p == n else 0.0
                    for p, n in itertools.product(pos, neg)])
    assert M.auc(pos, neg) == pytest.approx(want)


def test_pair_metrics_by_hand():
  m = M.pair_metrics([1.0, 0.0, 2.0], [0.0, 0.0, 3.0])
  assert m["accuracy"] == pytest.approx(1 / 3)  # a tie is not a win
  # chosen vs every rejected: 1 -> 1+1+0, 0 -> .5+.5+0, 2 -> 1+1+0
  assert m["auc"] == pytest.approx(5 / 9)
  assert m["pairs"] == 3


def test_auc_within_prompts_by_hand():
  # prompt a: pos 0.5 vs negs 0.9, 0.1 -> 1 of 2; prompt b: pos 0.2 vs neg 0.2 -> a tie (half);
  # prompt c has no negative: no pair. Across prompts the pos 0.2 vs neg 0.1 pair does not count.
  scores = [0.5, 0.9, 0.1, 0.2, 0.2, 3.0]
  labels = [1, 0, 0, 1, 0, 1]
  groups = ["a", "a", "a", "b", "b", "c"]
  got, pairs = M.auc_within(scores, labels, groups)
  assert pairs == 3 and got == pytest.approx((1 + 0.5) / 3)
  m = M.label_metrics(scores, labels, groups=groups)
  assert m["auc_within_prompt"] == pytest.approx(0.5) and m["pairs_within_prompt"] == 3
  assert "auc_within_prompt" not in M.label_metrics(scores, labels)
  assert M.auc_within([1.0, 2.0], [1, 1], ["a", "a"]) == (None, 0)
