"""Dynamic sampling (DAPO): constant groups are dropped and the batch refilled, up to a bound."""

import logging

import numpy as np
import pytest

from r1jax import dynamic_sampling as ds
from r1jax.rewards.pool import RewardResult
from r1jax.sampling import SampleOutput

G = 2


def _rollout(rewards, tag, n=3):
  """A fake rollout: one prompt per reward pair; token ids encode (tag, row)."""
  r = np.asarray(rewards, np.float32)
  b = len(r) // G
  rows = np.arange(len(r))
  toks = (tag * 100 + rows)[:, None] * np.ones((1, n), np.int32)
  out = SampleOutput(toks, np.ones_like(toks), -np.ones(toks.shape, np.float32),
                     np.full(len(r), n, np.int32))
  res = RewardResult(total=r, per_reward={"accuracy": r}, failures={"accuracy": 1},
                     invalid=0, invalid_mask=np.zeros(len(r), bool),
                     invalid_per_reward={"accuracy": 0}, max_seconds={"accuracy": 0.1})
  return ds.Rollout([f"ex{tag}.{i}" for i in range(b)], [f"p{tag}.{i}" for i in range(b)],
                    [[tag, i] for i in range(b)], out, [f"t{tag}.{j}" for j in rows], res)


def test_fills_batch_when_some_groups_are_constant():
  rounds = [_rollout([1, 0, 1, 1, 0, 0], 0),  # group 0 varied, groups 1 and 2 constant
            _rollout([0, 0, 0, 1, 1, 0], 1)]  # groups 1 and 2 varied
  calls = []
  batch, m = ds.fill_batch(lambda i: calls.append(i) or rounds[i], 3, G, max_rounds=5)
  assert calls == [0, 1]  # stopped as soon as 3 varied groups were kept
  assert batch.examples == ["ex0.0", "ex1.1", "ex1.2"]
  assert batch.prompt_ids == [[0, 0], [1, 1], [1, 2]]
  np.testing.assert_array_equal(batch.res.total, [1, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(batch.out.tokens[:, 0], [0, 1, 102, 103, 104, 105])
  assert batch.texts == ["t0.0", "t0.1", "t1.2", "t1.3", "t1.4", "t1.5"]
  assert batch.res.failures == {"accuracy": 2}
  assert m["dynamic/rounds"] == 2
  assert m["dynamic/dropped_share"] == pytest.approx(3 / 6)  # groups 0.1, 0.2, 1.0
  assert m["dynamic/padded_groups"] == 0
  assert m["dynamic/reward_mean_drawn"] == pytest.approx(5 / 12)


def test_stops_at_round_bound_with_warning(caplog):
  rounds = [_rollout([1, 1, 0, 1], 0), _rollout([0, 0, 1, 1], 1), _rollout([0, 1, 0, 1], 2)]
  calls = []
  with caplog.at_level(logging.WARNING):
    batch, m = ds.fill_batch(lambda i: calls.append(i) or rounds[i], 2, G, max_rounds=2)
  assert calls == [0, 1]  # the third (all varied) round is never drawn
  assert "max_rounds=2" in caplog.text
  # One varied group (0.1), padded with the first constant group (0.0): shape stays (2 * G).
  assert batch.examples == ["ex0.1", "ex0.0"]
  np.testing.assert_array_equal(batch.res.total, [0, 1, 1, 1])
  assert batch.out.tokens.shape == (4, 3)
  assert m["dynamic/rounds"] == 2 and m["dynamic/padded_groups"] == 1
  assert m["dynamic/dropped_share"] == pytest.approx(3 / 4)
  with pytest.raises(ValueError, match="max_rounds=0"):
    ds.fill_batch(lambda i: rounds[i], 2, G, max_rounds=0)
