"""RewardPool: score completions with named rewards in worker processes, under deadlines.

Each (completion, reward) pair is one task with a hard deadline enforced by the parent:
a worker that misses it is killed (SIGKILL) and replaced, and the task scores 0 and is
counted in `failures`. No signals are used for timing (works from any thread), and
math-verify's own signal-based timeouts are disabled in the rewards.

Workers are fresh interpreters (`python -m r1jax.rewards.worker`) started with
subprocess: like the 'spawn' start method they share nothing with the parent (which may
run JAX threads, so fork is unsafe), but unlike multiprocessing they do not re-import
the parent's `__main__` (a training script importing JAX), so they start in about a
second. They warm up (imports, models) before taking work, off the deadline clock, and
are reused across calls.

`score_inline` runs the same per-item code in-process, sequentially, without deadlines
(for notebooks and tests).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any, Mapping, Sequence

import numpy as np

from r1jax.rewards.base import Example, InvalidReference, RewardFn, with_prefill
from r1jax.rewards.registry import REWARDS

STARTUP_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class RewardResult:
  """Scores of n completions, in input order.

  total: float32[n], the weighted sum of the rewards.
  per_reward: name -> float32[n], unweighted.
  failures: name -> number of timeouts and crashes (each scored 0).
  invalid: number of completions whose example has an unusable reference (InvalidReference)
    for at least one reward of non-zero weight; that reward scores 0.
  invalid_mask: bool[n], which completions those are.
  invalid_per_reward: name -> number of InvalidReference items, weight-0 rewards included
    (a measured-only "accuracy" on a code dataset is invalid everywhere, harmlessly).
  max_seconds: name -> longest time one item took (dispatch to answer or kill).
  extras: name -> a list of n per-row values logged beside each sample (e.g. the judge's
    verdict and completion), not rewards.
  """

  total: np.ndarray
  per_reward: dict[str, np.ndarray]
  failures: dict[str, int]
  invalid: int
  invalid_mask: np.ndarray
  invalid_per_reward: dict[str, int]
  max_seconds: dict[str, float]
  extras: dict[str, list] = dataclasses.field(default_factory=dict)


def bind_reward(name: str, kwargs: Mapping[str, Any] | None = None) -> RewardFn:
  """The registered reward `name` with keyword arguments bound."""
  if name not in REWARDS:
    raise KeyError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
  fn = REWARDS[name]
  return functools.partial(fn, **kwargs) if kwargs else fn


def call_reward(fn: RewardFn, completion: str, example: Example) -> tuple[str, float]:
  """Run one reward on one completion: ("ok" | "invalid" | "error", value).

  The one place where example["prefill"] is prepended to the completion.
  """
  try:
    value = float(fn(with_prefill(completion, example), example))
  except InvalidReference:
    return "invalid", 0.0
  except Exception:  # noqa: BLE001 - a crashing reward scores 0 and is counted
    return "error", 0.0
  if not math.isfinite(value):
    return "error", 0.0
  return "ok", value


class _Results:
  """Accumulates per-task outcomes into a RewardResult."""

  def __init__(self, weights: Mapping[str, float], n: int):
    self.weights = dict(weights)
    self.scores = {name: np.zeros(n, np.float32) for name in weights}
    self.failures = {name: 0 for name in weights}
    self.invalid_counts = {name: 0 for name in weights}
    self.invalid = np.zeros(n, bool)
    self.max_seconds = {name: 0.0 for name in weights}

  def record(self, i: int, name: str, status: str, value: float, seconds: float = 0.0) -> None:
    self.max_seconds[name] = max(self.max_seconds[name], seconds)
    if status == "ok":
      self.scores[name][i] = value
    elif status == "invalid":
      self.invalid_counts[name] += 1
      if self.weights[name] != 0:
        self.invalid[i] = True
    else:
      self.failures[name] += 1

  def result(self, n: int) -> RewardResult:
    total = np.zeros(n, np.float32)
    for name, w in self.weights.items():
      total += np.float32(w) * self.scores[name]
    return RewardResult(total=total, per_reward=self.scores, failures=self.failures,
                        invalid=int(self.invalid.sum()), invalid_mask=self.invalid,
                        invalid_per_reward=self.invalid_counts, max_seconds=self.max_seconds)


def _check_inputs(completions: Sequence[str], examples: Sequence[Mapping]) -> int:
  if len(completions) != len(examples):
    raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
  return len(completions)


def score_inline(completions: Sequence[str], examples: Sequence[Mapping[str, Any]],
                 reward_weights: Mapping[str, float],
                 reward_kwargs: Mapping[str, dict] | None = None) -> RewardResult:
  """Score in this process, sequentially, with no deadline (same per-item code as the pool)."""
  n = _check_inputs(completions, examples)
  fns = {name: bind_reward(name, (reward_kwargs or {}).get(name)) for name in reward_weights}
  acc = _Results(reward_weights, n)
  for i, (c, ex) in enumerate(zip(completions, examples)):
    for name, fn in fns.items():
      t0 = time.monotonic()
      status, value = call_reward(fn, c, ex)
      acc.record(i, name, status, value, time.monotonic() - t0)
  return acc.result(n)


class _Worker:
  """One worker process and its pipes."""

  def __init__(self, init_msg: tuple, env: Mapping[str, str]):
    self.proc = subprocess.Popen(
      [sys.executable, "-m", "r1jax.rewards.worker"], stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, env=dict(env), start_new_session=True, close_fds=True)
    self.send_conn = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
    self.recv_conn = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
    self.proc.stdin.close()
    self.proc.stdout.close()
    self.ready = False
    self.task: tuple[int, str] | None = None
    self.dispatched = 0.0
    self.deadline = time.monotonic() + STARTUP_TIMEOUT_S
    self.done = 0
    self.send_conn.send(init_msg)

  def kill(self) -> None:
    try:
      self.proc.kill()
    except OSError:
      pass
    self.proc.wait()
    self.send_conn.close()
    self.recv_conn.close()

  def stop(self) -> None:
    try:
      self.send_conn.send(None)
    except OSError:
      pass
    try:
      self.proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
      pass
    self.kill()


def _shutdown(workers: list[_Worker], tmp: str) -> None:
  for w in workers:
    w.stop()
  workers.clear()
  shutil.rmtree(tmp, ignore_errors=True)


def scored_weights(weights: Mapping[str, float]) -> dict[str, float]:
  """The rewards a run scores: those with a non-zero weight, plus accuracy and format at
  weight 0 when they are not rewarded (measured every step for the metrics)."""
  out = {k: float(w) for k, w in weights.items() if w}
  for always in ("accuracy", "format"):
    out.setdefault(always, 0.0)
  return out


def pool_from_config(section: Any, weights: Mapping[str, float] | None = None) -> RewardPool:
  """A RewardPool with the section's timeout_s and num_workers over `weights` (default: the
  scored ones of the section's `weights`)."""
  if weights is None:
    weights = scored_weights(section["weights"])
  return RewardPool(weights, timeout_s=section["timeout_s"], num_workers=section["num_workers"])


