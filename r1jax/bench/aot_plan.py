"""The README's model-size plan: which TPU slice each model and workload needs, from the
TPU compiler (`r1jax.aot`), on any host.

`python -m r1jax.bench.aot_plan [--out plan.jsonl] [--cells smollm2-135m/grpo4k/full,...]`

For each (model, workload, full or LoRA) and TPU generation it compiles the run's programs
on growing slices until every program fits in HBM, and prints a markdown row: the slice,
the mesh, bytes per chip of the largest program, the roofline step time and its sampling
share. Every block of a model is the same, so each slice is compiled at 2 and 4 layers and
bytes, FLOPs and bytes accessed are extrapolated linearly to the model's depth (this keeps a
32B plan to minutes on a 2-core host; `r1jax.aot` on the full depth gives the exact figure).
Workloads: GRPO with G=16, 4 prompts of 1024 tokens and 4k or 16k new tokens per step
(micro-batches of one group), and SFT of 8 packed rows of 8k tokens (micro-batches of 2);
bf16 compute, float32 params and AdamW, full remat, bf16 decode. A slice too small for the
trained state alone (`state_floor`) is skipped without compiling; the whole-sampler loop is
not compiled (`SKIP`: its decode step plus the float32 params stand for its memory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax

from r1jax import aot, hardware, programs
from r1jax.model import param_shapes

MODELS = ("smollm2-135m", "qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-32b")
SLICES = {"v5e": ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8"),
          "v6e": ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8"),
          "v5p": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4")}
DEFAULT_CELLS = [f"{m}/{w}/{k}" for m in MODELS for w, k in
                 (("grpo4k", "full"), ("grpo4k", "lora"), ("grpo16k", "full"), ("sft", "full"))]


def cell_config(model: str, workload: str, kind: str, layers: int):
  """The experiment config of one plan cell, at `layers` blocks."""
  from configs import r1_zero, sft
  if workload.startswith("grpo"):
    c = r1_zero.get_config()
    c.sampling.update(num_samples=16, max_new_tokens=1024 * int(workload[4:-1]),  # grpo<N>k
                      decode_dtype="bfloat16")
    c.train.update(prompts_per_step=4, micro_batch_size=16, mu=1)
    c.rl.beta = 0.0
    c.data.prompt_bucket = 128
  else:
    c = sft.get_config()
    c.data.update(batch_size=8, seq_len=8192)
    c.train.micro_batch_size = 2
  c.model = dict(source="preset", preset=model, path="", dtype="bfloat16",
                 param_dtype="float32", remat=True, num_layers=layers)
  c.mesh.shape = (1, -1, 1)
  if kind == "lora":
    c.lora = dict(rank=64, alpha=128.0, targets="q|k|v|o|gate|up|down")
  return c


# The whole sampler (prefill + every decode step in one loop) is left out of the plan: it
# costs more compile time than the rest together, its time is its pieces' (prefill, decode
# step) and its memory is the decode step's (weights in the decode dtype + the full KV
# cache) plus the float32 params it reads them from, which `measure` adds.
# One micro-batch's gradient (`micro_grad`, compiled apart because the train step's cost
# analysis counts its scan body once) is not compiled either: the train step's own figures
# count for each of its micro-batches, an upper bound by the optimizer update's share.
SKIP = ("sample", "micro_grad")
DEPTHS = (2, 4)  # blocks compiled; every block is the same, so the rest is a straight line
# Most of a TPU compile on a CPU host is the backend's code generation, fusion by fusion
# (BACKEND_PASSES: 34 of 40 s for SmolLM2's 2-block train step at 512 new tokens), and its
# time grows with the fused shapes. XLA's exec_time_optimization_effort -1 (instead of a
# run's 0) cuts it 4x with the same FLOPs and bytes accessed and memory within a few
# percent (README "The model-size plan").
EFFORT = -1.0


def _compile_all(c, topology: str, effort: float) -> dict[str, dict]:
  chip, devices = hardware.topology_devices(topology)
  mesh = aot.make_mesh(c.mesh.shape, devices, topology)
  out, extra = {}, {}
  with aot.mesh_lib.use_mesh(mesh):
    for _, progs in programs.programs_of(c, mesh, 1024):
      for p in progs:
        if p.name.endswith("micro_grad"):
          name = p.name.replace("micro_grad", "train_step")
          extra[name] = extra.get(name, 0.0) + p.per_step
        elif p.name not in SKIP:
          out[p.name] = aot.compile_program(p, chip, effort=effort)
  for name, n in extra.items():
    out[name]["per_step"] += n
  return out


def state_floor(model: str, kind: str, chips: int) -> float:
  """Bytes per chip that any slice needs for the trained state alone, spread evenly over
  `chips`: float32 params + AdamW's two moments + a float32 gradient (full), or the base
  params (LoRA, whose adapters are small). A slice below it is not compiled."""
  cfg = programs.PRESETS[model]
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(param_shapes(cfg)))
  return n * (4 if kind == "lora" else 16) / chips


def measure(model: str, workload: str, kind: str, topology: str, effort: float = EFFORT
            ) -> dict:
  """Bytes and roofline of a cell on a slice, extrapolated from `DEPTHS` layers, compiled
  at XLA's exec_time_optimization_effort `effort`."""
  depth = programs.PRESETS[model].num_layers
  d0, d1 = DEPTHS
  lo, hi = (_compile_all(cell_config(model, workload, kind, n), topology, effort)
            for n in DEPTHS)
  chip, _ = hardware.parse_topology(topology)
  at = lambda a, b: a + (b - a) * (depth - d0) / (d1 - d0)
  progs = {}
  for name in lo:
    r = {k: at(lo[name][k], hi[name][k]) for k in ("total_bytes", "flops", "bytes_accessed")}
    r["roofline_s"] = max(r["flops"] / chip.peak_flops, r["bytes_accessed"] / chip.hbm_bw)
    progs[name] = dict(r, per_step=lo[name]["per_step"], sampling=lo[name]["sampling"])
  step = sum(r["roofline_s"] * r["per_step"] for r in progs.values())
  samp = sum(r["roofline_s"] * r["per_step"] for r in progs.values() if r["sampling"])
  if "decode_step" in progs:  # the whole sampler: its decode step + the float32 params
    chips = hardware.num_chips(hardware.parse_topology(topology)[1])
    progs["decode_step"]["total_bytes"] += state_floor(model, "lora", chips)
  worst = max(progs, key=lambda k: progs[k]["total_bytes"])
  return dict(model=model, workload=workload, kind=kind, topology=topology,
              chips=hardware.num_chips(hardware.parse_topology(topology)[1]),
              peak_program=worst, peak_bytes=progs[worst]["total_bytes"],
              hbm_bytes=chip.hbm_bytes, fits=progs[worst]["total_bytes"] <= chip.hbm_bytes,
              step_roofline_s=step, sampling_share=samp / step if step else 0.0, effort=effort,
              compile_s_by_program={k: round(lo[k]["compile_s"] + hi[k]["compile_s"], 1)
                                    for k in lo})


