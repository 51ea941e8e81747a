"""Peak memory per device of a GRPO train step, full fine-tuning vs LoRA, without allocating.

    python -m r1jax.bench.memory                         # Qwen2.5-1.5B and 7B shapes, fsdp 1 and 8
    python -m r1jax.bench.memory --models=qwen2.5-1.5b --fsdp=1 --remat=dots_saveable

Each row compiles the trainer's jitted train step (`steps.make_train_step` on the GRPO loss:
micro-batch scan, gradient accumulation, clip, AdamW, donated state) on ShapeDtypeStructs of a
Qwen2.5-shaped model (random weights are never made) and reads XLA's
`compiled.memory_analysis()`: arguments + outputs - donated aliases + temporaries, per device.
`--fsdp=N` compiles for N (host CPU) devices on a (1, N, 1) mesh, so params, optimizer state
(`memory.init_state` shards it like the params) and the batch are split N ways. Full
fine-tuning with beta > 0 also keeps a reference copy of the params (counted in "+ ref");
LoRA's reference is its frozen base (no copy). The sampler's KV cache is not in the train
step: it lives in the rollout phase, when the gradients and activations do not.
"""

from __future__ import annotations

import dataclasses
import os
import sys

VARIANTS = {  # name -> (param_dtype, compute dtype, lora rank)
    "full fp32": ("float32", "float32", 0),
    "full bf16": ("bfloat16", "bfloat16", 0),
    "LoRA r16 (bf16 base)": ("bfloat16", "bfloat16", 16),
}


def _model(name: str):
  from r1jax.model import PRESETS, ModelConfig
  if name == "qwen2.5-7b":  # Qwen/Qwen2.5-7B-Instruct config.json
    return ModelConfig(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
                       num_kv_heads=4, intermediate_size=18944, rope_theta=1e6,
                       rms_norm_eps=1e-6, tie_embeddings=False, qkv_bias=True,
                       max_position_embeddings=32768)
  return PRESETS[name]


