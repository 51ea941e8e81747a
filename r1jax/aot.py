"""Ahead-of-time compile of a run's programs for a TPU topology, on any host, no TPU needed.

`python -m r1jax.aot --config=configs/r1_zero.py --topology=v5p:2x2x2 [--prompt_len=1024]`
`python -m r1jax.aot --config=configs/r1_zero.py --topology=h200:1 --measure=3` (on a GPU host:
JAX cannot compile for CUDA without a GPU; `--measure` also times each program there)

Builds the run's mesh (the config's `mesh.shape`, `-1` as in training) from the compile-only
devices libtpu describes, and compiles every program the config's entry point executes from
ShapeDtypeStructs alone (no weights are read or allocated): for GRPO the sampler (prefill +
decode loop), the reference / old log-probs, the train step with its micro-batches and, where
configured, PPO's critic and the reward model's forward; for SFT / distillation, reward-model
training and rejection sampling their steps; for the R1 pipeline (`configs/r1.py`) each stage.
Per program and chip it prints the TPU compiler's memory (arguments, outputs, temporaries,
total against the chip's HBM), FLOPs and bytes from its cost analysis, and a roofline time.

XLA's cost analysis counts a loop body once, so time comes from programs compiled for one
iteration, each with how often a step runs it: `prefill` once, `decode_step` once per new token
(its cache at full length: an upper bound), one micro-batch's gradient per extra micro-batch.
A roofline time is max(FLOPs / peak, bytes / bandwidth) per program: it leaves out collective
communication, host work (rewards, data), kernel launch and pipeline gaps, and assumes every
completion runs to `max_new_tokens`.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from r1jax import cli, hardware, mesh as mesh_lib
from r1jax.programs import Program, config_kind, programs_of


def define_flags() -> None:
  """Command-line flags, defined only when run as a program (the trainers define --config
  too, and tests import both)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=False)
  flags.DEFINE_string("topology", "v5e:2x2", "TPU topology: v5p:2x2x2, v5e:2x4, ...")
  flags.DEFINE_integer("prompt_len", 256, "Prompt tokens (GRPO, rejection sampling).")
  flags.DEFINE_string("stage", "", "Pipeline configs: compile only this stage.")
  flags.DEFINE_string("json", "", "Also write the results to this JSON file.")
  flags.DEFINE_integer("measure", 0, "GPU topologies: also run each program this many times "
                       "on random inputs and report the best time.")


class DoesNotFit(Exception):
  pass


# ------------------------------------------------------------------ compile and report


def make_mesh(shape, devices, topology: str):
  shape = list(shape)
  n = len(devices)
  known = 1
  for s in shape:
    known *= s if s != -1 else 1
  if (-1 in shape and n % known) or (-1 not in shape and known != n):
    raise ValueError(f"mesh.shape={tuple(shape)} does not divide the {n} chips of "
                     f"--topology={topology} (e.g. --config.mesh.shape='(1,-1,1)')")
  return mesh_lib.make_mesh(tuple(shape), devices)


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


@functools.lru_cache(maxsize=None)
def _maker(shape: tuple, dtype, sharding, fill: int):
  """A jitted function making one input (cached: a step's inputs repeat few shapes)."""
  def f():
    key = jax.random.key(0)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      return jax.random.split(key, shape) if shape else key
    if dtype == jnp.bool_:
      return jnp.ones(shape, bool)
    if jnp.issubdtype(dtype, jnp.integer):
      return jnp.full(shape, fill, dtype)
    return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  return jax.jit(f, out_shardings=sharding)


def materialize(p: Program) -> tuple:
  """Concrete inputs of `p`'s shapes and shardings, made on the devices: floats small and
  random (zeros would flatter the matmuls), integers `p.int_fill` per argument (1 if unset),
  masks True, keys split from key 0."""
  fills = p.int_fill or (1,) * len(p.args)
  return tuple(jax.tree.map(lambda s, f=f: _maker(tuple(s.shape), s.dtype, s.sharding, f)(), a)
               for a, f in zip(p.args, fills))


def best_time(compiled, p: Program, repeats: int) -> float:
  """Best wall time of `repeats` calls after a warm-up, inputs made afresh (donation)."""
  best = float("inf")
  for i in range(repeats + 1):
    args = jax.block_until_ready(materialize(p))
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    if i:
      best = min(best, time.perf_counter() - t0)
  return best


