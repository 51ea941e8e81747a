"""Held-out gain of training runs: pass@1 at a run's last eval minus its first, with the
paired bootstrap interval over problems, and how much of it is format.

    python -m r1jax.bench.gain /tmp/r1z_seed0 /tmp/r1z_seed1 /tmp/r1z_seed2

Reads each WORKDIR's eval.jsonl and eval_problems.jsonl (the trainer writes both) and
prints one line per run: steps, wall time, pass@1 first -> last eval, the gain with its
95% interval (`r1jax.stats.paired_difference`: the same problems before and after),
format rate first -> last, and accuracy among formatted samples (pass@1 / format rate;
the accuracy reward needs the <answer> tags, so a gain that is only format leaves this
flat). With several runs, a pooled line: the per-problem differences of all runs
bootstrapped together (each run holds out its own problems). `--json` prints the rows.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import numpy as np

from r1jax import stats
from r1jax.plots import read_jsonl


def run_gain(workdir: str) -> dict:
  """One run's first and last held-out eval, paired over problems."""
  evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
  problems = read_jsonl(os.path.join(workdir, "eval_problems.jsonl"))
  if len(evals) < 2 or len(problems) < 2:
    raise ValueError(f"{workdir}: needs two evals (eval.jsonl, eval_problems.jsonl)")
  first, last = evals[0], evals[-1]
  d = stats.paired_difference(problems[0], problems[-1])
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  out = {"workdir": workdir, "steps": last["step"] - first["step"],
         "pass@1_first": first["pass@1"], "pass@1_last": last["pass@1"],
         "gain": d["diff"], "gain_lo": d["lo"], "gain_hi": d["hi"],
         "num_problems": d["num_problems"], "significant": d["significant"],
         "diffs": _diffs(problems[0], problems[-1]),
         "eval_time_s": sum(e.get("eval_time_s", 0.0) for e in evals),
         "train_time_s": sum(r.get("step_time_s", 0.0) for r in rows)}
  for when, e in (("first", first), ("last", last)):
    fmt = e.get("format_rate")
    out[f"format_{when}"] = fmt
    out[f"acc_given_format_{when}"] = e["pass@1"] / fmt if fmt else None
  return out


def _diffs(before: dict, after: dict) -> list[float]:
  x, y = stats.paired_scores(before, after)
  return [b - a for a, b in zip(x, y)]


def pooled(runs: Sequence[dict]) -> dict:
  """Mean per-problem gain over all runs' problems, with its bootstrap interval."""
  d = np.concatenate([r["diffs"] for r in runs])
  lo, hi = stats.bootstrap_ci(d)
  return {"gain": float(d.mean()), "gain_lo": lo, "gain_hi": hi, "num_problems": int(d.size),
          "significant": stats.significant(lo, hi)}


def _fmt(x: float | None) -> str:
  return "n/a" if x is None else f"{x:.3f}"


def line(r: dict) -> str:
  return (f"{r['workdir']}: {r['steps']} steps, train {r['train_time_s']:.0f}s + eval "
          f"{r['eval_time_s']:.0f}s; pass@1 {r['pass@1_first']:.3f} -> {r['pass@1_last']:.3f}, "
          f"gain {r['gain']:+.3f} [{r['gain_lo']:+.3f}, {r['gain_hi']:+.3f}] over "
          f"{r['num_problems']} problems; format {_fmt(r['format_first'])} -> "
          f"{_fmt(r['format_last'])}; acc|format {_fmt(r['acc_given_format_first'])} -> "
          f"{_fmt(r['acc_given_format_last'])}")


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("workdirs", nargs="+")
  ap.add_argument("--json", action="store_true")
  a = ap.parse_args(argv)
  runs = [run_gain(w) for w in a.workdirs]
  for r in runs:
    print(json.dumps({k: v for k, v in r.items() if k != "diffs"}) if a.json else line(r))
  if len(runs) > 1:
    p = pooled(runs)
    print(json.dumps(p) if a.json else
          f"pooled: gain {p['gain']:+.3f} [{p['gain_lo']:+.3f}, {p['gain_hi']:+.3f}] over "
          f"{p['num_problems']} problems of {len(runs)} runs")


if __name__ == "__main__":
  main()