class RewardPool:
  """Weighted rewards over a pool of worker processes with per-item deadlines.

  Args:
    reward_weights: reward name (from REWARDS) -> weight of its score in `total`.
    timeout_s: hard deadline of one (completion, reward) task, from its dispatch.
    num_workers: worker processes.
    reward_kwargs: reward name -> keyword arguments bound to it (e.g. lengths for
      "overlong"). The "code" reward's own sandbox timeout defaults to 3/4 of timeout_s.
    worker_memory_mb: address-space limit of each worker (None: no limit).
    max_tasks_per_worker: recycle a worker after this many tasks (bounds cache growth).
  """

  def __init__(self, reward_weights: Mapping[str, float], timeout_s: float = 10.0,
               num_workers: int = 2, reward_kwargs: Mapping[str, dict] | None = None, *,
               worker_memory_mb: int | None = 8192, max_tasks_per_worker: int = 20000):
    if not reward_weights:
      raise ValueError("reward_weights is empty")
    for name in reward_weights:
      bind_reward(name)  # validates the name
    if timeout_s <= 0 or num_workers < 1:
      raise ValueError(f"need timeout_s > 0 and num_workers >= 1, got {timeout_s}, {num_workers}")
    self.weights = dict(reward_weights)
    self.timeout_s = float(timeout_s)
    self.num_workers = int(num_workers)
    self.max_tasks_per_worker = max_tasks_per_worker
    self._tmp = tempfile.mkdtemp(prefix="r1jax_rewards_")
    os.chmod(self._tmp, 0o711)  # sandboxed code (maybe another uid) must traverse it
    kwargs = {name: dict((reward_kwargs or {}).get(name) or {}) for name in self.weights}
    if "code" in kwargs:
      kwargs["code"].setdefault("timeout_s", 0.75 * self.timeout_s)
      kwargs["code"].setdefault("tmp_root", self._tmp)
    self.reward_kwargs = kwargs
    self._init_msg = ("init", list(self.weights), kwargs, worker_memory_mb)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("RAYON_NUM_THREADS", "1")
    self._env = env
    self._lock = threading.Lock()
    self._workers: list[_Worker] = [_Worker(self._init_msg, env) for _ in range(num_workers)]
    self._closed = False
    # Runs on close(), garbage collection or interpreter exit, whichever comes first.
    self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._tmp)

  # -- lifecycle ------------------------------------------------------------------------

  def __enter__(self) -> RewardPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Stop the workers and remove the pool's temporary directory (idempotent)."""
    self._closed = True
    self._finalizer()

  def _replace(self, w: _Worker) -> None:
    w.kill()
    self._workers[self._workers.index(w)] = _Worker(self._init_msg, self._env)

  # -- scoring --------------------------------------------------------------------------

  def score_inline(self, completions: Sequence[str],
                   examples: Sequence[Mapping[str, Any]]) -> RewardResult:
    """This pool's rewards, computed in-process without deadlines."""
    return score_inline(completions, examples, self.weights, self.reward_kwargs)

  def score(self, completions: Sequence[str],
            examples: Sequence[Mapping[str, Any]]) -> RewardResult:
    """Score every completion with every reward; results in input order."""
    if self._closed:
      raise RuntimeError("RewardPool is closed")
    n = _check_inputs(completions, examples)
    acc = _Results(self.weights, n)
    with self._lock:
      try:
        self._run(completions, examples, acc)
      except BaseException:
        for w in list(self._workers):  # their late answers must not leak into a later call
          if w.task is not None:
            self._replace(w)
        raise
    return acc.result(n)

  def _run(self, completions, examples, acc: _Results) -> None:
    queue = collections.deque((i, name) for i in range(len(completions)) for name in self.weights)
    while queue or any(w.task is not None for w in self._workers):
      now = time.monotonic()
      for w in list(self._workers):
        if w.ready and w.task is None and queue:
          i, name = queue.popleft()
          try:
            w.send_conn.send(((i, name), name, completions[i], examples[i]))
          except OSError:  # died while idle: not the task's fault, retry it
            queue.appendleft((i, name))
            self._replace(w)
            continue
          w.task, w.dispatched = (i, name), time.monotonic()
          w.deadline = w.dispatched + self.timeout_s
      waiting = [w for w in self._workers if not w.ready or w.task is not None]
      if not waiting:
        continue
      timeout = max(0.0, min(w.deadline for w in waiting) - now)
      ready = wait([w.recv_conn for w in waiting], timeout)
      for w in waiting:
        if w.recv_conn in ready:
          self._receive(w, acc)
      now = time.monotonic()
      for w in list(self._workers):
        if (not w.ready or w.task is not None) and now > w.deadline:
          if not w.ready:
            raise RuntimeError(f"reward worker did not start within {STARTUP_TIMEOUT_S} s")
          acc.record(*w.task, "timeout", 0.0, now - w.dispatched)
          self._replace(w)

  def _receive(self, w: _Worker, acc: _Results) -> None:
    try:
      msg = w.recv_conn.recv()
    except (EOFError, OSError):  # the worker died (a crash in a reward, OOM, ...)
      if not w.ready:
        raise RuntimeError(f"reward worker exited during start-up (code {w.proc.poll()})")
      if w.task is not None:
        acc.record(*w.task, "crash", 0.0, time.monotonic() - w.dispatched)
      self._replace(w)
      return
    if msg == ("ready",):
      w.ready = True
      return
    (i, name), status, value = msg
    acc.record(i, name, status, value, time.monotonic() - w.dispatched)
    w.task = None
    w.done += 1
    if w.done >= self.max_tasks_per_worker:
      w.stop()
      self._workers[self._workers.index(w)] = _Worker(self._init_msg, self._env)