def compile_program(p: Program, chip: hardware.Chip, measure: int = 0,
                    effort: float = 0.0) -> dict:
  """Lower and compile `p`; its per-chip memory, cost and roofline time (and, with
  `measure` > 0 on devices that run, its best measured time). `effort` is XLA's
  exec_time_optimization_effort in [-1, 1] (0: the default a run compiles with); -1 makes
  the TPU backend's per-fusion code generation, most of a compile, several times faster."""
  t0 = time.perf_counter()
  lowered = p.fn.lower(*p.args) if hasattr(p.fn, "lower") else p.fn(*p.args)
  compiled = lowered.compile(
      compiler_options={"exec_time_optimization_effort": effort} if effort else None)
  compile_s = time.perf_counter() - t0
  m = compiled.memory_analysis()
  cost = _cost(compiled)
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  return dict(program=p.name, argument_bytes=m.argument_size_in_bytes,
              output_bytes=m.output_size_in_bytes, alias_bytes=m.alias_size_in_bytes,
              temp_bytes=m.temp_size_in_bytes, code_bytes=m.generated_code_size_in_bytes,
              total_bytes=total, hbm_bytes=chip.hbm_bytes, flops=flops, bytes_accessed=nbytes,
              roofline_s=max(flops / chip.peak_flops, nbytes / chip.hbm_bw),
              # Each argument read once: XLA's bytes also count an in-place cache update as a
              # full copy and each piece of a pipelined all-gather as the whole buffer.
              floor_s=max(flops / chip.peak_flops, m.argument_size_in_bytes / chip.hbm_bw),
              per_step=p.per_step, sampling=p.sampling, calls=p.calls,
              pallas_kernels=_kernel_calls(lowered.as_text()),
              compile_s=compile_s,
              measured_s=best_time(compiled, p, measure) if measure else None)


def _kernel_calls(hlo: str) -> int:
  """Pallas calls in a lowered program: Mosaic TPU custom calls, Triton / Mosaic GPU ones."""
  return sum(hlo.count(m) for m in ("tpu_custom_call", "xla.gpu.triton", "mosaic_gpu"))


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def hbm_sizes(msg: str) -> list[float] | None:
  """The byte sizes in XLA's "RESOURCE_EXHAUSTED: ... (1.53T) exceeds available HBM
  (15.75G)" (asked, then available), or None for any other error."""
  import re
  if "RESOURCE_EXHAUSTED" not in msg:
    return None
  return [float(v) * _UNITS[u] for v, u in re.findall(r"\(([\d.]+)([KMGTP]?)\)", msg)]


def _bytes_over(msg: str) -> float | None:
  """Bytes over HBM from the TPU compiler's RESOURCE_EXHAUSTED message (`hbm_sizes`)."""
  sizes = hbm_sizes(msg)
  if sizes is None:
    return None
  return sizes[0] - sizes[1] if len(sizes) >= 2 else float("nan")


def _gib(x: float) -> str:
  return f"{x / hardware.GiB:.3f}"


def print_table(stage: str, results: list[dict]) -> dict:
  meas = any(r.get("measured_s") is not None for r in results)
  print(f"\n[{stage}]  GiB per chip; GFLOP and GB accessed per chip; roofline ms per call"
        + ("; measured ms: best call on random inputs" if meas else ""))
  print(f"{'program':<20}{'args':>9}{'out':>9}{'temp':>9}{'total':>9}{'HBM%':>7}"
        f"{'GFLOP':>10}{'GB':>9}{'ms':>10}{'x/step':>8}{'kernels':>8}"
        + (f"{'measured':>10}" if meas else ""))
  for r in results:
    print(f"{r['program']:<20}{_gib(r['argument_bytes']):>9}{_gib(r['output_bytes']):>9}"
          f"{_gib(r['temp_bytes']):>9}{_gib(r['total_bytes']):>9}"
          f"{100 * r['total_bytes'] / r['hbm_bytes']:>6.1f}%{r['flops'] / 1e9:>10.2f}"
          f"{r['bytes_accessed'] / 1e9:>9.3f}{r['roofline_s'] * 1e3:>10.3f}"
          f"{r['per_step']:>8g}{r['pallas_kernels']:>8}"
          + (f"{r['measured_s'] * 1e3:>10.3f}" if meas else ""))
  step = sum(r["roofline_s"] * r["per_step"] for r in results)
  samp = sum(r["roofline_s"] * r["per_step"] for r in results if r["sampling"])
  floor = sum(r["floor_s"] * r["per_step"] for r in results)
  floor_samp = sum(r["floor_s"] * r["per_step"] for r in results if r["sampling"])
  peak = max(r["total_bytes"] for r in results)
  summary = dict(step_roofline_s=step, sampling_share=samp / step if step else 0.0,
                 step_floor_s=floor, floor_sampling_share=floor_samp / floor if floor else 0.0,
                 peak_bytes=peak)
  print(f"step roofline {step:.4g} s ({100 * summary['sampling_share']:.0f}% sampling); with "
        f"each argument read once {floor:.4g} s ({100 * summary['floor_sampling_share']:.0f}% "
        f"sampling); largest program {_gib(peak)} GiB of {_gib(results[0]['hbm_bytes'])} GiB HBM")
  if meas:  # the programs a step calls, as often as it calls them
    calls = lambda r: r["per_step"] if r["calls"] is None else r["calls"]
    sample = sum(r["measured_s"] * calls(r) for r in results if r["sampling"])
    rest = sum(r["measured_s"] * calls(r) for r in results if not r["sampling"])
    summary.update(step_measured_s=sample + rest, sample_measured_s=sample)
    print(f"step measured {sample + rest:.4g} s (sampler {sample:.4g} s, the rest {rest:.4g} s)"
          f" = {(sample + rest) / step:.2f}x the roofline")
  return summary


