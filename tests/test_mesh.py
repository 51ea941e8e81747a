"""Sharding rules, and the model on 8 fake CPU devices over several (data, fsdp, tensor) meshes.

The multi-device part runs tests/multidevice_worker.py in subprocesses (the device count is
fixed when jax initialises, and the rest of the suite keeps 1 device). Two worker processes
run concurrently; each prints one RESULT line per (mesh, model, check).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from r1jax import mesh as mesh_lib

WORKER = os.path.join(os.path.dirname(__file__), "multidevice_worker.py")
CHECKS = ("load", "shardings", "save", "forward", "grad_step", "grpo_step", "sample",
          "sample_bf16")
# (mesh, model); split over two processes that run at the same time.
GROUPS = (
    ("8,1,1/2,2,2/1,2,4@odd", [((8, 1, 1), "even"), ((2, 2, 2), "even"), ((1, 2, 4), "odd")]),
    ("1,8,1/1,2,4", [((1, 8, 1), "even"), ((1, 2, 4), "even")]),
)
TARGETS = [t for _, ts in GROUPS for t in ts]


def _abstract(shape):
  shape = tuple(shape) + (1,) * (len(mesh_lib.MESH_AXES) - len(shape))  # expert = 1
  return AbstractMesh(shape, mesh_lib.MESH_AXES)


# ----------------------------------------------------------------------------- rules (in-process)


@pytest.mark.parametrize("axes,shape,mesh,want", [
    # FSDP: embed over fsdp; TP: heads / kv_heads / mlp / vocab over tensor.
    (("vocab", "embed"), (256, 64), (1, 2, 4), P("tensor", "fsdp")),
    (("embed", "heads", "head_dim"), (64, 8, 16), (2, 2, 2), P("fsdp", "tensor", None)),
    (("heads", "head_dim", "embed"), (8, 16, 64), (1, 2, 4), P("tensor", None, "fsdp")),
    (("embed", "mlp"), (64, 128), (1, 8, 1), P("fsdp", None)),
    (("mlp", "embed"), (128, 64), (1, 1, 8), P("tensor", None)),
    (("norm",), (64,), (2, 2, 2), P(None)),
    # DP: batch over data x fsdp.
    (("batch", "length", "embed"), (8, 12, 64), (2, 2, 2), P(("data", "fsdp"), None, None)),
    (("batch", "length", "vocab"), (8, 12, 256), (8, 1, 1), P("data", None, None)),
    (("batch", "length"), (8, 12), (1, 8, 1), P("fsdp", None)),
    # A mesh axis that does not divide the dim is dropped (replicated over it).
    (("embed", "heads", "head_dim"), (48, 6, 8), (1, 2, 4), P("fsdp", None, None)),
    (("vocab", "embed"), (250, 48), (1, 2, 4), P(None, "fsdp")),
    (("batch", "length"), (2, 12), (2, 2, 2), P("data", None)),
    (("batch", "length"), (3, 12), (2, 2, 2), P(None, None)),
    # Size-1 mesh axes are not named.
    (("vocab", "embed"), (256, 64), (8, 1, 1), P(None, None)),
])
def test_default_rules(axes, shape, mesh, want):
  assert mesh_lib.logical_to_spec(axes, shape, _abstract(mesh)) == want


def test_rules_errors_and_overrides():
  with pytest.raises(ValueError, match="no sharding rule"):
    mesh_lib.logical_to_spec(("nonsense",), (8,), _abstract((1, 2, 4)))
  rules = dict(mesh_lib.DEFAULT_RULES, embed=None, mlp=("fsdp", "tensor"))
  got = mesh_lib.logical_to_spec(("embed", "mlp"), (64, 128), _abstract((1, 2, 4)), rules)
  assert got == P(None, ("fsdp", "tensor"))


def test_make_mesh_shapes():
  m = mesh_lib.make_mesh((1, 1, -1))
  assert m.axis_names == mesh_lib.MESH_AXES and m.devices.size == 1
  with pytest.raises(ValueError, match="needs 8 devices"):
    mesh_lib.make_mesh((2, 2, 2))


# ----------------------------------------------------------------------------- 8 fake devices


@pytest.fixture(scope="module")
def worker_results():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, WORKER, "all", spec, "--devices=8"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for spec, _ in GROUPS]
  results, logs = {}, []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      p.kill()
      out, _ = p.communicate()
    logs.append(out)
    for line in out.splitlines():
      if line.startswith("RESULT "):
        r = json.loads(line[len("RESULT "):])
        results[(tuple(r["mesh"]), r["model"], r["check"])] = r
    assert "devices=8 " in out, out[-3000:]
  return results, "\n".join(logs)


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("mesh,model", TARGETS, ids=[f"{'x'.join(map(str, m))}-{n}" for m, n in TARGETS])
def test_multidevice(worker_results, mesh, model, check):
  results, log = worker_results
  r = results.get((mesh, model, check))
  assert r is not None, f"no result for {mesh} {model} {check}; worker output:\n{log[-4000:]}"
  assert r["ok"], f"{r['error']}\n{r.get('traceback', '')}"


def test_multidevice_sharded_sizes(worker_results):
  """Sharded params really are split: per-device bytes shrink with fsdp x tensor."""
  results, _ = worker_results
  size = lambda m: results[(m, "even", "shardings")]["details"]["bytes_per_device"]
  full = size((8, 1, 1))
  assert len(full) == 1
  for m in ((1, 8, 1), (2, 2, 2), (1, 2, 4)):
    per = size(m)
    assert len(per) == 1
    ways = m[1] * m[2]
    # Norms (and a few undividable dims) stay replicated, so a little above full / ways.
    assert full[0] / ways <= per[0] < 1.1 * full[0] / ways, (m, per, full)


def test_no_involuntary_full_rematerialization(worker_results):
  """No sharding on any mesh makes XLA replicate a whole tensor to reshard it (the embedding
  lookup used to, with the table's embed dim and the batch both over fsdp)."""
  _, log = worker_results
  assert "Involuntary full rematerialization" not in log, next(
      l for l in log.splitlines() if "Involuntary full rematerialization" in l)
