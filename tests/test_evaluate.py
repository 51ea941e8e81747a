"""Evaluation protocol: pass@k / cons@k on fixed samples, metrics from records, checkpoint
restore, and the `python -m r1jax.evaluate` CLI end to end on the tiny config."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import evaluate as ev

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pass_at_k_hand_values():
  assert ev.pass_at_k(5, 2, 1) == pytest.approx(0.4)
  assert ev.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
  assert ev.pass_at_k(5, 2, 4) == 1.0  # only 3 wrong: any 4 contain a right one
  assert ev.pass_at_k(4, 0, 2) == 0.0
  assert ev.pass_at_k(16, 3, 8) == pytest.approx(1 - math.comb(13, 8) / math.comb(16, 8))
  with pytest.raises(ValueError):
    ev.pass_at_k(2, 1, 3)


def test_majority_vote_and_summarize_on_fixed_samples():
  assert ev.majority_vote(["3", "4", "3", None], [1, 0, 1, 0]) == 1.0
  assert ev.majority_vote(["4", "3", "4", "3"], [0, 1, 0, 1]) == 0.0  # tie: first seen ("4")
  assert ev.majority_vote([None, None], [0, 0]) == 0.0
  assert ev.majority_vote(["7", None, None, "5", "5"], [0, 1, 1, 1, 1]) == 1.0  # None not voted
  correct = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])
  answers = [["12", "11", "11", "12"],  # tie 12/11 -> 12 (first seen), correct
             ["1", "2", None, "2"],  # majority "2", wrong
             ["9", "9", "9", "8"]]  # majority right
  m = ev.summarize(correct, answers, ks=(2, 4, 8))
  assert m["pass@1"] == pytest.approx(5 / 12)
  assert m["cons@4"] == pytest.approx(2 / 3)
  want2 = np.mean([1 - math.comb(2, 2) / math.comb(4, 2), 0.0, 1.0])
  assert m["pass@2"] == pytest.approx(want2)
  assert m["pass@4"] == pytest.approx(2 / 3)
  assert "pass@8" not in m  # k > n is not reported


def _records():
  # 2 tasks x 2 problems x k=3 samples.
  rows = []
  spec = [("add", [1, 0, 1], ["5", "6", "5"], [10, 20, 30]),
          ("add", [0, 0, 0], ["1", None, "2"], [40, 50, 60]),
          ("mul", [0, 1, 1], ["8", "9", "9"], [5, 5, 5]),
          ("mul", [1, 1, 1], ["4", "4", "4"], [100, 1, 1])]
  texts = ["so the answer", "Wait, let me re-check", "hmm.", "ok", "fine", "double-check this"]
  for p, (task, ok, ans, lens) in enumerate(spec):
    for j in range(3):
      rows.append({"id": str(p), "task": task, "completion": texts[(3 * p + j) % 6],
                   "normalized": ans[j], "length": lens[j], "reward/accuracy": float(ok[j]),
                   "reward/format": 1.0 if j else 0.0, "reward": float(ok[j]),
                   "truncated": lens[j] >= 100})
  return rows


def test_records_metrics_with_tasks_lengths_and_reflection():
  m = ev.records_metrics(_records(), 3, ("wait", "re-check", "double-check", "hmm"),
                         ks=(1, 2, 3), percentiles=(50, 90))
  assert m["pass@1"] == pytest.approx(7 / 12)
  assert m["cons@3"] == pytest.approx(3 / 4)  # 5 right, 1/2 tie -> "1" wrong, 9 right, 4 right
  assert m["pass@3"] == pytest.approx(3 / 4)
  assert m["pass@1/add"] == pytest.approx(2 / 6) and m["pass@1/mul"] == pytest.approx(5 / 6)
  assert m["cons@3/add"] == 0.5 and m["cons@3/mul"] == 1.0
  assert m["num_problems"] == 4 and m["num_problems/add"] == 2
  lengths = [10, 20, 30, 40, 50, 60, 5, 5, 5, 100, 1, 1]
  assert m["completion_len_mean"] == pytest.approx(np.mean(lengths))
  assert m["completion_len_p50"] == pytest.approx(np.percentile(lengths, 50))
  assert m["completion_len_p90"] == pytest.approx(np.percentile(lengths, 90))
  assert m["completion_len_max"] == 100
  assert m["format_rate"] == pytest.approx(8 / 12)
  assert m["truncated_rate"] == pytest.approx(1 / 12)
  # "Wait"/"re-check", "hmm", "double-check" texts: indices 1, 2, 5 of every 6.
  assert m["reflection_rate"] == pytest.approx(6 / 12)
  # The trainer's call (positional, defaults) still works.
  assert ev.records_metrics(_records(), 3, ())["pass@3"] == pytest.approx(3 / 4)
  with pytest.raises(ValueError):
    ev.records_metrics(_records()[:5], 3)


def _tiny_config():
  from configs import r1_zero
  c = r1_zero.get_config("tiny")
  c.unlock()
  c.rewards.weights = {"accuracy": 1.0, "format": 0.2}
  return c


def _save_checkpoint(workdir, params, step):
  from r1jax import memory, steps
  from r1jax.checkpoint import Checkpointer
  tx = steps.make_optimizer(steps.OptimConfig())
  ck = Checkpointer(os.path.join(workdir, "checkpoints"))
  ck.save(step, memory.init_state(params, tx), jax.random.key(0), {})
  ck.close()


def test_restore_params_from_workdir_or_step_dir(tmp_path):
  from r1jax.model import PRESETS, init_params
  cfg = PRESETS["tiny"]
  saved = init_params(cfg, 7)
  _save_checkpoint(str(tmp_path), saved, 3)
  _save_checkpoint(str(tmp_path), jax.tree.map(lambda x: x + 1, saved), 5)
  like = init_params(cfg, 0)
  got, step = ev.restore_params(str(tmp_path), like)  # workdir: latest step
  assert step == 5
  np.testing.assert_array_equal(got["embed"], saved["embed"] + 1)
  got, step = ev.restore_params(str(tmp_path / "checkpoints" / "3"), like)
  assert step == 3
  jax.tree.map(np.testing.assert_array_equal, got, saved)
  with pytest.raises(FileNotFoundError):
    ev.restore_params(str(tmp_path / "nothing"), like)


def test_cli_end_to_end(tmp_path):
  """`python -m r1jax.evaluate` on a tiny checkpoint: JSONL of every sample + metrics."""
  from r1jax.model import PRESETS, init_params
  workdir = tmp_path / "run"
  _save_checkpoint(str(workdir), init_params(PRESETS["tiny"], 3), 4)
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "r1jax.evaluate", "--config=configs/r1_zero.py:tiny",
         f"--checkpoint={workdir}", f"--output_dir={out}", "--num_problems=3",
         "--num_samples=4", "--max_new_tokens=8", "--config.data.num_eval=4"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "pass@1" in proc.stdout and "cons@4" in proc.stdout
  res = json.loads((out / "metrics.json").read_text())
  assert res["step"] == 4 and res["num_samples_total"] == 12
  assert res["settings"]["temperature"] == 0.6 and res["settings"]["top_p"] == 0.95
  m = res["metrics"]
  for key in ("pass@1", "pass@2", "pass@4", "cons@4", "completion_len_mean",
              "completion_len_p50", "reflection_rate", "format_rate", "pass@1_lo", "pass@1_hi",
              "cons@4_lo", "cons@4_hi"):
    assert key in m, key
  assert m["pass@1_lo"] <= m["pass@1"] <= m["pass@1_hi"]
  assert "95% bootstrap interval over problems" in proc.stdout
  rows = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
  assert len(rows) == 12 and [r["sample"] for r in rows[:4]] == [0, 1, 2, 3]
  assert all(r["step"] == 4 and 1 <= r["length"] <= 8 for r in rows)
  recomputed = ev.records_metrics(rows, 4, ("wait",), ks=(1, 2, 4))
  assert recomputed["pass@1"] == m["pass@1"] and recomputed["cons@4"] == m["cons@4"]
  assert recomputed["pass@1_hi"] == m["pass@1_hi"]


def test_config_renderer_uses_every_data_knob():
  """Trainer and evaluation render through data.make_renderer: few-shot included."""
  from r1jax import data
  from r1jax.tokenizer import Tokenizer
  c = _tiny_config()
  c.unlock()
  c.data.few_shot = [dict(question="Calculate 1 + 1.", completion="<think> 2 </think> <answer> 2 </answer>")]
  tok = Tokenizer.byte_level(256)
  got = data.make_renderer(c.data, tok)({"question": "What is 2 + 3?", "answer": "5"})
  want = data.render_prompt("What is 2 + 3?", "r1_zero", think_prefill=True,
                            few_shot=[dict(c.data.few_shot[0])])
  assert got == want
  assert "User: Calculate 1 + 1. Assistant: <think> 2 </think> <answer> 2 </answer>" in got


def test_plots_from_run_logs(tmp_path):
  from r1jax import plots
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for s in range(1, 41):
      f.write(json.dumps({"step": s, "reward_mean": s / 40, "accuracy": s / 50,
                          "format_rate": 1 - 1 / s, "completion_len_mean": 20 + s, "kl": 1e-3 * s,
                          "reflection_rate": s / 80}) + "\n")
    f.write(json.dumps({"step": 40, "reward_mean": 1.0}) + "\n")  # a resumed run re-logs
  with open(tmp_path / "eval.jsonl", "w") as f:
    for s in (0, 10, 20, 30, 40):
      f.write(json.dumps({"step": s, "pass@1": s / 100, "pass@4": s / 60, "cons@4": s / 70,
                          "completion_len_mean": 30 + s, "pass@1/add": 0.1}) + "\n")
  plots.main(["--workdir", str(tmp_path)])
  names = sorted(os.listdir(tmp_path / "plots"))
  assert names == ["fig2_heldout_pass1.png", "fig3_response_length.png", "reflection_share.png",
                   "training_curves.png"]
  for n in names:
    assert (tmp_path / "plots" / n).read_bytes()[:4] == b"\x89PNG"
  assert [r["step"] for r in plots.read_jsonl(str(tmp_path / "metrics.jsonl"))] == list(
      range(1, 41))
  np.testing.assert_allclose(plots.ema(np.array([1.0, 1.0, 1.0]), 0.9), [1.0, 1.0, 1.0])


def test_eval_settings_layering():
  import ml_collections
  c = _tiny_config()
  s = ev.eval_settings(c)
  assert s["num_samples"] == ev.EVAL_DEFAULTS["num_samples"] and s["temperature"] == 0.6
  assert s["max_new_tokens"] == c.sampling.max_new_tokens
  assert s["reflection_words"] == tuple(c.train.reflection_words)
  c.eval = ml_collections.ConfigDict(dict(
      num_samples=8, temperature=0.7, source=ml_collections.config_dict.placeholder(dict),
      reflection_words=("wait",)))
  s = ev.eval_settings(c, num_samples=None, top_p=0.9)
  assert (s["num_samples"], s["temperature"], s["top_p"], s["source"]) == (8, 0.7, 0.9, None)
  assert s["reflection_words"] == ("wait",)
  assert ev.eval_settings(c, num_samples=32)["num_samples"] == 32
  c.eval.bogus = 1
  with pytest.raises(ValueError, match="bogus"):
    ev.eval_settings(c)
