"""Bootstrap intervals (r1jax.stats) against exact enumeration of the bootstrap
distribution, the normal approximation, and hand-computed degenerate cases; and where
they surface: evaluation metrics, the trainers' eval hook, the plots, the algorithm bench."""

import itertools
import json
import os

import numpy as np
import pytest

from r1jax import stats


def _exact_quantiles(scores, qs):
  """Quantiles of the exact bootstrap distribution of the mean: all n^n index tuples."""
  n = len(scores)
  means = sorted(sum(scores[i] for i in idx) / n for idx in itertools.product(range(n), repeat=n))
  # Each tuple has probability n^-n; the q-quantile is the smallest mean whose CDF >= q.
  return [means[int(np.ceil(q * len(means))) - 1] for q in qs]


@pytest.mark.parametrize("scores, confidence", [
  ([0.0, 0.0, 1.0], 0.95),  # CDF 8/27, 20/27, 26/27, 1 at 0, 1/3, 2/3, 1
  ([0.0, 0.0, 1.0], 0.90),
  ([0.0, 1.0], 0.80),  # means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4
  ([0.25, 0.5, 1.0], 0.90),
])
def test_bootstrap_matches_exact_enumeration(scores, confidence):
  tail = (1 - confidence) / 2
  want = _exact_quantiles(scores, [tail, 1 - tail])
  got = stats.bootstrap_ci(scores, num_resamples=20000, confidence=confidence)
  np.testing.assert_allclose(got, want, atol=1e-12)


def test_hand_values_of_the_exact_enumeration():
  # Three problems, one solved: the 95% interval is [0, 1], the 90% one [0, 2/3].
  assert _exact_quantiles([0, 0, 1], [0.025, 0.975]) == [0, 1]
  assert _exact_quantiles([0, 0, 1], [0.05, 0.95]) == [0, pytest.approx(2 / 3)]


def test_interval_contains_the_estimate_and_shrinks_like_one_over_sqrt_n():
  rng = np.random.default_rng(1)
  for n in (20, 100, 400):
    x = rng.random(n) < 0.4
    lo, hi = stats.bootstrap_ci(x)
    assert lo <= x.mean() <= hi
  # Half solved: sd 1/2, the normal interval's width is 2 * 1.96 * 0.5 / sqrt(n).
  widths = {}
  for n in (100, 400):
    x = np.tile([0.0, 1.0], n // 2)
    lo, hi = stats.bootstrap_ci(x, num_resamples=4000)
    widths[n] = hi - lo
    assert widths[n] == pytest.approx(2 * 1.96 * 0.5 / np.sqrt(n), rel=0.1)
  assert widths[100] / widths[400] == pytest.approx(2.0, rel=0.15)


def test_degenerate_intervals():
  assert stats.bootstrap_ci([0.25] * 10) == (0.25, 0.25)
  assert stats.bootstrap_ci([0.1] * 7) == (0.1, 0.1)  # no float drift in the mean
  assert stats.bootstrap_ci([1.0]) == (1.0, 1.0)
  a = np.random.default_rng(0).random(50)
  assert stats.paired_diff_ci(a, a) == (0.0, 0.0, 0.0)
  assert not stats.significant(0.0, 0.0)
  # A constant per-problem shift has no pairing noise, however spread the problems are.
  diff, lo, hi = stats.paired_diff_ci([0.0, 0.5, 0.0, 0.75], [0.25, 0.75, 0.25, 1.0])
  assert (diff, lo, hi) == pytest.approx((0.25, 0.25, 0.25))
  assert stats.significant(lo, hi) and stats.significant(-0.3, -0.1)


def test_reproducible_and_validated():
  x = np.random.default_rng(3).random(30)
  assert stats.bootstrap_ci(x) == stats.bootstrap_ci(x)
  assert stats.bootstrap_ci(x, seed=1) != stats.bootstrap_ci(x, seed=2)
  for bad in (dict(num_resamples=0), dict(confidence=1.0), dict(confidence=0.0)):
    with pytest.raises(ValueError):
      stats.bootstrap_ci(x, **bad)
  with pytest.raises(ValueError):
    stats.bootstrap_ci([])
  with pytest.raises(ValueError):
    stats.paired_diff_ci([1.0, 0.0], [1.0])


def test_paired_difference_matches_problems_by_id():
  before = {"id": ["a", "b", "c"], "pass@1": [0.0, 1.0, 0.5]}
  after = {"id": ["c", "a", "d"], "pass@1": [1.0, 1.0, 0.0]}
  d = stats.paired_difference(before, after)
  # Pairs a: 0 -> 1, c: 0.5 -> 1; differences (1, 0.5), resampled means 1/2/3 quarters:
  # 0.5 (1/4), 0.75 (1/2), 1 (1/4) -> the 95% interval is [0.5, 1].
  assert d["num_problems"] == 2 and d["diff"] == pytest.approx(0.75)
  assert (d["lo"], d["hi"]) == pytest.approx((0.5, 1.0)) and d["significant"]
  same = stats.paired_difference(before, before)
  assert (same["diff"], same["lo"], same["hi"], same["significant"]) == (0.0, 0.0, 0.0, False)
  with pytest.raises(ValueError):
    stats.paired_difference(before, {"id": ["z"], "pass@1": [1.0]})


# -- where the intervals surface -------------------------------------------------------

def _records(correct, k):
  return [{"id": f"p{i // k}", "task": "t", "completion": "", "length": 3,
           "normalized": "1" if ok else "2", "reward/accuracy": float(ok), "reward": float(ok)}
          for i, ok in enumerate(np.asarray(correct).reshape(-1))]


def test_records_metrics_and_problem_scores():
  from r1jax import evaluate as ev
  correct = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1]])
  m = ev.records_metrics(_records(correct, 3), 3)
  per = correct.mean(1)
  assert (m["pass@1_lo"], m["pass@1_hi"]) == stats.bootstrap_ci(per)
  assert m["pass@1_lo"] <= m["pass@1"] <= m["pass@1_hi"]
  # cons@3 per problem: the majority answer "1" wins on problems 0 and 3.
  assert (m["cons@3_lo"], m["cons@3_hi"]) == stats.bootstrap_ci([1, 0, 0, 1])
  assert "pass@1_lo" not in ev.records_metrics(_records(correct, 3), 3, ci_resamples=0)
  # Every problem half solved: no spread between problems, a zero-width interval.
  flat = ev.records_metrics(_records(np.tile([1, 0], (5, 1)), 2), 2)
  assert flat["pass@1_lo"] == flat["pass@1_hi"] == 0.5
  rows = ev.problem_scores(_records(correct, 3), 3)
  assert rows["id"] == ["p0", "p1", "p2", "p3"]
  np.testing.assert_allclose(rows["pass@1"], per)
  assert rows["cons@3"] == [1.0, 0.0, 0.0, 1.0]
  text = ev.format_metrics(m)
  assert f"[{m['pass@1_lo']:.4g}, {m['pass@1_hi']:.4g}]" in text and "pass@1_lo" not in text


