"""Stopping a run that keeps producing NaN/inf: the host side of skipped updates.

The jitted train step skips an update whose loss or gradient norm is not finite
(`steps.keep_if_nonfinite`) and reports it in its metrics. `Guard` counts consecutive
skipped steps on the host and raises `NonFiniteError`, naming the step and the quantity,
once there are more than `max_steps` in a row (0: never stop). Any trainer uses it the
same way: `guard.update(step, metrics)` after each step's metrics are on the host.
"""

from __future__ import annotations

from typing import Any, Mapping


class NonFiniteError(FloatingPointError):
  """Too many consecutive train steps with a non-finite loss or gradient."""


class Guard:
  """Counts consecutive skipped (non-finite) steps; raises past `max_steps`."""

  def __init__(self, max_steps: int):
    if max_steps < 0:
      raise ValueError(f"train.max_nonfinite_steps={max_steps} must be >= 0 (0: never stop)")
    self.max_steps = max_steps
    self.consecutive = 0
    self.total = 0

  def update(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Record step `step`'s metrics; raise NonFiniteError after too many skips in a row."""
    if not int(metrics.get("nonfinite_skipped", 0)):
      self.consecutive = 0
      return
    self.consecutive += 1
    self.total += 1
    if self.max_steps and self.consecutive >= self.max_steps:
      what = " and ".join(name for name, key in (("loss", "nonfinite_loss"),
                                                  ("grad_norm", "nonfinite_grad"))
                          if int(metrics.get(key, 0))) or "loss or grad_norm"
      raise NonFiniteError(
          f"step {step}: {what} not finite (loss={float(metrics.get('loss', float('nan')))}, "
          f"grad_norm={float(metrics.get('grad_norm', float('nan')))}) for {self.consecutive} "
          f"consecutive steps (train.max_nonfinite_steps={self.max_steps}); the updates were "
          f"skipped, params are those of the last finite step. Stopping.")
