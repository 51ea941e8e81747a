"""The three samplers `r1jax.bench.sampling` times: r1jax, HF transformers and tunix.

Each runner is called as `runner(prompts, n, calls, seed)` and returns (the seconds of
each call, the generated tokens). `TunixRunner` drives `tunix_worker`, which runs in the
tunix interpreter (`python -m r1jax.bench.sampling --worker=tunix`) and may import only
numpy, jax, flax and tunix: no r1jax dependencies, so nothing heavy at this module's top.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

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