def test_eval_settings_validate_the_interval_knobs():
  from configs import r1_zero
  from r1jax import evaluate as ev
  c = r1_zero.get_config("tiny")
  assert ev.eval_settings(c)["ci_resamples"] == 1000
  for bad in (dict(ci_resamples=-1), dict(ci_level=1.5)):
    with pytest.raises(ValueError, match=list(bad)[0]):
      ev.eval_settings(c, **bad)


def test_trainer_eval_hook_writes_intervals_and_problem_rows(tmp_path, monkeypatch):
  from r1jax import eval_records
  from r1jax import evaluate as ev
  from r1jax.metrics import MetricsWriter
  from r1jax.sampling import SamplingConfig
  correct = np.array([[1, 0], [1, 1], [0, 0]])
  calls = []
  monkeypatch.setattr(eval_records, "sample_and_score",
                      lambda *a, **kw: calls.append(kw["batch_prompts"]) or _records(correct, 2))
  writer = MetricsWriter(str(tmp_path))
  run_eval = ev.make_evaluator(None, None, [{}] * 3, str, "", None,
                                SamplingConfig(num_samples=2), writer, None, verbose=False,
                                batch_prompts=7)
  monkeypatch.setattr(eval_records, "use_mesh", lambda mesh: __import__("contextlib").nullcontext())
  run_eval(None, None, 5)
  writer.close()
  assert calls == [7]  # train.eval_batch_prompts reaches the sampler
  row = json.loads((tmp_path / "eval.jsonl").read_text())
  assert (row["pass@1_lo"], row["pass@1_hi"]) == stats.bootstrap_ci([0.5, 1.0, 0.0])
  probs = json.loads((tmp_path / "eval_problems.jsonl").read_text())
  assert probs == {"step": 5, "id": ["p0", "p1", "p2"], "pass@1": [0.5, 1.0, 0.0],
                   "cons@2": [1.0, 1.0, 0.0]}


def test_plots_draw_the_band(tmp_path, monkeypatch):
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib.axes import Axes
  from r1jax import plots
  bands = []
  real = Axes.fill_between
  monkeypatch.setattr(Axes, "fill_between",
                      lambda self, x, lo, hi, **kw: bands.append((list(x), list(lo), list(hi)))
                      or real(self, x, lo, hi, **kw))
  with open(tmp_path / "eval.jsonl", "w") as f:
    for s in (0, 10, 20):
      f.write(json.dumps({"step": s, "pass@1": s / 100, "pass@1_lo": s / 200,
                          "pass@1_hi": s / 50, "cons@4": 0.5}) + "\n")
  paths = plots.plot_run(str(tmp_path))
  assert os.path.join(str(tmp_path), "plots", "fig2_heldout_pass1.png") in paths
  # One band: pass@1's (cons@4 logged no interval).
  assert bands == [([0, 10, 20], [0.0, 0.05, 0.1], [0.0, 0.2, 0.4])]