def step_memory(cfg, lora_rank: int, *, rows: int, micro: int, prompt_len: int, new_tokens: int,
                fsdp: int = 1, beta: float = 0.04, compile: bool = True,
                devices: list | None = None) -> dict:
  """Bytes per device of the compiled GRPO train step (see module doc); `compile=False`
  counts params / optimizer / reference bytes only (peak 0). `devices`: compile for these
  (e.g. a TPU topology's, `r1jax.hardware.topology_devices`) instead of the host's."""
  import jax
  import jax.numpy as jnp
  from r1jax import rl, rl_step, lora, memory, steps
  from r1jax import mesh as mesh_lib
  from r1jax.model import param_axes, param_shapes
  mesh = mesh_lib.make_mesh((1, fsdp, 1), (devices or jax.devices())[:fsdp])
  lcfg = lora.LoraConfig(rank=lora_rank)
  shard = mesh_lib.tree_shardings(mesh, param_axes(cfg), param_shapes(cfg))
  params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        param_shapes(cfg), shard)
  params = lora.abstract_params(params, lcfg, mesh_lib.replicated(mesh))
  tx = steps.make_optimizer(steps.OptimConfig())
  sh = memory.state_shardings(params, tx, lora.trainable(lcfg))
  state = jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=x),
                       memory.abstract_state(params, tx, lora.trainable(lcfg)), sh)
  gcfg = rl.RLConfig(beta=beta, max_completion_len=new_tokens)
  step = steps.jit_train_step(rl_step.build(cfg, gcfg, tx, rows // micro, lcfg=lcfg).step, state)
  g = 8
  bsh = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=mesh_lib.named_sharding(
      mesh, ("batch",) + (None,) * (len(shape) - 1), shape))
  n = new_tokens
  batch = rl.Batch(bsh((rows // g, prompt_len), jnp.int32), bsh((rows // g, prompt_len), bool),
                     bsh((rows, n), jnp.int32), bsh((rows, n), bool), bsh((rows,), jnp.float32),
                     None, bsh((rows, n), jnp.float32) if beta > 0 else None)
  peak = temp = args = 0
  if compile:
    with mesh_lib.use_mesh(mesh):
      ma = step.lower(state, batch).compile().memory_analysis()
    temp, args = ma.temp_size_in_bytes, ma.argument_size_in_bytes
    peak = args + ma.output_size_in_bytes - ma.alias_size_in_bytes + temp
  nbytes = lambda tree: sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
  base = params["base"] if lcfg.enabled else params
  ref = 0 if (lcfg.enabled or beta == 0) else nbytes(base) / fsdp
  return dict(peak=peak, temp=temp, args=args,
              params=nbytes(params) / fsdp, opt=nbytes(state.opt_state) / fsdp, ref=ref,
              total=peak + ref)


def main(argv=None) -> list[dict]:
  import argparse
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--models", default="qwen2.5-1.5b,qwen2.5-7b")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--fsdp", default="1,8", help="device counts, comma-separated")
  ap.add_argument("--rows", type=int, default=64, help="completions per step (8 per prompt)")
  ap.add_argument("--micro", type=int, default=8, help="rows per micro-batch")
  ap.add_argument("--prompt_len", type=int, default=256)
  ap.add_argument("--new_tokens", type=int, default=1024)
  ap.add_argument("--remat", default="full", help="model.remat: '' (off), full, dots_saveable")
  ap.add_argument("--topology", default="", help="compile for this TPU topology's chips (e.g. "
                  "v5p:2x2x2, libtpu needed) instead of host CPU devices")
  args = ap.parse_args(argv)
  fsdps = [int(x) for x in args.fsdp.split(",")]
  devices = None
  if args.topology:
    from r1jax import hardware
    devices = hardware.topology_devices(args.topology)[1]
  elif "jax" not in sys.modules:  # host CPU devices for the fsdp meshes
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={max(fsdps)}")
  import jax
  have = len(devices or jax.devices())
  if have < max(fsdps):
    raise SystemExit(f"--fsdp={max(fsdps)} needs that many devices; have {have}")
  gb = lambda b: b / 2**30
  print(f"GRPO train step, {args.rows} rows x ({args.prompt_len} prompt + {args.new_tokens} "
        f"new tokens), micro-batch {args.micro}, remat={args.remat or 'off'}, AdamW, beta 0.04, "
        f"compiled for {args.topology or 'host CPU devices'}")
  print("\n| model | variant | devices (fsdp) | params GiB | optimizer GiB | step peak GiB | "
        "+ ref GiB | total GiB/device | fits 16 / 80 / 141 GB |")
  print("|---|---|---|---|---|---|---|---|---|")
  rows = []
  for name in args.models.split(","):
    for variant in args.variants.split(","):
      pdt, dt, rank = VARIANTS[variant]
      cfg = dataclasses.replace(_model(name), param_dtype=pdt, dtype=dt,
                                remat=args.remat or False)
      for fsdp in fsdps:
        try:
          r = step_memory(cfg, rank, rows=args.rows, micro=args.micro,
                          prompt_len=args.prompt_len, new_tokens=args.new_tokens, fsdp=fsdp,
                          devices=devices)
        except Exception as e:  # noqa: BLE001 - e.g. the TPU compiler's own out-of-memory
          print(f"| {name} | {variant} | {fsdp} | does not compile: "
                f"{str(e).strip().splitlines()[0][:160]} |", flush=True)
          continue
        fits = " / ".join("yes" if r["total"] <= cap * 1e9 else "no" for cap in (16, 80, 141))
        print(f"| {name} | {variant} | {fsdp} | {gb(r['params']):.1f} | {gb(r['opt']):.1f} | "
              f"{gb(r['peak']):.1f} | {gb(r['ref']):.1f} | {gb(r['total']):.1f} | {fits} |",
              flush=True)
        rows.append(dict(model=name, variant=variant, fsdp=fsdp, **r))
  return rows


if __name__ == "__main__":
  main()
