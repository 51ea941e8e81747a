"""Memory at length: bytes per TPU chip of the GRPO sampler's prefill and decode step and of
the train step at long completions, remat on and off, from the TPU compiler (`r1jax.aot`).

    python -m r1jax.bench.aot_length [--model=smollm2-135m] [--lengths=8192,16384,32768]
        [--remat=full,off] [--attention_chunks=0,1024] [--topology=v5p:2x2x1] [--json_out=FILE]

Each cell is the model-size plan's GRPO workload (`aot_plan.cell_config`: G=16, 4 prompts
of 1024 tokens, continuous sampling in half as many slots as samples, bf16 decode weights and
KV cache, micro-batches of one group, bf16 compute, float32 params and AdamW) with
`--lengths` new tokens. As in the plan, every block is the same, so each cell is compiled at
2 and 4 blocks and bytes are extrapolated linearly to the model's depth. A program the
compiler refuses (RESOURCE_EXHAUSTED) counts with the bytes it asked for, marked "over".
The sampler's programs do not depend on `model.remat` or `model.attention_chunk`, so they
are compiled once per length. Compile one length per process: a second length in the same
process has failed with "Received incompatible devices for jitted computation".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from r1jax import aot, hardware, programs
from r1jax.bench import aot_plan

SAMPLER = ("prefill", "decode_step")


def compile_cell(model: str, length: int, remat: str, layers: int, topology: str,
                 names: tuple[str, ...], attention_chunk: int = 0) -> dict[str, dict]:
  """{program: {"bytes", "over", "compile_s"}} of one cell at `layers` blocks."""
  c = aot_plan.cell_config(model, f"grpo{length // 1024}k", "full", layers)
  c.model = dict(c.model.to_dict(), remat=remat if remat != "off" else False,
                 attention_chunk=attention_chunk)
  chip, devices = hardware.topology_devices(topology)
  mesh = aot.make_mesh(c.mesh.shape, devices, topology)
  out = {}
  with aot.mesh_lib.use_mesh(mesh):
    for _, progs in programs.programs_of(c, mesh, 1024):
      for p in progs:
        if p.name not in names:
          continue
        t0 = time.time()
        try:
          r = aot.compile_program(p, chip)
          out[p.name] = dict(bytes=r["total_bytes"], over=r["total_bytes"] > chip.hbm_bytes)
        except Exception as e:  # noqa: BLE001 - the compiler's own out-of-memory check
          sizes = aot.hbm_sizes(str(e))
          if not sizes:
            raise
          out[p.name] = dict(bytes=sizes[0], over=True)
        out[p.name]["compile_s"] = round(time.time() - t0, 1)
  return out


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--model", default="smollm2-135m")
  ap.add_argument("--lengths", default="8192,16384,32768")
  ap.add_argument("--remat", default="full,off", help="model.remat values ('off': no remat)")
  ap.add_argument("--attention_chunks", default="0",
                  help="model.attention_chunk values (0: all queries at once)")
  ap.add_argument("--topology", default="v5p:2x2x1")
  ap.add_argument("--json_out", default="")
  args = ap.parse_args(argv)
  depth = programs.PRESETS[args.model].num_layers
  d0, d1 = aot_plan.DEPTHS
  gib = lambda x: x / hardware.GiB
  hbm = hardware.parse_topology(args.topology)[0].hbm_bytes
  rows = []
  print(f"| new tokens | remat | attention chunk | program | GiB per chip ({args.topology}, "
        f"{args.model}) |\n|---|---|---|---|---|", flush=True)
  cells = [(r, int(a)) for r in args.remat.split(",") for a in args.attention_chunks.split(",")]
  for length in [int(x) for x in args.lengths.split(",")]:
    for i, (remat, chunk) in enumerate(cells):
      names = ("train_step",) + (SAMPLER if i == 0 else ())
      lo, hi = (compile_cell(args.model, length, remat, n, args.topology, names, chunk)
                for n in (d0, d1))
      for name in names:
        b = lo[name]["bytes"] + (hi[name]["bytes"] - lo[name]["bytes"]) * (depth - d0) / (d1 - d0)
        refused = lo[name]["over"] or hi[name]["over"]
        train = name == "train_step"
        row = dict(new_tokens=length, remat=remat if train else "any",
                   attention_chunk=chunk if train else "any", program=name, bytes=b,
                   over=refused or b > hbm,
                   compile_s=lo[name]["compile_s"] + hi[name]["compile_s"])
        rows.append(row)
        print(f"| {length} | {row['remat']} | {row['attention_chunk']} | {name} | {gib(b):.2f}"
              f"{' (over HBM)' if row['over'] else ''} |", flush=True)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  sys.path.insert(0, os.getcwd())  # configs/ lives in the repository root
  main()
