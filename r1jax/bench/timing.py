"""Timing helpers shared by the benchmarks: best-of-n wall time of a jax call, and the
machine description (CPU model, cores, load average, vector flags) printed beside every measurement."""

from __future__ import annotations

import os
import platform
import time


def best_time(fn, *args, repeats: int = 5) -> float:
  """Seconds of `fn(*args)` until its result is ready, best of `repeats` after one warm-up
  call (which compiles a jitted `fn`)."""
  import jax
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def machine() -> str:
  cpu = platform.processor() or ""
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return f"{cpu}, {os.cpu_count()} cores, load average {load:.1f}"


def cpu_flags() -> str:
  """The CPU's vector extensions (avx*, amx*, fma), which set its matmul rate."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
  except OSError:
    return "?"
  keep = [f for f in flags if f.startswith(("avx", "amx", "fma"))]
  return " ".join(sorted(keep)) or "no avx"
