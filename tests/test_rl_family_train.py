"""Tiny end-to-end runs of the RL family: GRPO with dynamic sampling, PPO with a critic."""

import json
import os

import numpy as np
import pytest

from configs import r1_zero
from r1jax import train as train_lib
from r1jax.model import PRESETS


def _cfg(**knobs):
  c = r1_zero.get_config("tiny")
  c.unlock()
  c.train.num_steps = 2
  c.train.eval_every = 0
  c.train.checkpoint_every = 0
  c.train.sample_every = 0
  for k, v in knobs.items():  # loop knobs in train, algorithm knobs in rl
    (c.train if k in c.train else c.rl)[k] = v
  return c


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_grpo_dynamic_sampling_tiny_run(tmp_path):
  # The random tiny model mostly scores 0 everywhere: groups are constant, so each step
  # draws up to the bound, warns, and still trains on a full (padded) batch.
  c = _cfg(dynamic_sampling=True, max_sampling_rounds=2, algorithm="rloo",
           policy_loss="dual_clip", tis="token")
  train_lib.validate(c)
  rows = train_lib.train(c, str(tmp_path))
  assert [r["step"] for r in _rows(tmp_path)] == [1, 2]
  for r in rows:
    assert 1 <= r["dynamic/rounds"] <= 2
    assert 0.0 <= r["dynamic/dropped_share"] <= 1.0
    assert r["dynamic/padded_groups"] == 0 or r["dynamic/rounds"] == 2
    assert r["mismatch/abs_diff_mean"] < 1e-3  # float32 decode: sampler == trainer
    assert 0.5 < r["tis_weight_mean"] <= 2.0
    assert r["loss"] == r["loss"]  # not NaN


@pytest.mark.parametrize("field,value,match", [
    ("algorithm", "gae", "algorithm='gae'"),
    ("policy_loss", "gspo", "gspo.*token-mean"),
    ("max_sampling_rounds", 0, "max_sampling_rounds=0"),
])
def test_bad_algorithm_config_is_named(field, value, match):
  c = _cfg(dynamic_sampling=True, loss_aggregation="token-mean")
  (c.train if field in c.train else c.rl)[field] = value
  with pytest.raises(ValueError, match=match):
    train_lib.validate(c)


@pytest.mark.parametrize("critic_model,critic_layers", [
    ({}, 2),  # a copy of the (2-block) policy
    (dict(source="policy", prune_every=2), 1),  # its block 0 only
])
def test_ppo_tiny_run_and_resume(tmp_path, capsys, critic_model, critic_layers):
  c = _cfg(algorithm="ppo")
  c.ppo.critic_model = critic_model
  c.ppo.critic_warmup_steps = 1
  c.ppo.critic_learning_rate = 1e-3
  c.train.checkpoint_every = 1
  c.train.num_steps = 1
  c.rewards.weights.cosine = 1.0  # a non-zero (length-shaped) score for the critic to fit
  train_lib.validate(c)
  first = train_lib.train(c, str(tmp_path))
  assert f"PPO critic: {critic_layers} layers" in capsys.readouterr().out
  # Step 1 is the critic warm-up (no policy loss); the zero-initialised head predicted 0.
  assert [r["step"] for r in first] == [1] and "loss" not in first[0]
  assert first[0]["critic/value_mean"] == 0.0
  assert np.isfinite(first[0]["critic/value_loss"]) and first[0]["critic/grad_norm"] > 0
  # Step 2 resumes: the critic comes back trained (its values are no longer 0) and the
  # policy now trains too.
  c.train.num_steps = 2
  second = train_lib.train(c, str(tmp_path))
  assert [r["step"] for r in second] == [2]
  assert second[0]["critic/value_mean"] != 0.0
  assert np.isfinite(second[0]["loss"]) and second[0]["kl"] == 0.0  # KL is in the reward
  assert np.isfinite(second[0]["critic/value_loss"])


def test_ppo_critic_model_with_another_vocabulary_stops_at_start(tmp_path, monkeypatch):
  monkeypatch.setitem(PRESETS, "tiny_v512", PRESETS["tiny"].replace(vocab_size=512))
  c = _cfg(algorithm="ppo")
  c.ppo.critic_model = dict(source="preset", preset="tiny_v512")
  train_lib.validate(c)
  with pytest.raises(ValueError, match=r"ppo.critic_model=.*vocab_size=512 is not the "
                                       r"policy's 256"):
    train_lib.train(c, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "metrics.jsonl"))
  c.ppo.critic_model = dict(source="hf", path="/nowhere")
  with pytest.raises(ValueError, match="ppo.critic_model.source='hf'"):
    train_lib.validate(c)
