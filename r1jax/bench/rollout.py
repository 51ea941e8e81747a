"""Rollouts with long-tailed completion lengths: useful tokens/s of the static sampler vs
continuous batching (`SamplingConfig.mode`), and of the RL train step padded vs packed
(`train.packing`, r1jax/packing.py) on the same lengths.

    python -m r1jax.bench.rollout                        # 8 prompts x 4 samples, up to 512 tokens
    python -m r1jax.bench.rollout --prompts=16 --max_new_tokens=1024 --slots=8,16 --kv_blocks=0,128
    python -m r1jax.bench.rollout --model=tiny --prompts=2 --samples=2 --max_new_tokens=16
    python -m r1jax.bench.rollout --parts=train --layers=4 --max_new_tokens=1024

The model has SmolLM2-135M's shape (`--model`, a `model.PRESETS` name) with random weights:
the speed of a decode step does not depend on the weights, and the completion lengths are
forced instead of left to the model. Each sample's length is drawn once from a log-normal
(median `--median`, log-space sigma `--sigma`, clipped to [1, max_new_tokens]; the defaults
give most samples under 100 tokens and a tail to the 512 limit, the shape of R1-Zero's
length histograms) and imposed with `generate(..., max_lengths=...)` (EOS disabled), so both
modes decode exactly the same tokens (the run checks it). Useful tokens are the generated
(non-pad) ones; time is wall-clock for the whole call (prefill included), best of
`--repeats` after a warm-up call that compiles (and whose tokens are compared).

The train part (`--parts=train`) times one GRPO train step (loss, gradient, AdamW; one
micro-batch) on the padded batch the trainer builds (completions padded to the power-of-two
bucket of the longest) and on packed rows of `--row_len` tokens (0: a power of two >= prompt
+ max_new_tokens), with the same random tokens and lengths; it prints both losses (equal).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from r1jax.bench.timing import machine


def train_rows(cfg, params, prompts: np.ndarray, lens: np.ndarray, max_new: int, row_len: int,
               repeats: int) -> list[dict]:
  """Best seconds of one GRPO train step on the padded batch vs on packed rows."""
  import functools
  import jax
  from r1jax import compile_cache, memory, rl, packed_rl, packing, steps
  rows = len(lens)
  width = compile_cache.completion_bucket(int(lens.max()), max_new)
  rng = np.random.RandomState(2)
  cmask = (np.arange(width)[None] < lens[:, None]).astype(np.int32)
  comp = rng.randint(3, cfg.vocab_size, (rows, width)).astype(np.int32) * cmask
  batch = rl.Batch(prompts, np.ones_like(prompts), comp, cmask,
                     rng.normal(size=rows).astype(np.float32), None, None)
  gcfg = rl.RLConfig(beta=0.0, max_completion_len=max_new)
  packed, _ = packing.pack_batch(batch, row_len, 1, gcfg.loss_aggregation, max_new)
  tx = steps.make_optimizer(steps.OptimConfig(learning_rate=1e-6))
  out = []
  for name, loss, b in (("padded", rl.grpo_loss, batch), ("packed", packed_rl.loss, packed)):
    step = jax.jit(steps.make_train_step(functools.partial(loss, cfg=gcfg, model_cfg=cfg), tx))
    state = memory.init_state(params, tx)
    loss0 = float(step(state, b)[1]["loss"])  # compiles
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(step(state, b))
      best = min(best, time.perf_counter() - t0)
    shape = np.shape(b.completion_tokens if name == "padded" else b.tokens)
    out.append(dict(step=name, shape=f"{shape[0]}x{shape[1]}", s=best, loss=loss0))
  return out


def lengths(rows: int, median: float, sigma: float, limit: int, seed: int = 0) -> np.ndarray:
  """Completion lengths of `rows` samples: log-normal, clipped to [1, limit]."""
  x = np.random.RandomState(seed).lognormal(np.log(median), sigma, rows)
  return np.clip(np.round(x), 1, limit).astype(np.int32)


def main(argv=None) -> dict[str, Any]:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--model", default="smollm2-135m", help="a r1jax.model.PRESETS name")
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--samples", type=int, default=4, help="G samples per prompt")
  ap.add_argument("--prompt_len", type=int, default=32)
  ap.add_argument("--max_new_tokens", type=int, default=512)
  ap.add_argument("--median", type=float, default=48.0)
  ap.add_argument("--sigma", type=float, default=1.0)
  ap.add_argument("--slots", default="8", help="comma-separated num_slots to try")
  ap.add_argument("--kv_blocks", default="128", help="comma-separated sampling.kv_block to try "
                  "with each slot count (0: slots attend over the whole cache)")
  ap.add_argument("--temperature", type=float, default=1.0)
  ap.add_argument("--decode_dtype", default="")
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--parts", default="rollout", help="comma-separated: rollout, train")
  ap.add_argument("--layers", type=int, default=0, help="num_layers override (0: preset's)")
  ap.add_argument("--row_len", type=int, default=0,
                  help="packed row length (0: a power of two >= prompt + max_new_tokens)")
  ap.add_argument("--json_out", default="")
  args = ap.parse_args(argv)

  import jax
  from r1jax.model import PRESETS, init_params
  from r1jax.sampling import SamplingConfig, generate

  cfg = PRESETS[args.model]
  cfg = cfg.replace(num_layers=args.layers) if args.layers else cfg
  parts = set(args.parts.split(","))
  params = init_params(cfg, 0)
  b, g, n = args.prompts, args.samples, args.max_new_tokens
  lens = lengths(b * g, args.median, args.sigma, n)
  prompts = np.random.RandomState(1).randint(3, cfg.vocab_size, (b, args.prompt_len))
  prompts, mask = prompts.astype(np.int32), np.ones_like(prompts, np.int32)
  useful = int(lens.sum())
  info = {"machine": machine(), "jax": jax.__version__,
          "model": f"{args.model} ({cfg.num_layers} layers, random weights)",
          "prompts x samples": f"{b}x{g}", "prompt_len": args.prompt_len, "max_new_tokens": n,
          "lengths": f"log-normal median {args.median} sigma {args.sigma}, clipped to [1, {n}]: "
                     f"mean {lens.mean():.1f}, p90 {np.percentile(lens, 90):.0f}, "
                     f"max {lens.max()}", "temperature": args.temperature}
  print("# " + json.dumps(info), flush=True)
  base = dict(max_new_tokens=n, temperature=args.temperature, num_samples=g,
              decode_dtype=args.decode_dtype)
  key = jax.random.key(0)

  def timed(scfg):
    """(best seconds of `--repeats` calls after a warm-up call, the warm-up's output)."""
    call = lambda: generate(params, cfg, prompts, mask, key, scfg, max_lengths=lens)
    out = jax.device_get(call())  # compiles
    assert (out.lengths == lens).all(), "forced lengths not met"
    best = float("inf")
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      best = min(best, time.perf_counter() - t0)
    return best, out

  rows, train = [], []
  if "rollout" in parts:
    s, ref = timed(SamplingConfig(**base))
    rows = [dict(mode="static", slots=b * g, s=s)]
    print(f"# {rows[-1]}", flush=True)
    for slots in [int(x) for x in args.slots.split(",")]:
      for kv_block in [int(x) for x in args.kv_blocks.split(",")]:
        s, out = timed(SamplingConfig(**base, mode="continuous", num_slots=slots,
                                      kv_block=kv_block))
        rows.append(dict(mode="continuous", slots=slots, kv_block=kv_block, s=s,
                         same_tokens=bool((out.tokens == ref.tokens).all())))
        print(f"# {rows[-1]}", flush=True)
    print("\n| mode | slots | kv_block | s | useful tok/s | vs static |\n|---|---|---|---|---|---|")
    for r in rows:
      r["tok_s"] = useful / r["s"]
      r["ratio"] = rows[0]["s"] / r["s"]
      print(f"| {r['mode']} | {r['slots']} | {r.get('kv_block', '')} | {r['s']:.2f} | "
            f"{r['tok_s']:.1f} | {r['ratio']:.2f}x |", flush=True)
  if "train" in parts:
    train = train_rows(cfg, params, prompts, lens, n, args.row_len, max(args.repeats, 1))
    print("\n| train step | rows x tokens | s | useful tok/s | vs padded | loss |\n"
          "|---|---|---|---|---|---|")
    for r in train:
      r["tok_s"] = useful / r["s"]
      r["ratio"] = train[0]["s"] / r["s"]
      print(f"| {r['step']} | {r['shape']} | {r['s']:.2f} | {r['tok_s']:.1f} | "
            f"{r['ratio']:.2f}x | {r['loss']:.6g} |")
  res = {"info": info, "useful_tokens": useful, "rows": rows, "train": train}
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(res, f, indent=1)
  return res


if __name__ == "__main__":
  main()