def _fake_run(wd, before, after, ids=("a", "b", "c", "d")):
  os.makedirs(wd)
  with open(os.path.join(wd, "eval.jsonl"), "w") as f:
    for step, p in ((0, before), (9, after)):
      f.write(json.dumps({"step": step, "pass@1": float(np.mean(p))}) + "\n")
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    for step in range(1, 10):
      f.write(json.dumps({"step": step, "step_time_s": 1.0, "reward_mean": 0.1}) + "\n")
  with open(os.path.join(wd, "eval_problems.jsonl"), "w") as f:
    for step, p in ((0, before), (9, after)):
      f.write(json.dumps({"step": step, "id": list(ids), "pass@1": list(p)}) + "\n")


def test_algorithm_bench_reports_paired_differences(tmp_path):
  from r1jax.bench import algorithms
  base = [0.0, 0.25, 0.5, 0.25]
  _fake_run(str(tmp_path / "grpo"), base, [1.0, 1.0, 1.0, 0.75])
  _fake_run(str(tmp_path / "rloo"), base, [1.0, 1.0, 1.0, 0.75])
  _fake_run(str(tmp_path / "gae"), base, base)
  finals = {}
  for algo in ("grpo", "rloo", "gae"):
    summary, finals[algo] = algorithms.summarize_run(str(tmp_path / algo), algo, 60)
  assert summary["pass@1_gain"] == 0.0 and "not significant" in summary["gain"]
  lines = algorithms.comparisons(finals)
  assert lines[0] == "pass@1 rloo - grpo: +0.000 [+0.000, +0.000] over 4 problems (not significant)"
  # gae - grpo per problem: -1, -0.75, -0.5, -0.5: every resampled mean is negative.
  assert lines[1].startswith("pass@1 gae - grpo: -0.688 [") and lines[1].endswith("(significant)")


def _gain_run(wd, before, after, fmt=(0.5, 1.0), ids=("a", "b")):
  os.makedirs(wd)
  with open(os.path.join(wd, "eval.jsonl"), "w") as f:
    for step, p, r in ((0, before, fmt[0]), (30, after, fmt[1])):
      f.write(json.dumps({"step": step, "pass@1": float(np.mean(p)), "format_rate": r,
                          "eval_time_s": 2.0}) + "\n")
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    for step in range(1, 31):
      f.write(json.dumps({"step": step, "step_time_s": 0.5}) + "\n")
  with open(os.path.join(wd, "eval_problems.jsonl"), "w") as f:
    for step, p in ((0, before), (30, after)):
      f.write(json.dumps({"step": step, "id": list(ids), "pass@1": list(p)}) + "\n")


def test_gain_bench_by_hand(tmp_path, capsys):
  from r1jax.bench import gain
  _gain_run(str(tmp_path / "s0"), [0.0, 0.5], [1.0, 1.0])
  _gain_run(str(tmp_path / "s1"), [1.0, 1.0], [1.0, 1.0], fmt=(1.0, 1.0))
  r = gain.run_gain(str(tmp_path / "s0"))
  # Differences (1, 0.5): resampled means 1/2, 3/4, 1 with probabilities 1/4, 1/2, 1/4.
  assert (r["gain"], r["gain_lo"], r["gain_hi"]) == pytest.approx((0.75, 0.5, 1.0))
  assert r["significant"] and r["steps"] == 30 and r["num_problems"] == 2
  assert (r["train_time_s"], r["eval_time_s"]) == (15.0, 4.0)
  # pass@1 0.25 at format 0.5 -> accuracy 0.5 among formatted samples; then 1.0 at 1.0.
  assert (r["acc_given_format_first"], r["acc_given_format_last"]) == (0.5, 1.0)
  p = gain.pooled([r, gain.run_gain(str(tmp_path / "s1"))])
  # Differences (1, 0.5, 0, 0): mean 3/8; all four drawn from the zeros has probability
  # 1/16 > 2.5%, so the interval starts at 0 and the pool is not significant.
  assert p["gain"] == 0.375 and p["gain_lo"] == 0.0 and not p["significant"]
  assert (p["gain_lo"], p["gain_hi"]) == stats.bootstrap_ci([1.0, 0.5, 0.0, 0.0])
  gain.main([str(tmp_path / "s0"), str(tmp_path / "s1")])
  out = capsys.readouterr().out.splitlines()
  assert "gain +0.750 [+0.500, +1.000] over 2 problems" in out[0]
  assert "acc|format 0.500 -> 1.000" in out[0]
  assert out[2].startswith("pooled: gain +0.375 [+0.000, ")
