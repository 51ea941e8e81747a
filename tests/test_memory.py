"""Memory knobs: optimizer state sharded like the params over fsdp (the policy's, the reward
model's and the PPO critic's), remat policies by name, and the memory benchmark's byte counts
on a tiny model."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from r1jax.bench import memory as bench
from r1jax.model import PRESETS

_SCRIPT = textwrap.dedent("""
  import os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  import jax, numpy as np
  from r1jax import lora, memory, steps
  from r1jax.mesh import make_mesh, replicated
  from r1jax.model.loader import load_model
  mesh = make_mesh((1, 4, 1))
  cfg, params, _ = load_model(dict(source="preset", preset="tiny"), mesh)
  tx = steps.make_optimizer(steps.OptimConfig())
  for lcfg in (lora.LoraConfig(), lora.LoraConfig(rank=2)):
    p = lora.wrap_params(params, lcfg, jax.random.key(0), replicated(mesh))
    state = memory.init_state(p, tx, lora.trainable(lcfg))
    adam = state.opt_state[1][0]
    for mom in (adam.mu, adam.nu):
      for x, y in zip(jax.tree.leaves(lora.trainable(lcfg)(p)), jax.tree.leaves(mom)):
        assert x.shape == y.shape and y.sharding.is_equivalent_to(x.sharding, x.ndim), (
            x.sharding, y.sharding)
    gate = adam.mu["layers"][0]["gate"] if not lcfg.enabled else params["layers"][0]["gate"]
    assert gate.addressable_shards[0].data.size * 4 == gate.size  # a quarter per device
  print("OK")
""")


def _run(script: str, *args: str) -> None:
  """`script` in a fresh process (its own device count), from the repository root."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                       text=True, timeout=300, cwd=root)
  assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


def test_optimizer_state_sharded_like_params_over_fsdp():
  _run(_SCRIPT)


# The reward model's and the PPO critic's train states, as their trainers build them, on an
# fsdp mesh of 8 fake devices: every Adam moment laid out like its param, and really split.
_SCRIPT_RM_CRITIC = textwrap.dedent("""
  import json, math, os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import jax, optax
  from r1jax import memory, ppo, reward_model, steps
  from r1jax.mesh import make_mesh
  from r1jax.model.loader import load_model
  from configs import reward_model as rm_configs

  def check(state, what):
    adams = [s for s in jax.tree.leaves(state.opt_state,
                                        is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    assert len(adams) == 1, (what, len(adams))
    split = 0
    for mom in (adams[0].mu, adams[0].nu):
      for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(mom), strict=True):
        assert x.shape == y.shape and y.sharding.is_equivalent_to(x.sharding, x.ndim), (
            what, x.shape, x.sharding, y.sharding)
        split += math.prod(y.sharding.shard_shape(y.shape)) * 8 == y.size  # (donated: no data)
    assert split > 0, f"{what}: no moment is split over the 8 devices"
    print(what, "moments split:", split)

  mesh = make_mesh((1, 8, 1))
  cfg, params, _ = load_model(dict(source="preset", preset="tiny"), mesh)
  for spec in ({}, dict(source="policy", prune_every=2)):  # the policy's copy, a pruned one
    ccfg, cparams = ppo.load_critic_model(spec, params, cfg, mesh)
    state, _ = ppo.make_critic(cparams, ccfg, ppo.PPOConfig(critic_learning_rate=1e-5),
                               steps.OptimConfig(), 1, mesh)
    check(state, f"critic {spec}")

  # The reward model: its trainer's own state (captured where it is made), one step run.
  made = []
  init_state = memory.init_state
  memory.init_state = lambda *a, **k: made.append(init_state(*a, **k)) or made[-1]
  path = os.path.join(sys.argv[1], "pairs.jsonl")
  with open(path, "w") as f:
    for i in range(16):
      f.write(json.dumps({"prompt": f"Q{i} ", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\\n")
  c = rm_configs.get_config("tiny")
  c.mesh.shape = (1, 8, 1)
  c.data.train.path, c.data.batch_size, c.data.num_eval = path, 8, 0
  c.train.update(num_steps=1, eval_every=0, checkpoint_every=0)
  reward_model.train(c, os.path.join(sys.argv[1], "rm"))
  assert len(made) == 1, len(made)
  check(made[0], "reward model")
  print("OK")
""")


def test_rm_and_critic_optimizer_state_sharded_like_params_over_fsdp(tmp_path):
  _run(_SCRIPT_RM_CRITIC, str(tmp_path))


def test_remat_policies_by_name():
  from r1jax.memory import remat_policy
  assert remat_policy("dots_saveable") is jax.checkpoint_policies.dots_saveable
  assert remat_policy(True) is jax.checkpoint_policies.nothing_saveable
  with pytest.raises(ValueError, match="model.remat='dots'"):
    PRESETS["tiny"].replace(remat="dots")


def test_memory_bench_counts_bytes():
  cfg = PRESETS["tiny"].replace(remat="dots_saveable")
  n = 256 * 64 + 2 * (2 * 64 + 64 * 4 * 16 + 2 * 64 * 2 * 16 + 4 * 16 * 64 + 3 * 64 * 128) + 64
  kw = dict(rows=16, micro=8, prompt_len=8, new_tokens=8)
  full = bench.step_memory(cfg, 0, **kw)
  assert full["params"] == 4 * n and full["opt"] == pytest.approx(2 * 4 * n, abs=64)
  assert full["ref"] == 4 * n and full["peak"] >= full["params"] + full["opt"]
  lo = bench.step_memory(cfg, 4, compile=False, **kw)  # rank 4 on q|k|v|o|gate|up|down
  # Adapter elements per layer (A [in, 4] + B [4, out]): q 256+256, k/v 256+128, o 256+256,
  # gate/up 256+512, down 512+256.
  ad = 2 * (512 + 384 + 384 + 512 + 768 + 768 + 768)
  assert lo["opt"] == pytest.approx(2 * 4 * ad, abs=64) and lo["ref"] == 0
  assert lo["params"] == 4 * (n + ad)
