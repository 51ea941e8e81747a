"""The first minute of a run: completion-length buckets, an ETA without compile time, a first
line at once, and a restarted run that loads its compiled steps from the persistent cache."""

import json
import os
import subprocess
import sys
import time

import pytest

from r1jax.compile_cache import completion_bucket, num_buckets, resolve_dir
from r1jax.metrics import Progress, bar


@pytest.mark.parametrize("longest,max_new,want", [
    (1, 64, 16), (16, 64, 16), (17, 64, 32), (32, 64, 32), (33, 64, 64), (64, 64, 64),
    (100, 128, 128), (5, 8, 8), (129, 200, 200), (0, 64, 16)])
def test_completion_bucket_is_a_power_of_two_capped(longest, max_new, want):
  assert completion_bucket(longest, max_new) == want


def test_few_buckets():
  assert num_buckets(64) == 3  # 16, 32, 64 (multiples of 16 were 4)
  assert num_buckets(1024) == 7  # 16 .. 1024 (multiples of 16 were 64)
  assert num_buckets(200) == 5  # 16, 32, 64, 128, 200


def test_eta_leaves_compile_time_out(capsys):
  p = Progress(total=10)
  # Step 1: 100 s of which 90 s compiling -> 10 s/step for the 9 steps left.
  assert p.eta(1, {"step_time_s": 100.0, "compile_s": 90.0}) == pytest.approx(90.0)
  # Step 2 compiled nothing: 4 s/step from now on, the compiling step is not averaged in.
  assert p.eta(2, {"step_time_s": 4.0, "compile_s": 0.0}) == pytest.approx(32.0)
  # Step 3 recompiles (a new completion width): left out, the steady median stays 4 s.
  assert p.eta(3, {"step_time_s": 30.0, "compile_s": 26.0}) == pytest.approx(28.0)
  assert p.eta(4, {"step_time_s": 6.0, "compile_s": 0.0}) == pytest.approx(5.0 * 6)
  line = p.line(5, {"step_time_s": 5.0, "compile_s": 0.0, "loss": 0.5})
  assert "step 5/10" in line and "eta 0:00:25" in line and "loss=0.5" in line
  assert bar(1, 4, width=8) == "[##------] 1/4"


def test_cache_dir_settings(tmp_path):
  assert resolve_dir("", str(tmp_path)) == ""
  assert resolve_dir("workdir", str(tmp_path)) == os.path.join(str(tmp_path), "jax_cache")
  assert resolve_dir("/x/y", str(tmp_path)) == "/x/y"


def _run(workdir, steps):
  """Run the tiny config as a user would; returns (seconds to the first line, output)."""
  cmd = [sys.executable, "-m", "r1jax.train", "--config=configs/r1_zero.py:tiny",
         f"--workdir={workdir}", f"--config.train.num_steps={steps}",
         "--config.train.eval_every=0", "--config.train.compilation_cache=workdir"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  t0 = time.time()
  proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  first = proc.stdout.readline()
  t_first = time.time() - t0
  rest = proc.stdout.read()
  assert proc.wait(timeout=300) == 0, first + rest
  return t_first, first + rest


def test_restart_loads_compiled_steps_from_cache(tmp_path):
  workdir = str(tmp_path / "run")
  t_first, out = _run(workdir, 1)
  assert out.startswith("r1jax.train: loading model"), out[:300]
  print(f"first line after {t_first:.1f}s")
  assert os.listdir(os.path.join(workdir, "jax_cache"))  # executables were written
  _, out = _run(workdir, 2)
  assert "resumed from step 1" in out, out
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert rows[0]["step"] == 1 and rows[0]["cache_hits"] == 0
  assert rows[-1]["step"] == 2 and rows[-1]["cache_hits"] > 0, rows[-1]
