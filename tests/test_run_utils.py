"""r1jax.run: the periodic test every trainer uses, and the config readers."""

import pytest

from r1jax.run import itstime


@pytest.mark.parametrize("every,step,last,first,ending,want", [
    (0, 1, None, True, False, False),   # every=0: off, step 1 included
    (0, 10, 10, False, False, False),   # every=0: off, the last step included
    (0, 3, None, False, True, False),   # every=0: off, an early stop included
    (5, 5, None, False, False, True),   # a multiple
    (5, 10, None, False, False, True),
    (5, 7, None, False, False, False),
    (5, 1, None, False, False, False),  # step 1 only with first
    (5, 1, None, True, False, True),
    (5, 2, None, True, False, False),
    (5, 7, 7, False, False, True),      # the last step
    (5, 6, 7, False, False, False),
    (5, 3, None, False, True, True),    # an early stop
    (1, 1, None, False, False, True),
])
def test_itstime_cases(every, step, last, first, ending, want):
  assert itstime(every, step, last, first=first, ending=ending) is want


def test_itstime_matches_the_trainers_old_conditions():
  """The conditions the trainers typed before, over a grid."""
  n = 12
  for every in range(0, 6):
    for step in range(1, n + 1):
      for timeout in (False, True):
        assert itstime(every, step, first=True) == bool(every and (step % every == 0
                                                                   or step == 1))
        assert itstime(every, step) == bool(every and step % every == 0)
        assert itstime(every, step, n) == bool(every and (step % every == 0 or step == n))
        assert itstime(every, step, n, ending=timeout) == bool(
            every and (step % every == 0 or step == n or timeout))
        assert itstime(every, step, ending=timeout) == bool(
            every and (step % every == 0 or timeout))


def test_sampling_config_from_a_section():
  from ml_collections import ConfigDict
  from r1jax.run import sampling_config
  from r1jax.sampling import SamplingConfig, config_from
  c = ConfigDict(dict(sampling=dict(num_samples=4, max_new_tokens=16, temperature=0.6,
                                    top_p=0.95, top_k=0, decode_dtype="")))
  assert sampling_config(c, pad_id=3) == SamplingConfig(
      max_new_tokens=16, temperature=0.6, top_p=0.95, top_k=0, num_samples=4, pad_id=3)
  # a section's other keys are ignored; absent fields keep their defaults; extras win
  ev = dict(samples=2, temperature=0.0, max_new_tokens=8, rewards={}, timeout_s=1.0)
  assert config_from(ev, num_samples=ev["samples"]) == SamplingConfig(
      max_new_tokens=8, temperature=0.0, num_samples=2)


def test_sampling_config_from_prefixed_keys_of_another_section():
  """SFT's on-policy sampler: `distill.on_policy_<field>` keys set the fields, the section's
  other keys (its own `temperature`, `top_k` of the KD loss) do not."""
  from ml_collections import ConfigDict
  from r1jax.run import sampling_config
  from r1jax.sampling import SamplingConfig
  c = ConfigDict(dict(distill=dict(temperature=2.0, top_k=5, on_policy=0.5,
                                   on_policy_max_new_tokens=8, on_policy_temperature=0.7)))
  assert sampling_config(c, "distill", prefix="on_policy_", eos_ids=(2,), pad_id=0) == (
      SamplingConfig(max_new_tokens=8, temperature=0.7, eos_ids=(2,), pad_id=0))


def test_pool_from_config_weights():
  from r1jax.rewards import pool_from_config
  pool = pool_from_config(dict(weights=dict(accuracy=1.0, format=0.0, cosine=0.0),
                               timeout_s=5.0, num_workers=1))
  with pool:
    assert pool.weights == {"accuracy": 1.0, "format": 0.0}
    assert (pool.timeout_s, pool.num_workers) == (5.0, 1)
  pool = pool_from_config(dict(timeout_s=5.0, num_workers=1), {"accuracy": 0.5})
  with pool:
    assert pool.weights == {"accuracy": 0.5}


def test_setup_loads_the_model_and_writes_the_run_files(tmp_path):
  import json
  import os
  import configs.r1_zero as r1_zero
  from r1jax.model import PRESETS
  from r1jax.run import setup
  c = r1_zero.get_config("tiny")
  run = setup(c, str(tmp_path / "w"), "test", cache="")
  assert run.is_main and dict(run.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1,
                                                  "expert": 1}
  assert run.model_cfg.num_layers == PRESETS["tiny"].num_layers
  assert sorted(os.listdir(tmp_path / "w")) == ["config.json", "model_config.json"]
  assert json.loads((tmp_path / "w" / "config.json").read_text())["seed"] == c.seed
  # no workdir (evaluation, rejection sampling): the same model, nothing written
  bare = setup(c, None, "test")
  assert bare.model_cfg == run.model_cfg and os.listdir(tmp_path) == ["w"]
