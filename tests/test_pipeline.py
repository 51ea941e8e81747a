"""The R1 pipeline on the tiny model: every stage runs; a run killed inside a stage and
restarted ends with the same outputs as an uninterrupted one; a missing input is named."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from r1jax import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/r1.py") + ":tiny"
STAGES = ("cold_start_sft", "reasoning_rl", "rejection_sampling", "reward_model", "sft",
          "all_scenario_rl")


def _cmd(workdir):
  return [sys.executable, "-m", "r1jax.pipeline", f"--config={CONFIG}", f"--workdir={workdir}"]


def _env():
  return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


def test_missing_input_names_stage_and_path(tmp_path):
  from configs import r1
  with pytest.raises(FileNotFoundError, match=r"stage 'sft': input @rejection_sampling/sft.jsonl"):
    pipeline.run(r1.get_config("tiny"), str(tmp_path), ["sft"])


def test_resolve_and_stage_config_roundtrip(tmp_path):
  refs = []
  got = pipeline.resolve({"a": "@x/f.jsonl", "b": ["@y", 3, "z"]}, "/D", refs)
  assert got == {"a": "/D/x/f.jsonl", "b": ["/D/y", 3, "z"]}
  assert refs == [("@x/f.jsonl", "/D/x/f.jsonl"), ("@y", "/D/y")]
  from ml_collections import config_flags  # noqa: F401 - the stage file is a config file
  path = pipeline.write_config({"m": {"shape": (1, 1, 1)}, "s": "it's"}, str(tmp_path / "c.py"))
  ns = {}
  exec(open(path).read(), ns)
  c = ns["get_config"]()
  assert list(c.m.shape) == [1, 1, 1] and c.s == "it's"


def _outputs(d):
  """What the stages made that must not depend on an interruption."""
  out = {"rs": open(os.path.join(d, "rejection_sampling", "sft.jsonl")).read()}
  for s in ("cold_start_sft", "reasoning_rl", "sft", "all_scenario_rl"):
    out[s] = open(os.path.join(d, s, "eval", "samples.jsonl")).read()
    # By step: a killed run may have logged a step whose checkpoint it never finished,
    # which the resumed run logs again.
    out[s + "/loss"] = {r["step"]: r["loss"] for r in map(
        json.loads, open(os.path.join(d, s, "metrics.jsonl")))}
  return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("r1") / "run")
  proc = subprocess.run(_cmd(d), cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return d


@pytest.mark.slow
def test_tiny_pipeline_runs_every_stage(full_run):
  for s in STAGES:
    assert os.path.exists(os.path.join(full_run, s, "DONE.json")), s
  text = open(os.path.join(full_run, "summary.md")).read()
  for s in ("base", "cold_start_sft", "reasoning_rl", "sft", "all_scenario_rl"):
    assert f"| {s} |" in text
  rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
          for l in text.splitlines() if l.startswith("| ") and "---" not in l}
  # every stage has a row with its wall time; the data stages have no held-out metrics
  assert set(rows) == {"stage", "base", *STAGES}
  walls = [float(r[-2]) for s, r in rows.items() if s in STAGES]
  evals = [float(r[-1]) for r in rows.values() if r[-1] not in ("-", "eval wall (s)")]
  assert all(w > 0 for w in walls) and len(evals) == 5
  assert rows["rejection_sampling"][1] == "-" and rows["sft"][1] != "-"
  total = float(text.split("Stages and evaluations: ")[1].split(" s")[0])
  assert total == pytest.approx(sum(walls) + sum(evals), abs=len(walls) + len(evals))
  assert os.path.getsize(os.path.join(full_run, "summary.png")) > 0
  assert os.path.exists(os.path.join(full_run, "reward_model", "checkpoints"))
  assert "\nreward_model, held out at step 4 " in text  # the ORM's held-out line
  m = [json.loads(l) for l in open(os.path.join(full_run, "all_scenario_rl", "metrics.jsonl"))]
  assert "reward/reward_model" in m[-1]


@pytest.mark.slow
def test_killed_inside_a_stage_and_restarted_gives_the_same_outputs(full_run, tmp_path):
  d = str(tmp_path / "run")
  os.makedirs(d)
  last = "all_scenario_rl"
  for s in ("base",) + STAGES[:-1]:  # finished before the crash: copied, then skipped
    shutil.copytree(os.path.join(full_run, s), os.path.join(d, s))
  proc = subprocess.Popen(_cmd(d), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  ckpt = os.path.join(d, last, "checkpoints", "1")
  t0 = time.time()
  while not os.path.isdir(ckpt) and proc.poll() is None and time.time() - t0 < 600:
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and its stage, inside the stage
  proc.wait()
  assert os.path.isdir(ckpt) and not os.path.exists(os.path.join(d, last, "DONE.json"))
  done = subprocess.run(_cmd(d), cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert all(f"{s}: done, skipped" in done.stdout for s in STAGES[:-1])
  # Killed once checkpoint 1 existed; the stage may have finished step 2 before the kill
  # landed, so it resumes from step 1 or 2 (it must resume, not start over or be skipped).
  assert re.search(r"resumed from step [12] ", open(os.path.join(d, last, "stage.log")).read())
  assert _outputs(d) == _outputs(full_run)


def test_reward_model_stage_line_in_the_summary(tmp_path):
  d = tmp_path / "reward_model"
  d.mkdir()
  rows = [{"step": 0, "eval_accuracy": 0.8, "eval_balanced_accuracy": 0.5},
          {"step": 60, "eval_accuracy": 0.75, "eval_balanced_accuracy": 0.7, "eval_auc": 0.8125,
           "eval_majority_share": 0.8, "eval_positives": 40, "eval_negatives": 160}]
  (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  line = pipeline.rm_note("reward_model", str(tmp_path))
  assert line == ("reward_model, held out at step 60 (40 correct, 160 incorrect): accuracy "
                  "0.750, balanced accuracy 0.700, AUC 0.812, majority share 0.800.")
  (d / "eval.jsonl").write_text(json.dumps(rows[0]) + "\n")
  assert pipeline.rm_note("reward_model", str(tmp_path)).endswith(
      "No better than always answering the majority class (balanced accuracy <= 0.55).")
  (d / "eval.jsonl").write_text(json.dumps(dict(rows[1], eval_auc_within_prompt=0.46)) + "\n")
  assert "AUC within prompts 0.460" in pipeline.rm_note("reward_model", str(tmp_path))
  assert "adds no signal" in pipeline.rm_note("reward_model", str(tmp_path))
  assert pipeline.rm_note("sft", str(tmp_path)) is None
  assert pipeline.summary([], 1.0, [line]).endswith("\n\n" + line + "\n")
