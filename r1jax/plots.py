"""Training and evaluation curves of a run as PNGs (the paper's Figures 2 and 3 for our runs).

    python -m r1jax.plots --workdir=/tmp/r1z [--out=/tmp/r1z/plots] [--smooth=0.8]

Reads WORKDIR/metrics.jsonl (one row per logged training step) and WORKDIR/eval.jsonl
(the trainer's periodic held-out evaluation) and writes:
  training_curves.png      reward, accuracy, format rate, response length, KL and
                           reflection share over steps (raw and smoothed)
  fig2_heldout_pass1.png   held-out pass@1 (and cons@k) over steps (paper, Figure 2), with
                           the bootstrap confidence band where eval.jsonl has
                           pass@1_lo / pass@1_hi (cons@k_lo / cons@k_hi)
  fig3_response_length.png mean response length over steps (paper, Figure 3)
  reflection_share.png     share of responses with reflection phrases over steps
  tool_use.png             runs with tools: share of responses that call a tool, and
                           accuracy, over steps (training rollouts and held-out)
Metrics a run did not log are left out. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Sequence

import numpy as np

TRAIN_PANELS = (  # (key, title), first key found wins
    (("reward_mean",), "reward (mean)"),
    (("accuracy", "reward/accuracy"), "accuracy"),
    (("format_rate", "reward/format"), "format rate"),
    (("completion_len_mean",), "response length (tokens)"),
    (("kl",), "KL to reference"),
    (("reflection_rate",), "reflection share"),
)


def read_jsonl(path: str) -> list[dict]:
  """Rows of a JSONL file (missing file: []); later rows of a step replace earlier ones
  (a resumed run re-logs the steps after its last checkpoint)."""
  if not os.path.exists(path):
    return []
  by_step: dict[int, dict] = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        row = json.loads(line)
        by_step[int(row.get("step", len(by_step)))] = row
  return [by_step[s] for s in sorted(by_step)]


def series(rows: Sequence[dict], keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str] | None:
  for k in keys:
    pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
    if pts:
      s, v = zip(*pts)
      return np.asarray(s), np.asarray(v, np.float64), k
  return None


def ema(v: np.ndarray, alpha: float) -> np.ndarray:
  """Debiased exponential moving average (TensorBoard-style smoothing); alpha=0 is raw."""
  out, acc, norm = np.empty_like(v), 0.0, 0.0
  for i, x in enumerate(v):
    acc = alpha * acc + (1 - alpha) * x
    norm = alpha * norm + (1 - alpha)
    out[i] = acc / norm
  return out


def _plot_series(ax, s, v, smooth: float, label: str | None = None, color=None):
  if smooth > 0 and len(v) > 3:
    line = ax.plot(s, v, alpha=0.25, color=color)[0]
    ax.plot(s, ema(v, smooth), color=line.get_color(), label=label)
  else:
    ax.plot(s, v, marker="o" if len(v) < 30 else None, ms=3, color=color, label=label)


def _band(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """(steps, lo, hi) of the eval rows that logged `key`'s interval (KEY_lo / KEY_hi)."""
  pts = [(r["step"], r[key + "_lo"], r[key + "_hi"]) for r in rows
         if isinstance(r.get(key + "_lo"), (int, float))
         and isinstance(r.get(key + "_hi"), (int, float))]
  if not pts:
    return None
  s, lo, hi = zip(*pts)
  return np.asarray(s), np.asarray(lo, np.float64), np.asarray(hi, np.float64)


def plot_run(workdir: str, out_dir: str | None = None, smooth: float = 0.8) -> list[str]:
  """Write the PNGs for the run in `workdir`; returns their paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out_dir = out_dir or os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  train = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
  name = os.path.basename(os.path.abspath(workdir))
  written = []

  def save(fig, fname):
    path = os.path.join(out_dir, fname)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

  panels = [(series(train, keys), title) for keys, title in TRAIN_PANELS]
  panels = [(s, t) for s, t in panels if s is not None]
  if panels:
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, ((s, v, key), title) in zip(axes.flat, panels):
      _plot_series(ax, s, v, smooth)
      ax.set_title(title)
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
      ax.axis("off")
    fig.suptitle(f"{name}: training")
    save(fig, "training_curves.png")

  if evals:
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = banded = False
    keys = sorted({k for r in evals for k in r if re.fullmatch(r"(pass|cons)@\d+", k)},
                  key=lambda k: (k.split("@")[0] != "pass", int(k.split("@")[1])))
    for k in keys:
      s = series(evals, (k,))
      if s is not None:
        line = ax.plot(s[0], s[1], marker="o" if len(s[1]) < 30 else None, ms=3, label=k)[0]
        band = _band(evals, k)
        if band is not None:
          ax.fill_between(*band, color=line.get_color(), alpha=0.2, linewidth=0)
          banded = True
        plotted = True
    if plotted:
      ax.set_xlabel("step")
      ax.set_ylabel("held-out accuracy" + (" (band: bootstrap CI over problems)"
                                           if banded else ""))
      ax.set_title(f"{name}: held-out pass@1 during training (cf. R1 Figure 2)")
      ax.grid(alpha=0.3)
      ax.legend()
      save(fig, "fig2_heldout_pass1.png")
    else:
      plt.close(fig)

  def train_and_eval(key, ylabel, title, fname):
    """One metric from the training rollouts (smoothed) and the held-out evaluation."""
    tr, ev = series(train, (key,)), series(evals, (key,))
    if not (tr or ev):
      return
    fig, ax = plt.subplots(figsize=(6, 4))
    if tr:
      _plot_series(ax, tr[0], tr[1], smooth, label="training rollouts")
    if ev:
      _plot_series(ax, ev[0], ev[1], 0.0, label="held-out evaluation")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{name}: {title}")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, fname)

  train_and_eval("completion_len_mean", "average length per response (tokens)",
                 "response length (cf. R1 Figure 3)", "fig3_response_length.png")
  train_and_eval("reflection_rate", "share of responses", "responses with reflection phrases",
                 "reflection_share.png")

  if series(train, ("tools/call_rate",)) or series(evals, ("tools/call_rate",)):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (tkey, ekey, title) in zip(axes, (
        ("tools/call_rate", "tools/call_rate", "responses with a tool call"),
        ("accuracy", "pass@1", "accuracy (held-out: pass@1)"))):
      tr, ev = series(train, (tkey,)), series(evals, (ekey,))
      if tr:
        _plot_series(ax, tr[0], tr[1], smooth, label="training rollouts")
      if ev:
        _plot_series(ax, ev[0], ev[1], 0.0, label="held-out evaluation")
      ax.set_ylim(-0.03, 1.03)
      ax.set_xlabel("step")
      ax.set_title(title)
      ax.grid(alpha=0.3)
      ax.legend()
    fig.suptitle(f"{name}: tool use")
    save(fig, "tool_use.png")
  return written


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", default="", help="default: WORKDIR/plots")
  ap.add_argument("--smooth", type=float, default=0.8, help="EMA weight in [0, 1); 0: raw")
  args = ap.parse_args(argv)
  if not 0 <= args.smooth < 1:
    ap.error(f"--smooth must be in [0, 1), got {args.smooth}")
  paths = plot_run(args.workdir, args.out or None, args.smooth)
  if not paths:
    raise SystemExit(f"nothing to plot: no metrics.jsonl / eval.jsonl rows in {args.workdir}")
  for p in paths:
    print(p)


if __name__ == "__main__":
  main()
