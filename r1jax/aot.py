"""Ahead-of-time compile of a run's programs for a TPU topology, on any host, no TPU needed.

`python -m r1jax.aot --config=configs/r1_zero.py --topology=v5p:2x2x2 [--prompt_len=1024]`

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

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from r1jax import hardware, mesh as mesh_lib
from r1jax.programs import Program, programs_of

_CONFIG = _TOPOLOGY = _PROMPT_LEN = _STAGE = _JSON = None


def define_flags() -> None:
  """Command-line flags, defined only when run as a program (the trainers define --config
  too, and tests import both)."""
  global _CONFIG, _TOPOLOGY, _PROMPT_LEN, _STAGE, _JSON
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                            lock_config=False)
  _TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2", "TPU topology: v5p:2x2x2, v5e:2x4, ...")
  _PROMPT_LEN = flags.DEFINE_integer("prompt_len", 256, "Prompt tokens (GRPO, rejection sampling).")
  _STAGE = flags.DEFINE_string("stage", "", "Pipeline configs: compile only this stage.")
  _JSON = flags.DEFINE_string("json", "", "Also write the results to this JSON file.")


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


def compile_program(p: Program, chip: hardware.Chip) -> dict:
  """Lower and compile `p`; its per-chip memory, cost and roofline time."""
  lowered = p.fn.lower(*p.args) if hasattr(p.fn, "lower") else p.fn(*p.args)
  compiled = lowered.compile()
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
              per_step=p.per_step, sampling=p.sampling,
              pallas_kernels=lowered.as_text().count("tpu_custom_call"))


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def _bytes_over(msg: str) -> float | None:
  """Bytes over HBM from XLA's "RESOURCE_EXHAUSTED: ... (1.53T) exceeds available HBM
  (15.75G)", or None for any other error."""
  import re
  if "RESOURCE_EXHAUSTED" not in msg:
    return None
  sizes = [float(v) * _UNITS[u] for v, u in re.findall(r"\(([\d.]+)([KMGTP]?)\)", msg)]
  return sizes[0] - sizes[1] if len(sizes) >= 2 else float("nan")


def _gib(x: float) -> str:
  return f"{x / hardware.GiB:.3f}"


def print_table(stage: str, results: list[dict]) -> dict:
  print(f"\n[{stage}]  GiB per chip; GFLOP and GB accessed per chip; roofline ms per call")
  print(f"{'program':<20}{'args':>9}{'out':>9}{'temp':>9}{'total':>9}{'HBM%':>7}"
        f"{'GFLOP':>10}{'GB':>9}{'ms':>10}{'x/step':>8}{'mosaic':>7}")
  for r in results:
    print(f"{r['program']:<20}{_gib(r['argument_bytes']):>9}{_gib(r['output_bytes']):>9}"
          f"{_gib(r['temp_bytes']):>9}{_gib(r['total_bytes']):>9}"
          f"{100 * r['total_bytes'] / r['hbm_bytes']:>6.1f}%{r['flops'] / 1e9:>10.2f}"
          f"{r['bytes_accessed'] / 1e9:>9.3f}{r['roofline_s'] * 1e3:>10.3f}"
          f"{r['per_step']:>8g}{r['pallas_kernels']:>7}")
  step = sum(r["roofline_s"] * r["per_step"] for r in results)
  samp = sum(r["roofline_s"] * r["per_step"] for r in results if r["sampling"])
  peak = max(r["total_bytes"] for r in results)
  summary = dict(step_roofline_s=step, sampling_share=samp / step if step else 0.0,
                 peak_bytes=peak)
  print(f"step roofline {step:.4g} s ({100 * summary['sampling_share']:.0f}% sampling); "
        f"largest program {_gib(peak)} GiB of {_gib(results[0]['hbm_bytes'])} GiB HBM")
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


def run(c, topology: str, prompt_len: int = 256, stage: str = "") -> dict:
  """Compile every program of config `c` for `topology`; raises DoesNotFit / ValueError."""
  chip, devices = hardware.topology_devices(topology)
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
          r = compile_program(p, chip)
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


def main(argv) -> None:
  del argv
  c = _CONFIG.value
  if c is None:
    raise app.UsageError("--config is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    res = run(c, _TOPOLOGY.value, _PROMPT_LEN.value, _STAGE.value)
  except (DoesNotFit, ValueError, FileNotFoundError) as e:
    print(f"r1jax.aot: {e}", file=sys.stderr)
    sys.exit(1)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(res, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
