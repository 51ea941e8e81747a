"""kill -9 anywhere: a tiny GRPO run SIGKILLed at every named point (during sampling, before
reward scoring, inside the train step, while a checkpoint is written) and restarted ends with
the metrics, samples and final params of an uninterrupted run, bit for bit (CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
# One killed attempt per point; each resumes from the previous attempt's last checkpoint.
CHAIN = ["sample:2", "reward:3", "train:4", "checkpoint:4"]
# Wall-clock and compilation metrics differ between any two runs (a restart hits the cache).
TIMING = ("_time_s", "tokens_per_s", "compile_s", "cache_hits")


SFT = ["-m", "r1jax.sft", f"--config={ROOT}/configs/sft.py:tiny", "--config.eval.num_problems=0",
       "--config.train.checkpoint_every=1"]


def _run(workdir, cache, fault=None, program=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
             R1JAX_KILL_TEST=cache,  # marks this run's processes (reward workers included)
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("R1JAX_FAULT", None)
  if fault:
    env["R1JAX_FAULT"] = fault
  cmd = [sys.executable, *(program or [
      "-m", "r1jax.train", f"--config={ROOT}/configs/r1_zero.py:tiny",
      "--config.train.eval_every=0", "--config.train.checkpoint_every=1"]),
         f"--workdir={workdir}", f"--config.train.num_steps={STEPS}"]
  t0 = time.monotonic()
  p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  return p, time.monotonic() - t0


def _marked(marker):
  """Pids of live processes whose environment carries R1JAX_KILL_TEST=marker."""
  needle = f"R1JAX_KILL_TEST={marker}".encode() + b"\0"
  out = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/environ", "rb") as f:
        if needle in f.read() + b"\0":
          out.append(int(pid))
    except OSError:
      pass
  return out


def _no_orphans(marker, timeout=10.0):
  """The killed trainer's reward workers exit by themselves (their parent watchdog)."""
  t_end = time.monotonic() + timeout
  while _marked(marker) and time.monotonic() < t_end:
    time.sleep(0.2)
  return not _marked(marker)


def _rows(path, drop_timing=False):
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  if drop_timing:
    rows = [{k: v for k, v in r.items() if not k.endswith(TIMING)} for r in rows]
  return rows


def _final_params(workdir):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as m:
    assert m.latest_step() == STEPS
    out = m.restore(STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return out["state"]


def test_kill_anywhere_and_resume_is_bit_identical(tmp_path):
  cache = str(tmp_path / "xla_cache")
  ref, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
  p, t_ref = _run(ref, cache)
  assert p.returncode == 0, p.stderr[-3000:]
  times = {}
  for fault in CHAIN:
    p, times[fault] = _run(killed, cache, fault)
    assert p.returncode == -signal.SIGKILL, (fault, p.returncode, p.stderr[-3000:])
    assert _no_orphans(cache), f"processes of the run killed at {fault} are still alive"
    if fault.startswith("checkpoint"):  # killed mid-write: a temporary directory, no step 4
      names = os.listdir(os.path.join(killed, "checkpoints"))
      assert "4" not in names and any(n.startswith("4.orbax-checkpoint-tmp") for n in names)
  p, times["final"] = _run(killed, cache)
  assert p.returncode == 0, p.stderr[-3000:]
  assert f"resumed from step {STEPS - 1}" in p.stdout
  print(f"reference run {t_ref:.1f} s; attempts " +
        ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))

  a = _rows(os.path.join(ref, "metrics.jsonl"), drop_timing=True)
  b = _rows(os.path.join(killed, "metrics.jsonl"), drop_timing=True)
  assert [r["step"] for r in b] == list(range(1, STEPS + 1))
  assert a == b  # every logged number, exactly (json floats round-trip float64 exactly)
  assert _rows(os.path.join(ref, "samples.jsonl")) == _rows(os.path.join(killed, "samples.jsonl"))
  pa, pb = _final_params(ref), _final_params(killed)
  la, lb = _leaves(pa), _leaves(pb)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_metrics_writer_rewinds_to_the_checkpoint(tmp_path):
  """Rows after the restored step and a half-written last line are dropped, in every JSONL
  file of the workdir; a fresh start (step 0) drops every row."""
  from r1jax.metrics import MetricsWriter
  d = str(tmp_path)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (1, 2, 3)))
    f.write('{"step": 4, "lo')  # killed mid-write
  with open(os.path.join(d, "eval.jsonl"), "w") as f:
    f.write(json.dumps({"step": 0, "acc": 0.5}) + "\n" + json.dumps({"step": 2, "acc": 1}) + "\n")
  with open(os.path.join(d, "samples.jsonl"), "w") as f:
    f.write("".join(json.dumps({"step": s, "completion": "x\ny"}) + "\n" for s in (1, 1, 2, 3, 3)))
  w = MetricsWriter(d, resume_step=2)
  w.write(3, {"loss": 0.3})
  w.write_samples(3, [{"completion": "z"}])
  w.close()
  assert [r["step"] for r in _rows(os.path.join(d, "metrics.jsonl"))] == [1, 2, 3]
  assert _rows(os.path.join(d, "metrics.jsonl"))[-1] == {"step": 3, "loss": 0.3}
  assert [r["step"] for r in _rows(os.path.join(d, "eval.jsonl"))] == [0, 2]
  assert [r["step"] for r in _rows(os.path.join(d, "samples.jsonl"))] == [1, 1, 2, 3]
  MetricsWriter(d, resume_step=0).close()
  assert os.path.getsize(os.path.join(d, "metrics.jsonl")) == 0
  MetricsWriter(d).close()  # None: files untouched


def test_sft_kill_anywhere_and_resume_is_bit_identical(tmp_path):
  """The same for the SFT trainer: killed inside a train step and while a checkpoint is
  written, then restarted, it ends with the uninterrupted run's metrics and params."""
  cache = str(tmp_path / "xla_cache")
  ref, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
  p, _ = _run(ref, cache, program=SFT)
  assert p.returncode == 0, p.stderr[-3000:]
  for fault in ("train:2", "checkpoint:3"):
    p, _ = _run(killed, cache, fault, program=SFT)
    assert p.returncode == -signal.SIGKILL, (fault, p.returncode, p.stderr[-3000:])
  p, _ = _run(killed, cache, program=SFT)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "resumed from step 2" in p.stdout
  a = _rows(os.path.join(ref, "metrics.jsonl"), drop_timing=True)
  b = _rows(os.path.join(killed, "metrics.jsonl"), drop_timing=True)
  assert [r["step"] for r in b] == list(range(1, STEPS + 1))
  assert a == b
  for x, y in zip(_leaves(_final_params(ref)), _leaves(_final_params(killed))):
    np.testing.assert_array_equal(x, y)
