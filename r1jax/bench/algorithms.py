"""GRPO vs RLOO vs PPO on the default task for the same wall time.

    python -m r1jax.bench.algorithms --wall_s=420 --out=/tmp/r1jax_algos

Each algorithm is one `python -m r1jax.train` run of the default config
(configs/r1_zero.py: SmolLM2-135M, reasoning-gym arithmetic) in its own process (no compile
cache shared), with `train.max_wall_s` = --wall_s counted from the first step (the step-0
held-out eval excluded, the compile of the first step included). The held-out pass@1 is
evaluated before and after (the trainer's eval: 32 problems x 4 samples, T=0.6, top-p 0.95).
Prints one JSON line per algorithm: steps done, mean step time, pass@1 before/after with
their 95% bootstrap intervals, and the gain after - before with its paired interval; then
one line per algorithm after the first: its final pass@1 minus the first's, paired over
the same held-out problems (eval_problems.jsonl), "not significant" where the interval
contains 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

from r1jax import stats



def define_flags() -> None:
  """The CLI's flags, defined only when run as a program (tests import the summaries)."""
  flags.DEFINE_integer("wall_s", 420, "Training wall time per algorithm (seconds).")
  flags.DEFINE_string("out", "/tmp/r1jax_algos", "Directory for the runs.")
  flags.DEFINE_list("algos", ["grpo", "rloo", "ppo"], "rl.algorithm values.")
  flags.DEFINE_list("extra", [], "More --config.x=y overrides for every run.")


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _diff_text(name: str, d: dict) -> str:
  verdict = "significant" if d["significant"] else "not significant"
  return (f"{name}: {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] over "
          f"{d['num_problems']} problems ({verdict})")


def summarize_run(wd: str, algo: str, wall_s: float) -> tuple[dict, dict]:
  """One run's JSON summary and its final eval's per-problem row (eval_problems.jsonl)."""
  evals, rows = _read(os.path.join(wd, "eval.jsonl")), _read(os.path.join(wd, "metrics.jsonl"))
  problems = _read(os.path.join(wd, "eval_problems.jsonl"))
  gain = stats.paired_difference(problems[0], problems[-1])
  times = [r["step_time_s"] for r in rows]
  return {
      "algorithm": algo, "steps": len(rows), "wall_s": wall_s,
      "step_time_s_mean": sum(times) / len(times),
      "step_time_s_median": sorted(times)[len(times) // 2],
      "pass@1_before": evals[0]["pass@1"], "pass@1_after": evals[-1]["pass@1"],
      **{f"pass@1_{when}_{end}": e.get(f"pass@1_{end}") for when, e in
         (("before", evals[0]), ("after", evals[-1])) for end in ("lo", "hi")},
      "pass@1_gain": gain["diff"], "pass@1_gain_lo": gain["lo"], "pass@1_gain_hi": gain["hi"],
      "gain": _diff_text("after - before", gain),
      "eval_steps": [e["step"] for e in evals],
      "reward_mean_first": rows[0]["reward_mean"], "reward_mean_last": rows[-1]["reward_mean"],
  }, problems[-1]


def comparisons(finals: dict[str, dict]) -> list[str]:
  """Each algorithm's final pass@1 minus the first algorithm's, paired over problems."""
  base, *others = list(finals)
  return [_diff_text(f"pass@1 {algo} - {base}",
                     stats.paired_difference(finals[base], finals[algo])) for algo in others]


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  finals = {}
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for algo in f.algos:
    wd = os.path.join(f.out, algo)
    cmd = [sys.executable, "-m", "r1jax.train", f"--config={root}/configs/r1_zero.py",
           f"--workdir={wd}", "--config.train.num_steps=10000",
           f"--config.train.max_wall_s={f.wall_s}", "--config.train.eval_every=10000",
           "--config.train.checkpoint_every=0", "--config.train.sample_every=0",
           f"--config.rl.algorithm={algo}"] + [f"--config.{x}" for x in f.extra]
    subprocess.run(cmd, check=True, cwd=root)
    summary, finals[algo] = summarize_run(wd, algo, f.wall_s)
    print(json.dumps(summary), flush=True)
  for line in comparisons(finals):
    print(line, flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
