"""End-to-end: the tiny config trains, logs, checkpoints, and resumes exactly."""

import json
import os

import pytest

from configs import r1_zero
from r1jax import train as train_lib

REQUIRED = ("step", "reward_mean", "accuracy", "format_rate", "completion_len_mean", "kl",
            "loss", "clip_frac", "tokens_per_s", "step_time_s")


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _cfg(num_steps):
  c = r1_zero.get_config("tiny")
  c.unlock()
  c.train.num_steps = num_steps
  c.train.eval_every = 0
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  straight = str(tmp_path_factory.mktemp("straight"))
  resumed = str(tmp_path_factory.mktemp("resumed"))
  train_lib.train(_cfg(5), straight)
  first = train_lib.train(_cfg(3), resumed)
  second = train_lib.train(_cfg(5), resumed)
  return straight, resumed, first, second


def test_metrics_and_checkpoints_written(runs):
  straight, _, _, _ = runs
  rows = _read(os.path.join(straight, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  for r in rows:
    for k in REQUIRED:
      assert k in r, k
  assert os.path.isdir(os.path.join(straight, "checkpoints", "5"))
  assert os.listdir(os.path.join(straight, "tb"))
  samples = _read(os.path.join(straight, "samples.jsonl"))
  assert {s["step"] for s in samples} == {1, 2, 3, 4, 5}
  assert all("completion" in s and "reward" in s for s in samples)


def test_restart_continues_with_same_data_and_numbers(runs):
  straight, resumed, first, second = runs
  assert [r["step"] for r in first] == [1, 2, 3]
  assert [r["step"] for r in second] == [4, 5]  # continued at step 3
  a = [s for s in _read(os.path.join(straight, "samples.jsonl")) if s["step"] > 3]
  b = [s for s in _read(os.path.join(resumed, "samples.jsonl")) if s["step"] > 3]
  assert [s["prompt"] for s in a] == [s["prompt"] for s in b]
  # Same params, RNG and data after the restart: identical completions and rewards.
  assert [s["completion"] for s in a] == [s["completion"] for s in b]
  ra = _read(os.path.join(straight, "metrics.jsonl"))[3:]
  rb = _read(os.path.join(resumed, "metrics.jsonl"))[3:]
  for x, y in zip(ra, rb):
    assert x["reward_mean"] == pytest.approx(y["reward_mean"])
    assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-6)


def test_bad_config_is_named():
  c = _cfg(1)
  c.train.micro_batch_size = 3
  with pytest.raises(ValueError, match="micro_batch_size=3"):
    train_lib.validate(c)
  c = _cfg(1)
  c.rewards.weights = {"acuracy": 1.0}
  with pytest.raises(ValueError, match="acuracy"):
    train_lib.validate(c)
  for field, bad in (("decode_dtype", "fp8"), ("top_p", 1.5)):
    c = _cfg(1)
    c.sampling[field] = bad
    with pytest.raises(ValueError, match=field):
      train_lib.validate(c)


def test_two_processes_match_one(tmp_path):
  """The multi-host path: two jax.distributed processes (2 CPU devices each) train the same
  run as one process with 4 devices, on the same (2, 2, 1) mesh."""
  import socket
  import subprocess
  import sys
  worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  procs = [subprocess.Popen([sys.executable, worker, str(i), "2", str(port), "2", multi],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  out = subprocess.run([sys.executable, worker, "0", "1", "0", "4", single], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
  a = _read(os.path.join(multi, "metrics.jsonl"))
  b = _read(os.path.join(single, "metrics.jsonl"))
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
  for x, y in zip(a, b):
    for key in ("reward_mean", "accuracy", "completion_len_mean"):
      assert x[key] == pytest.approx(y[key]), key
    assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-6)
  assert ([s["completion"] for s in _read(os.path.join(multi, "samples.jsonl"))] ==
          [s["completion"] for s in _read(os.path.join(single, "samples.jsonl"))])
  assert os.path.isdir(os.path.join(multi, "checkpoints"))
