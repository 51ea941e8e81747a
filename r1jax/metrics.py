"""Metrics and samples out of a run: JSONL, TensorBoard event files, a progress line.

`MetricsWriter.write(step, metrics)` appends one JSON object per step to
`workdir/metrics.jsonl` and the same scalars to TensorBoard (tensorboardX) under
`workdir/tb`; `write_samples` appends readable completions to `workdir/samples.jsonl`.
Each append is one write of whole rows; `MetricsWriter(..., resume_step=k)` first rewinds
every JSONL file of the workdir to checkpoint step k (`r1jax.jsonl.rewind`), so a run
killed anywhere and resumed logs each step exactly once.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

from r1jax import jsonl


def _scalar(v: Any) -> float | int | None:
  try:
    x = np.asarray(v)
  except Exception:  # noqa: BLE001 - non-numeric metric values are skipped
    return None
  if x.size != 1 or not np.issubdtype(x.dtype, np.number):
    return None
  x = x.item()
  return x if isinstance(x, int) or math.isfinite(x) else float(x)


class MetricsWriter:
  """JSONL + TensorBoard writer; only process 0 writes."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    """`resume_step`: the step the run restarts from (0: from scratch); rows logged after it
    by an earlier, interrupted attempt are dropped. None leaves the files as they are."""
    self.enabled = enabled
    self.workdir = workdir
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        for name in sorted(os.listdir(workdir)):
          if name.endswith(".jsonl"):
            n = jsonl.rewind(os.path.join(workdir, name), resume_step)
            if n:
              print(f"{name}: dropped {n} rows logged after step {resume_step} by an "
                    "interrupted attempt", flush=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:  # TensorBoard output is optional; JSONL is always written
        self._tb = None

  def write(self, step: int, metrics: Mapping[str, Any], filename: str = "metrics.jsonl") -> dict:
    row = {"step": int(step)}
    for k, v in metrics.items():
      s = _scalar(v)
      if s is not None:
        row[k] = s
    if not self.enabled:
      return row
    jsonl.append(os.path.join(self.workdir, filename), [json.dumps(row)])
    if self._tb is not None:
      prefix = "" if filename == "metrics.jsonl" else os.path.splitext(filename)[0] + "/"
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(prefix + k, v, int(step))
      self._tb.flush()
    return row

  def write_samples(self, step: int, samples: Sequence[Mapping[str, Any]],
                    filename: str = "samples.jsonl") -> None:
    if not self.enabled:
      return
    jsonl.append(os.path.join(self.workdir, filename),
                 [json.dumps({"step": int(step), **s}, ensure_ascii=False) for s in samples])
    if self._tb is not None and samples:
      text = "\n\n".join(f"**reward {s.get('reward', 0):.2f}** `{s.get('completion', '')}`"
                         for s in samples[:4])
      self._tb.add_text("samples", text, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """One line per step: step/total, a few metrics, step time and ETA.

  The ETA leaves compilation out: it is the median time of the recent steps that compiled
  nothing (`metrics["compile_s"]` under 5% of `step_time_s`), or, before there is one, the
  latest step's time less its compile time.
  """

  def __init__(self, total: int, start: int = 0, stream=sys.stdout):
    self.total, self.start, self.stream = total, start, stream
    self.t0 = time.time()
    self._steady: list[float] = []

  def eta(self, step: int, metrics: Mapping[str, Any]) -> float:
    t = float(metrics.get("step_time_s", 0.0))
    compile_s = float(metrics.get("compile_s", 0.0))
    if compile_s <= 0.05 * t:
      self._steady = (self._steady + [t])[-20:]
    per_step = float(np.median(self._steady)) if self._steady else max(t - compile_s, 0.0)
    return per_step * (self.total - step)

  def line(self, step: int, metrics: Mapping[str, Any],
           keys: Sequence[str] = ("reward_mean", "accuracy", "format_rate",
                                  "completion_len_mean", "kl", "loss")) -> str:
    eta = self.eta(step, metrics)
    parts = [f"step {step}/{self.total}"]
    for k in keys:
      if k in metrics:
        parts.append(f"{k}={float(metrics[k]):.4g}")
    compiled = float(metrics.get("compile_s", 0.0))
    note = f" ({compiled:.0f}s compiling)" if compiled >= 1 else ""
    parts.append(f"{metrics.get('step_time_s', 0):.1f}s/step{note} eta {_hms(eta)}")
    msg = " | ".join(parts)
    print(msg, file=self.stream, flush=True)
    return msg


def bar(done: int, total: int, width: int = 20) -> str:
  """A text progress bar: `[#####-----] done/total`."""
  n = int(width * done / max(total, 1))
  return f"[{'#' * n}{'-' * (width - n)}] {done}/{total}"


def _hms(s: float) -> str:
  s = int(s)
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
