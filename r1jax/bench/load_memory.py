"""Peak host memory and time of `load_hf_dir` on a >= 1 GB sharded safetensors checkpoint.

    python -m r1jax.bench.load_memory [--layers=18] [--shard_mb=300] [--meshes=1,1,1@1 1,8,1@8]

Writes a random-weight Llama-architecture checkpoint (fp32, ~340M params, ~1.36 GB in ~300 MB
shards) to a temp dir, then loads it in a fresh subprocess per mesh (CPU; `@N` fakes N devices
with XLA_FLAGS) and reports the peak RSS of that process (`ru_maxrss`) against the budget
    1.5 x largest shard file + the bytes the sharded model itself occupies on its devices,
counted above the RSS the process had after importing jax and r1jax (the baseline). On CPU,
"device" memory is host memory, so the model's own bytes are part of the RSS.
The checkpoint was just written, so reads come from the page cache: the time is the
loader's, not the disk's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def _rss_mb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_config(layers: int) -> dict:
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
          "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": layers,
          "num_attention_heads": 16, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
          "rope_theta": 500000.0, "tie_word_embeddings": False, "max_position_embeddings": 4096,
          "hidden_act": "silu", "torch_dtype": "float32"}


def write_checkpoint(path: str, layers: int, shard_bytes: float) -> dict:
  import numpy as np

  from r1jax.model import hf as hf_lib
  from r1jax.model import hf_layout
  from r1jax.model.checkpoint_io import write_safetensors_dir

  hf_cfg = bench_config(layers)
  cfg = hf_lib.config_from_hf(hf_cfg)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_cfg, f)
  layout = hf_layout.param_layout(cfg)
  rng = np.random.default_rng(0)
  shapes = {t.hf_name: t.hf_shape for t in layout}
  get = lambda name: (0.02 * rng.standard_normal(shapes[name], dtype=np.float32))
  files = write_safetensors_dir(path, [(t.hf_name, np.float32, t.hf_shape) for t in layout],
                                get, max_shard_bytes=shard_bytes)
  sizes = [os.path.getsize(os.path.join(path, f)) for f in files]
  n_params = sum(int(np.prod(s)) for s in shapes.values())
  return {"files": len(files), "total_bytes": sum(sizes), "largest_shard_bytes": max(sizes),
          "params": n_params}


def load_child(path: str, mesh_shape: tuple[int, ...]) -> dict:
  """Runs in the fresh subprocess: import, baseline RSS, load, peak RSS."""
  import jax

  from r1jax import mesh as mesh_lib
  from r1jax.model.checkpoint_io import load_hf_dir

  mesh = mesh_lib.make_mesh(mesh_shape)
  base = _rss_mb()
  t0 = time.perf_counter()
  cfg, params = load_hf_dir(path, mesh=mesh)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  peak = _rss_mb()
  model_bytes = sum(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards)
  specs = {k: str(params["layers"][0][k].sharding.spec) for k in ("q", "gate", "down")}
  return {"devices": jax.device_count(), "mesh": list(mesh_shape), "load_seconds": seconds,
          "baseline_rss_mb": base, "peak_rss_mb": peak, "model_device_bytes": model_bytes,
          "specs": specs}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--layers", type=int, default=18)
  ap.add_argument("--shard_mb", type=float, default=300)
  ap.add_argument("--meshes", nargs="+", default=["1,1,1@1", "1,8,1@8"],
                  help="data,fsdp,tensor@num_fake_devices")
  ap.add_argument("--dir", default=None, help="keep the checkpoint here (default: temp dir)")
  ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)

  if args.child:  # fresh process: XLA_FLAGS were set by the parent before jax was imported
    path, mesh = args.child.split("|")
    print("CHILD " + json.dumps(load_child(path, tuple(int(x) for x in mesh.split(",")))))
    return 0

  tmp = args.dir or tempfile.mkdtemp(prefix="r1jax_load_bench_")
  try:
    t0 = time.perf_counter()
    info = write_checkpoint(tmp, args.layers, args.shard_mb * 1e6)
    print(f"checkpoint: {info['params'] / 1e6:.0f}M params, {info['total_bytes'] / 1e9:.2f} GB "
          f"in {info['files']} files (largest {info['largest_shard_bytes'] / 1e6:.0f} MB), "
          f"written in {time.perf_counter() - t0:.1f}s to {tmp}")
    ok = True
    for spec in args.meshes:
      mesh, _, ndev = spec.partition("@")
      env = dict(os.environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={ndev or 1}")
      r = subprocess.run([sys.executable, "-m", "r1jax.bench.load_memory",
                          f"--child={tmp}|{mesh}"], env=env, capture_output=True, text=True)
      line = next((l for l in r.stdout.splitlines() if l.startswith("CHILD ")), None)
      if r.returncode or line is None:
        print(r.stdout[-2000:], r.stderr[-4000:])
        return 1
      res = json.loads(line[len("CHILD "):])
      budget_mb = (1.5 * info["largest_shard_bytes"] + res["model_device_bytes"]) / 2**20
      used_mb = res["peak_rss_mb"] - res["baseline_rss_mb"]
      passed = used_mb <= budget_mb
      ok &= passed
      print(f"mesh {tuple(res['mesh'])} on {res['devices']} CPU device(s): load "
            f"{res['load_seconds']:.1f}s ({info['total_bytes'] / 2**30 / res['load_seconds']:.2f} GiB/s); "
            f"peak RSS {res['peak_rss_mb']:.0f} MiB = baseline {res['baseline_rss_mb']:.0f} + "
            f"{used_mb:.0f} MiB for the load; budget 1.5 x shard "
            f"{1.5 * info['largest_shard_bytes'] / 2**20:.0f} + model "
            f"{res['model_device_bytes'] / 2**20:.0f} = {budget_mb:.0f} MiB -> "
            f"{'OK' if passed else 'OVER'}; layer-0 specs {res['specs']}")
    return 0 if ok else 1
  finally:
    if not args.dir:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
