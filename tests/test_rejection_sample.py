"""Rejection sampling: per-prompt records by hand, the tiny CLI run, resume after a crash."""

import json
import os
import subprocess
import sys

import pytest

from r1jax import filters as F
from r1jax import rejection_sample as rs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = {"id": "p1", "question": "What is 2+3?", "answer": "5", "task": "arith"}


def _rec(i, completion, acc, truncated=False, invalid=False):
  return {"sample": i, "completion": completion, "reward/accuracy": acc, "reward": acc,
          "truncated": truncated, "invalid": invalid, "prompt": "P"}


def test_process_prompt_by_hand():
  cfg = F.FilterConfig(min_language=0, max_per_prompt=1)
  recs = [_rec(0, " 2 plus 3 is 5 </think> <answer> 5 </answer>", 1.0),
          _rec(1, " 2 plus 3 is 6 </think> <answer> 6 </answer>", 0.0),
          _rec(2, " 2 plus 3 is", 0.0, truncated=True),
          _rec(3, " two plus three is five </think> <answer> 5 </answer>", 1.0)]
  kept, log = rs.process_prompt(EX, recs, cfg, "<think>", "accuracy")
  assert [r["id"] for r in kept] == ["p1#0"]
  assert kept[0]["messages"] == [
      {"role": "user", "content": "What is 2+3?"},
      {"role": "assistant", "content": "<think> 2 plus 3 is 5 </think> <answer> 5 </answer>"}]
  # Correct: samples 0 and 3 of the three that finished... and the truncated one counts
  # as verified-incorrect (accuracy 0): 2 of 4.
  assert kept[0]["pass_rate"] == log["pass_rate"] == 0.5
  assert [d["drop_reason"] for d in log["dropped"]] == ["incorrect", "truncated", "over_limit"]
  assert log["kept"] == 1 and log["answer"] == "5"


def test_unverifiable_dropped_or_judged():
  recs = [_rec(0, " fine </think> <answer> x </answer>", 0.0, invalid=True),
          _rec(1, " also fine </think> <answer> y </answer>", 0.0, invalid=True)]
  cfg = F.FilterConfig(min_language=0)
  kept, log = rs.process_prompt(EX, recs, cfg, "<think>", "accuracy")
  assert kept == [] and log["pass_rate"] is None
  assert [d["drop_reason"] for d in log["dropped"]] == ["unverifiable"] * 2
  kept, log = rs.process_prompt(EX, recs, cfg, "<think>", "accuracy", judged=[True, False])
  assert [r["id"] for r in kept] == ["p1#0"] and log["pass_rate"] == 0.5
  assert log["dropped"][0]["drop_reason"] == "incorrect"


def test_reward_model_data_from_own_samples():
  logs = [{"id": "p1", "prompt": "Q <think>", "prefill": "<think>", "dropped": [
      {"completion": "<think> bad", "drop_reason": "incorrect"},
      {"completion": "<think> bad", "drop_reason": "incorrect"},  # a repeat: one row, as kept
      {"completion": "<think> dup", "drop_reason": "duplicate"},
      {"completion": "<think> rep", "drop_reason": "repetition"}]}]
  records = [{"prompt_id": "p1", "messages": [{"role": "user", "content": "Q"},
                                               {"role": "assistant", "content": "<think> ok"}]}]
  pairs, rows = rs.reward_model_data(logs, records)
  assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("Q <think>", " ok",
                                                                         " bad")]
  assert [(r["completion"], r["correct"]) for r in rows] == [(" ok", 1), (" bad", 0),
                                                              (" rep", 0)]


def test_mix_records_by_weight():
  reasoning = [{"id": f"r{i}"} for i in range(10)]
  general = [{"id": f"g{i}"} for i in range(3)]
  mixed = rs.mix_records(reasoning, [(general, 0.5)], 1.0, seed=0)
  ids = [r["id"] for r in mixed]
  assert len(ids) == 15 and sum(i.startswith("g") for i in ids) == 5
  assert set(i for i in ids if i.startswith("r")) == {f"r{i}" for i in range(10)}


def _outputs(out):
  files = {}
  for suffix in ("", ".prompts.jsonl", ".rl_prompts.jsonl", ".stats.json", ".labeled.jsonl"):
    with open(out + suffix) as f:
      files[suffix] = f.read()
  return files


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("rs") / "sft.jsonl")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run(
      [sys.executable, "-m", "r1jax.rejection_sample",
       "--config=" + os.path.join(ROOT, "configs/rejection_sample.py") + ":tiny",
       f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


def test_tiny_cli(cli_run):
  from configs import rejection_sample as cfg_mod
  c = cfg_mod.get_config("tiny")
  logs = [json.loads(l) for l in open(cli_run + ".prompts.jsonl")]
  st = json.load(open(cli_run + ".stats.json"))
  assert len(logs) == st["prompts"] == c.data.source.size
  assert st["samples"] == c.data.source.size * c.sampling.num_samples
  assert st["kept"] + sum(st[r] for r in F.REASONS) == st["samples"]
  for log in logs:
    assert log["kept"] + len(log["dropped"]) == c.sampling.num_samples
    assert all(d["drop_reason"] in F.REASONS for d in log["dropped"])


def test_resume_after_crash_gives_the_same_files(cli_run, tmp_path):
  from configs import rejection_sample as cfg_mod
  c = cfg_mod.get_config("tiny")
  want = _outputs(cli_run)
  out = str(tmp_path / "sft.jsonl")
  # A run that died while writing prompt 3's log line (its records all written), with
  # one stray record of a prompt that never got logged.
  log_lines = want[".prompts.jsonl"].splitlines(keepends=True)
  with open(out + ".prompts.jsonl", "w") as f:
    f.write("".join(log_lines[:2]) + log_lines[2][:20])
  done = {json.loads(l)["id"] for l in log_lines[:2]}
  recs = [l for l in want[""].splitlines(keepends=True) if json.loads(l)["prompt_id"] in done]
  with open(out, "w") as f:
    f.write("".join(recs) + json.dumps({"prompt_id": "never-logged"}) + "\n")
  rs.run(c, None, out)
  assert _outputs(out) == want
