"""Expert parallelism: the `expert` mesh axis splits MoE expert weights (and the batch), and
a DeepSeek-V3-shaped model's forward, loss and gradients on 8 fake CPU devices (fsdp 2 x
expert 4) equal the 1-device ones. The work runs in tests/multidevice_worker.py, a
subprocess, because the device count must be fixed before jax initialises."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from jax.sharding import AbstractMesh

from r1jax import mesh as mesh_lib

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multidevice_worker.py")


def test_expert_axis_rules():
  mesh = AbstractMesh((1, 2, 1, 4), mesh_lib.MESH_AXES)
  spec = mesh_lib.logical_to_spec(("expert", "embed", "mlp"), (8, 64, 32), mesh)
  assert tuple(spec) == ("expert", "fsdp", None)
  assert tuple(mesh_lib.logical_to_spec(("batch", "length"), (8, 12), mesh)) == (
      ("fsdp", "expert"), None)
  # A 3-entry shape is the same mesh with expert = 1 (nothing split over it).
  m = mesh_lib.make_mesh((1, 1, 1))
  assert m.axis_names == mesh_lib.MESH_AXES and m.shape["expert"] == 1
  assert np.asarray(m.devices).shape == (1, 1, 1, 1)


def test_expert_parallel_forward_and_grads_match_one_device():
  root = os.path.dirname(os.path.dirname(WORKER))  # this checkout's r1jax, not an installed one
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, WORKER, "expert_sharded,forward,grad_step",
                        "1,2,1,4@dsv3", "--devices=8"], env=env, capture_output=True,
                       text=True, timeout=600).stdout
  results = {}
  for line in out.splitlines():
    if line.startswith("RESULT "):
      r = json.loads(line[len("RESULT "):])
      results[r["check"]] = r
  assert set(results) == {"expert_sharded", "forward", "grad_step"}, out[-4000:]
  for name, r in results.items():
    assert r["ok"], f"{name}: {r['error']}\n{r.get('traceback', '')}"