def smallest_slice(model: str, workload: str, kind: str, gen: str, log,
                   effort: float = EFFORT) -> dict | None:
  for dims in SLICES[gen]:
    topo = f"{gen}:{dims}"
    t0 = time.time()
    chip, shape = hardware.parse_topology(topo)
    floor = state_floor(model, kind, hardware.num_chips(shape))
    if floor > chip.hbm_bytes:
      log(dict(model=model, workload=workload, kind=kind, topology=topo, fits=False,
               error=f"state alone {floor / hardware.GiB:.1f} GiB per chip", compile_s=0.0))
      continue
    try:
      r = measure(model, workload, kind, topo, effort)
    except Exception as e:  # noqa: BLE001 - the compiler's own "out of memory" and the like
      r = dict(model=model, workload=workload, kind=kind, topology=topo, fits=False,
               error=str(e).splitlines()[0][:200])
    r["compile_s"] = round(time.time() - t0, 1)
    log(r)
    if r.get("fits"):
      return r
  return None


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--cells", default=",".join(DEFAULT_CELLS))
  ap.add_argument("--gens", default="v5e,v5p,v6e")
  ap.add_argument("--out", default="")
  ap.add_argument("--effort", type=float, default=EFFORT,
                  help="XLA exec_time_optimization_effort in [-1, 1]; 0 is what a run "
                  "compiles with, -1 compiles several times faster (see EFFORT)")
  args = ap.parse_args()
  out = open(args.out, "a") if args.out else None

  def log(r):
    print(json.dumps(r), file=sys.stderr, flush=True)
    if out:
      out.write(json.dumps(r) + "\n")
      out.flush()
  print("| model | workload | gen | slice | chips | GiB/chip (largest program) | "
        "roofline step s | sampling |", flush=True)
  for cell in args.cells.split(","):
    model, workload, kind = cell.split("/")
    for gen in args.gens.split(","):
      r = smallest_slice(model, workload, kind, gen, log, args.effort)
      if r is None:
        print(f"| {model} | {workload} {kind} | {gen} | > {SLICES[gen][-1]} | | | | |", flush=True)
        continue
      print(f"| {model} | {workload} {kind} | {gen} | {r['topology'].split(':')[1]} | "
            f"{r['chips']} | {r['peak_bytes'] / hardware.GiB:.1f} ({r['peak_program']}) | "
            f"{r['step_roofline_s']:.3g} | {100 * r['sampling_share']:.0f}% |", flush=True)


if __name__ == "__main__":
  sys.path.insert(0, os.getcwd())  # configs/ lives in the repository root
  main()