def hosts_report(mesh, rows: int) -> dict:
  """Per process: its devices and the global batch rows they hold. Every process reads the
  same global batch (the trainer's shard_count=1), so each places its own devices' rows."""
  sh = mesh_lib.named_sharding(mesh, ("batch",), (rows,))
  per = {}
  for dev, idx in sh.devices_indices_map((rows,)).items():
    start, stop, _ = idx[0].indices(rows)
    per.setdefault(dev.process_index, set()).update(range(start, stop))
  covered = set().union(*per.values())
  if covered != set(range(rows)):
    raise ValueError(f"the batch of {rows} rows is not covered by the mesh's devices")
  return {int(k): sorted(v) for k, v in sorted(per.items())}


def run(c, topology: str, prompt_len: int = 256, stage: str = "", measure: int = 0) -> dict:
  """Compile every program of config `c` for `topology`; raises DoesNotFit / ValueError.
  `measure` > 0 (GPU topologies: devices that run) also times each program."""
  chip, devices = hardware.topology_devices(topology)
  if measure and chip.platform != "gpu":
    raise ValueError(f"--measure={measure} needs devices that run; --topology={topology} is "
                     "compile-only")
  mesh = make_mesh(tuple(c.mesh.shape) if "mesh" in c else (1, 1, -1), devices, topology)
  n_hosts = len({d.process_index for d in devices})
  print(f"r1jax.aot: {topology}: {len(devices)} x {chip.name} on {n_hosts} host(s) "
        f"({_gib(chip.hbm_bytes)} GiB HBM, {chip.peak_flops / 1e12:.0f} TFLOP/s bf16, "
        f"{chip.hbm_bw / 1e9:.0f} GB/s; {chip.source}); mesh "
        + " ".join(f"{k}={v}" for k, v in mesh.shape.items()), flush=True)
  out = dict(topology=topology, chip=chip.name, chips=len(devices), hosts=n_hosts,
             mesh=dict(mesh.shape), stages={})
  with mesh_lib.use_mesh(mesh):
    for name, progs in programs_of(c, mesh, prompt_len, stage):
      results = []
      for p in progs:
        try:
          t0 = time.perf_counter()
          r = compile_program(p, chip, measure)
          print(f"  {name}/{p.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                flush=True)
        except Exception as e:  # noqa: BLE001 - one line naming the program
          msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
          over = _bytes_over(msg)
          if over is not None:  # the TPU compiler's own HBM check
            raise DoesNotFit(f"{name}/{p.name} does not fit on {topology}: about {over:.4g} "
                             f"bytes over per chip ({msg})") from e
          raise DoesNotFit(f"{name}/{p.name} does not compile for {topology}: {msg}") from e
        if r["total_bytes"] > chip.hbm_bytes:
          raise DoesNotFit(f"{name}/{p.name} does not fit on {topology}: {r['total_bytes']} "
                           f"bytes per chip > {chip.hbm_bytes} HBM "
                           f"({r['total_bytes'] - chip.hbm_bytes} bytes over)")
        results.append(r)
      summary = print_table(name, results)
      if n_hosts > 1:
        rows = progs[0].args[1].shape[0] if progs and len(progs[0].args) > 1 else 0
        if rows:
          summary["rows_per_host"] = {k: len(v) for k, v in hosts_report(mesh, rows).items()}
          print(f"{n_hosts} hosts: every process reads the global batch of {rows} prompts and "
                f"places its devices' rows: {summary['rows_per_host']}")
      out["stages"][name] = dict(programs=results, **summary)
  return out


def check(c, stage: str = "") -> None:
  """The config, checked by its entry point's (or each pipeline stage's) `validate`; data
  files need not exist (nothing is read but the models' architectures)."""
  from r1jax import pipeline
  kind = config_kind(c)
  with cli.reading_no_data():
    if kind == "pipeline":
      pipeline.validate(c, [stage] if stage else None, flag="--stage")
    else:
      pipeline.validate_stage(kind, c)


def main() -> None:
  f = flags.FLAGS
  try:
    res = run(f.config, f.topology, f.prompt_len, f.stage, f.measure)
  except (DoesNotFit, ValueError, FileNotFoundError) as e:
    print(f"r1jax.aot: {e}", file=sys.stderr)
    sys.exit(1)
  if f.json:
    with open(f.json, "w") as out:
      json.dump(res, out, indent=2)


if __name__ == "__main__":
  define_flags()
  cli.run(main, check=lambda: check(flags.FLAGS.config, flags.FLAGS.stage), required=("config",))
