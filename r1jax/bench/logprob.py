"""Benchmark the fused log-prob head against full logits.

  python -m r1jax.bench.logprob [--n=8192,32768] [--d=1536] [--v=151936]

For each token count N it times forward and forward+backward (d hidden and
d unembed) of `token_logprobs` for the full-logits reference ("naive"), the
chunked XLA scan ("xla") and the Pallas kernel ("pallas"), and reports
memory and TFLOP/s. FLOPs: forward 2NDV; backward 2NDV (logits recompute) +
2 * 2NDV (the two gradient matmuls), so forward+backward counts 8NDV. (The
Pallas kernels recompute logits once per gradient kernel, i.e. do 10NDV.)

Memory: "temp" is the compiled program's scratch beyond inputs and outputs
(`memory_analysis()`), exact per program on every backend; on GPU/TPU the
device's peak_bytes_in_use is also shown (a running process maximum, so rows
run from the cheapest implementation up). On CPU the defaults shrink to a
size that runs in a minute or two, and "pallas" runs only with --interpret.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from r1jax.kernels import token_logprobs

# Dense bf16 peak TFLOP/s per chip, matched against device_kind.
PEAK_TFLOPS = {
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
    "TPU v5": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0, "TPU7x": 2307.0,
    "H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L4": 121.0,
    "B200": 2250.0,
}
CPU_DEFAULTS = {"n": "256,1024", "d": 256}
ACCEL_DEFAULTS = {"n": "8192,32768", "d": 1536}
MIB = 2 ** 20


def peak_tflops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  matches = [k for k in PEAK_TFLOPS if k in kind]
  return PEAK_TFLOPS[max(matches, key=len)] if matches else None


def _device_peak_bytes(device) -> int | None:
  try:
    stats = device.memory_stats()
  except Exception:  # not every backend implements it
    return None
  return (stats or {}).get("peak_bytes_in_use")


def _median_seconds(fn: Callable, args: Sequence, iters: int) -> float:
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _programs(impl: str, entropy: bool, block_n, block_v):
  kw = dict(impl=impl, return_entropy=entropy, block_n=block_n, block_v=block_v)
  if impl == "naive":
    kw = dict(impl=impl, return_entropy=entropy)

  def fwd(h, w, t):
    return token_logprobs(h, w, t, **kw)

  def loss(h, w, t):
    out = token_logprobs(h, w, t, **kw)
    return sum(x.sum() for x in jax.tree.leaves(out))

  return {"fwd": fwd, "fwd+bwd": jax.value_and_grad(loss, (0, 1))}


def bench(impl: str, n: int, d: int, v: int, dtype, *, entropy: bool, iters: int,
          block_n=None, block_v=None) -> dict:
  """Times and memory for one implementation and shape."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  h = jax.jit(lambda: jax.random.normal(k1, (n, d), dtype))()
  w = jax.jit(lambda: (jax.random.normal(k2, (d, v)) * d ** -0.5).astype(dtype))()
  t = jax.jit(lambda: jax.random.randint(k3, (n,), 0, v))()
  row = {}
  for name, fn in _programs(impl, entropy, block_n, block_v).items():
    compiled = jax.jit(fn).lower(h, w, t).compile()
    mem = compiled.memory_analysis()
    row[f"{name} temp"] = None if mem is None else mem.temp_size_in_bytes
    row[name] = _median_seconds(compiled, (h, w, t), iters)
  row["device peak"] = _device_peak_bytes(h.devices().pop())
  return row


def _fmt(x, spec: str) -> str:
  return "-" if x is None else format(x, spec)


def main(argv: Sequence[str] | None = None) -> None:
  backend = jax.default_backend()
  defaults = CPU_DEFAULTS if backend == "cpu" else ACCEL_DEFAULTS
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", default=defaults["n"], help="comma-separated token counts")
  p.add_argument("--d", type=int, default=defaults["d"], help="hidden size")
  p.add_argument("--v", type=int, default=151936, help="vocabulary size")
  p.add_argument("--dtype", default="float32" if backend == "cpu" else "bfloat16")
  p.add_argument("--impls", default="pallas,xla,naive")
  p.add_argument("--entropy", action="store_true", help="also return (and differentiate) entropy")
  p.add_argument("--interpret", action="store_true", help="run pallas on CPU in interpret mode")
  p.add_argument("--block_n", type=int, default=None)
  p.add_argument("--block_v", type=int, default=None)
  p.add_argument("--iters", type=int, default=3 if backend == "cpu" else 10)
  args = p.parse_args(argv)

  device = jax.devices()[0]
  peak = peak_tflops(device)
  dtype = jnp.dtype(args.dtype)
  impls = [i for i in args.impls.split(",") if i]
  if backend == "cpu" and not args.interpret and "pallas" in impls:
    impls.remove("pallas")
    print("(pallas skipped on CPU; pass --interpret to run the interpreted TPU kernel)")
  print(f"device: {device.device_kind} ({backend}), peak {_fmt(peak, '.0f')} TFLOP/s; "
        f"D={args.d} V={args.v} dtype={dtype.name} entropy={args.entropy}")
  head = (f"{'impl':>7} {'N':>6} | {'fwd ms':>9} {'TFLOP/s':>8} {'%peak':>6} | "
          f"{'f+b ms':>9} {'TFLOP/s':>8} {'%peak':>6} | {'fwd temp':>9} {'f+b temp':>9} "
          f"{'dev peak':>9}  (MiB)")
  print(head)
  print("-" * len(head))
  for n in [int(x) for x in args.n.split(",")]:
    for impl in impls:
      flops = 2.0 * n * args.d * args.v
      try:
        r = bench(impl, n, args.d, args.v, dtype, entropy=args.entropy, iters=args.iters,
                  block_n=args.block_n, block_v=args.block_v)
      except Exception as e:  # e.g. out of memory for the naive path
        print(f"{impl:>7} {n:>6} | failed: {type(e).__name__}: {str(e).splitlines()[0][:90]}")
        continue
      cells = []
      for name, f in (("fwd", flops), ("fwd+bwd", 4 * flops)):
        tf = f / r[name] / 1e12
        pct = None if peak is None else 100 * tf / peak
        cells.append(f"{r[name] * 1e3:9.2f} {tf:8.3f} {_fmt(pct, '6.1f'):>6}")
      mems = [None if r[k] is None else r[k] / MIB for k in ("fwd temp", "fwd+bwd temp", "device peak")]
      print(f"{impl:>7} {n:>6} | {cells[0]} | {cells[1]} | "
            + " ".join(f"{_fmt(m, '9.1f'):>9}" for m in mems))


if __name__ == "__main__":
  main()
