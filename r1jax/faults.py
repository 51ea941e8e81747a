"""Fault injection for the kill -9 tests: `R1JAX_FAULT=point:step[,point:step...]`.

`hit(point, step)` SIGKILLs this process when the environment names that point and step;
without the variable it does nothing (one dict lookup). The trainers call it at:

* `sample`     - the rollout computation dispatched, its results not yet fetched;
* `reward`     - completions decoded, reward scoring about to start (pool workers alive);
* `train`      - the train step dispatched (state buffers donated), not yet finished;
* `checkpoint` - inside `Checkpointer.save`, once the step's temporary directory has files
  (the write is in progress, nothing renamed yet).

`step` is the step being produced (1-based: the step number its metrics row will carry).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

POINTS = ("sample", "reward", "train", "checkpoint")


@functools.cache
def _armed() -> frozenset[tuple[str, int]]:
  spec = os.environ.get("R1JAX_FAULT", "")
  out = set()
  for item in filter(None, (s.strip() for s in spec.split(","))):
    point, _, step = item.partition(":")
    if point not in POINTS or not step.isdigit():
      raise ValueError(f"R1JAX_FAULT={spec!r}: expected point:step with point in {POINTS}")
    out.add((point, int(step)))
  return frozenset(out)


def armed(point: str, step: int) -> bool:
  return (point, step) in _armed()


def kill() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def hit(point: str, step: int) -> None:
  """SIGKILL this process if R1JAX_FAULT names (point, step)."""
  if armed(point, step):
    kill()


def kill_when_files_appear(directory: str, prefix: str, timeout_s: float = 60.0) -> None:
  """A watcher thread that SIGKILLs this process as soon as a directory entry of
  `directory` starting with `prefix` holds a file (a checkpoint write in progress)."""
  def watch():
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
      try:
        for name in os.listdir(directory):
          if name.startswith(prefix) and any(files for _, _, files in
                                             os.walk(os.path.join(directory, name))):
            kill()
      except OSError:
        pass
      time.sleep(0.0005)
    kill()
  threading.Thread(target=watch, daemon=True).start()
