"""Compilation cost of a run: JAX's persistent compilation cache, compile-time accounting,
and completion-length buckets that bound the number of train-step compilations.

- `enable(path)` turns on JAX's persistent cache in `path`, so a restarted run loads its
  executables from disk instead of recompiling them.
- `COUNTERS` counts, from JAX's monitoring events, compilations, persistent-cache hits and
  misses, and the seconds spent tracing/lowering/compiling; `snapshot()` / `since(snap)`
  give the compile time inside one step (the ETA leaves those steps out).
- `completion_bucket(n, max_new)`: the padded completion width of a train batch, a power of
  two (>= `minimum`) capped at `max_new`, so a run compiles about log2(max_new / 16) + 1
  train steps instead of one per multiple of 16.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import jax

CACHE_HIT = "/jax/compilation_cache/cache_hits"
CACHE_MISS = "/jax/compilation_cache/cache_misses"
_DURATIONS = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")
_BACKEND = "/jax/core/compile/backend_compile_duration"

COUNTERS: dict[str, float] = {"cache_hits": 0, "cache_misses": 0, "compiles": 0, "compile_s": 0.0}
_lock = threading.Lock()
_registered = False


def _on_event(event: str, **_: Any) -> None:
  key = {CACHE_HIT: "cache_hits", CACHE_MISS: "cache_misses"}.get(event)
  if key:
    with _lock:
      COUNTERS[key] += 1


def _on_duration(event: str, secs: float, **_: Any) -> None:
  if event in _DURATIONS:
    with _lock:
      COUNTERS["compile_s"] += secs
      COUNTERS["compiles"] += event == _BACKEND


def watch() -> None:
  """Register the monitoring listeners that feed COUNTERS (once per process)."""
  global _registered
  if not _registered:
    jax.monitoring.register_event_listener(_on_event)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _registered = True


def snapshot() -> dict[str, float]:
  with _lock:
    return dict(COUNTERS)


def since(snap: dict[str, float]) -> dict[str, float]:
  """COUNTERS minus an earlier snapshot."""
  now = snapshot()
  return {k: now[k] - snap.get(k, 0) for k in now}


def default_dir() -> str:
  """$R1JAX_CACHE_DIR, else $XDG_CACHE_HOME/r1jax/jax_cache (~/.cache/r1jax/jax_cache)."""
  if os.environ.get("R1JAX_CACHE_DIR"):
    return os.environ["R1JAX_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "r1jax", "jax_cache")


def resolve_dir(setting: str, workdir: str) -> str:
  """Config value -> cache directory ("" = off). "auto": the user cache dir (shared by runs);
  "workdir": `workdir/jax_cache`; anything else is a path."""
  if not setting:
    return ""
  if setting == "auto":
    return default_dir()
  if setting == "workdir":
    return os.path.join(workdir, "jax_cache")
  return os.path.expanduser(setting)


def enable(path: str, min_compile_time_s: float = 0.0) -> None:
  """Use JAX's persistent compilation cache at `path` (created), from the next compile on.

  Every executable that took at least `min_compile_time_s` to compile is written there.
  """
  from jax.experimental.compilation_cache import compilation_cache as cc
  watch()
  os.makedirs(path, exist_ok=True)
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.reset_cache()  # the cache is set up once per process: pick up the new dir


def completion_bucket(longest: int, max_new: int, minimum: int = 16) -> int:
  """Padded completion width for a batch whose longest completion has `longest` tokens."""
  if max_new <= 0:
    raise ValueError(f"max_new={max_new} must be > 0")
  width = max(minimum, 1 << max(int(longest) - 1, 0).bit_length())
  return min(width, max_new)


def num_buckets(max_new: int, minimum: int = 16) -> int:
  """How many distinct widths `completion_bucket` can return for this `max_new`."""
  return len({completion_bucket(n, max_new, minimum) for n in range(1, max_new + 1)})


def setup(setting: str, workdir: str) -> str:
  """A trainer's start: the cache directory of config value `setting` enabled (if any) and
  the compile counters registered; returns the directory ("" = off)."""
  cache_dir = resolve_dir(setting, workdir)
  if cache_dir:
    enable(cache_dir)
  watch()
  return cache_dir
