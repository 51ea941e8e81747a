"""Ahead-of-time TPU compilation (r1jax.aot) from this CPU host, with libtpu (a test extra).

The `:tiny` configs' programs compile for a single-chip and a multi-chip TPU topology with
`logprob_impl="auto"`, so the Pallas TPU (Mosaic) kernel, not the XLA fallback, is inside
the log-prob and train-step programs. No skips: if this JAX cannot compile for TPU, these fail.
"""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import r1_zero, reward_model as rm_configs, sft as sft_configs
from r1jax import aot, hardware, programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_PROGRAMS = ("logprobs", "train_step", "micro_grad", "sft_train_step", "sft_micro_grad")


def _itemsize(dtype) -> int:
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return 8  # a threefry key is two uint32 words
  return np.dtype(dtype).itemsize


def hand_bytes(args) -> tuple[int, int]:
  """(exact, tiled upper bound) bytes per chip of a program's arguments, from their shard
  shapes: TPU buffers pad the minor dimension to 128 lanes and the second-minor one to 8
  sublanes of 32-bit words (16 for 16-bit, 32 for 8-bit types); a buffer is >= 512 bytes."""
  exact = padded = 0
  for x in jax.tree.leaves(args):
    shape, size = x.sharding.shard_shape(x.shape), _itemsize(x.dtype)
    exact += math.prod(shape) * size
    dims = list(shape) or [1]
    dims[-1] = -(-dims[-1] // 128) * 128
    if len(dims) > 1:
      sub = 8 * max(1, 4 // size)
      dims[-2] = -(-dims[-2] // sub) * sub
    padded += max(512, math.prod(dims) * max(size, 1))
  return exact, padded


def _rm_run_dir(tmp_path) -> str:
  """An RM run directory as r1jax.reward_model writes it, minus the weights (not read)."""
  d = tmp_path / "rm"
  d.mkdir()
  c = rm_configs.get_config("tiny")
  (d / "config.json").write_text(c.to_json())
  from r1jax.model.config import PRESETS
  from r1jax.model.checkpoint_io import save_model_config
  save_model_config(PRESETS["tiny"], str(d / "model_config.json"))
  return str(d)


def _compile(c, topology: str, prompt_len: int = 16) -> dict:
  res = aot.run(c, topology, prompt_len)
  return {r["program"]: dict(r, args=None) for s in res["stages"].values()
          for r in s["programs"]} | {"_res": res}


@pytest.fixture(scope="module")
def single_chip(tmp_path_factory):
  """GRPO + PPO critic + reward-model forward, tiny, on one v5e chip."""
  c = r1_zero.get_config("tiny")
  c.rl.algorithm = "ppo"
  c.rewards.reward_model.checkpoint = _rm_run_dir(tmp_path_factory.mktemp("aot"))
  c.rewards.reward_model.weight = 1.0
  return c, _compile(c, "v5e:1x1")


@pytest.fixture(scope="module")
def multi_chip():
  """GRPO (micro-batched) on 8 v5e chips as data=2 x fsdp=2 x tensor=2, and SFT with the
  streamed KD against a teacher on the same mesh, both with attention in query blocks."""
  c = r1_zero.get_config("tiny")
  c.mesh.shape = (2, 2, 2)
  # libtpu 0.0.42 aborts (collective_opt_utils.cc "Check failed: constant->opcode() ==
  # kConstant") on the continuous sampler at this mesh with one slot per data-parallel
  # device (4 slots); two per device compile.
  c.sampling.num_slots = 8
  c.model.attention_chunk = 8  # the train step's attention in blocks of 8 queries
  s = sft_configs.get_config("tiny_distill")
  s.mesh.shape = (2, 2, 2)
  s.train.micro_batch_size = 1
  s.model.attention_chunk = 8
  return c, _compile(c, "v5e:2x4"), _compile(s, "v5e:2x4")


def test_single_chip_compiles_every_program(single_chip):
  c, r = single_chip
  assert {"sample", "prefill", "decode_step", "logprobs", "train_step", "micro_grad",
          "critic_values", "critic_train_step", "critic_micro_grad",
          "rm_forward"} <= set(r), sorted(r)
  # 2 prompts x 4 samples = 8 rows; continuous batching decodes them in 8 // 2 = 4 slots, so
  # at most 2 waves of max_new_tokens steps (static: one wave of 8 rows).
  waves = 2 if c.sampling.mode == "continuous" else 1
  assert r["decode_step"]["per_step"] == waves * c.sampling.max_new_tokens
  assert r["micro_grad"]["per_step"] == 1  # 8 rows in micro-batches of 4: one more pass
  assert r["logprobs"]["per_step"] == 2  # reference (beta > 0) and pi_old (PPO)


def test_pallas_tpu_kernel_is_inside_the_log_prob_programs(single_chip, multi_chip):
  """logprob_impl='auto' lowers to the Mosaic kernel on TPU: one forward call in the no-grad
  log-probs, forward + two backward kernels where there is a gradient."""
  for r in (single_chip[1], multi_chip[1], multi_chip[2]):
    for name in KERNEL_PROGRAMS:
      if name in r:
        want = 1 if name == "logprobs" else 3
        assert r[name]["pallas_kernels"] >= want, (name, r[name]["pallas_kernels"])


def test_memory_figures_against_hand_computed_argument_bytes(single_chip, multi_chip):
  _, r1 = single_chip
  c, r8, _ = multi_chip
  for (cfg, res, topo) in ((None, r1, "v5e:1x1"), (c, r8, "v5e:2x4")):
    # Recreate the programs' abstract arguments, and compare the compiler's figures with a
    # computation of their bytes per chip from the shard shapes.
    conf = single_chip[0] if cfg is None else cfg
    chip, devices = hardware.topology_devices(topo)
    mesh = aot.make_mesh(conf.mesh.shape, devices, topo)
    with aot.mesh_lib.use_mesh(mesh):
      progs = {p.name: p for _, ps in programs.programs_of(conf, mesh, 16) for p in ps}
    for name, p in progs.items():
      exact, padded = hand_bytes(p.args)
      got = res[name]["argument_bytes"]
      assert exact <= got <= padded, (topo, name, exact, got, padded)
      m = res[name]
      assert m["total_bytes"] == (m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"]
                                  + m["temp_bytes"] + m["code_bytes"])
    # The train state is donated: its buffers are reused for the new state.
    state_exact, _ = hand_bytes(progs["train_step"].args[0])
    assert res["train_step"]["alias_bytes"] >= state_exact


def test_sharding_splits_the_state_over_the_chips(single_chip, multi_chip):
  one = single_chip[1]
  _, eight, sft = multi_chip
  # fsdp x tensor = 4 shards of the big params: the state per chip is much smaller.
  assert eight["train_step"]["argument_bytes"] < 0.6 * one["train_step"]["argument_bytes"]
  assert sft["sft_train_step"]["flops"] > 0 and sft["sft_micro_grad"]["per_step"] == 1


def test_roofline_is_the_max_of_compute_and_memory_time(single_chip):
  _, r = single_chip
  chip = hardware.CHIPS["v5e"]
  for m in r.values():
    if isinstance(m, dict) and "roofline_s" in m:
      assert m["roofline_s"] == pytest.approx(max(m["flops"] / chip.peak_flops,
                                                  m["bytes_accessed"] / chip.hbm_bw))
  stage = r["_res"]["stages"]["grpo"]
  step = sum(m["roofline_s"] * m["per_step"] for m in stage["programs"])
  assert stage["step_roofline_s"] == pytest.approx(step)
  assert 0 < stage["sampling_share"] < 1


def test_pipeline_stage_with_a_routed_reward_model():
  """configs/r1.py stage by stage: the all-scenario stage scores general prompts with the
  reward_model stage's model (routed, weight 0 overall), resolved through "@reward_model"."""
  from configs import r1
  res = aot.run(r1.get_config("tiny"), "v5e:1x1", 16, stage="all_scenario_rl")
  names = [p["program"] for p in res["stages"]["all_scenario_rl"]["programs"]]
  assert "rm_forward" in names and "train_step" in names, names


def test_public_token_logprobs_compiles_on_sharded_operands_for_tpu():
  """Users call r1jax.kernels.token_logprobs under plain jit on mesh-sharded operands (no
  mesh context, no shard_map): the Mosaic kernel must still compile for a multi-chip TPU."""
  from r1jax.kernels import token_logprobs
  _, devices = hardware.topology_devices("v5e:2x4")
  mesh = jax.sharding.Mesh(np.array(devices).reshape(2, 4), ("data", "tensor"))
  sds = lambda shape, dt, *spec: jax.ShapeDtypeStruct(shape, dt,
                                                      sharding=NamedSharding(mesh, P(*spec)))
  h = sds((512, 256), jnp.bfloat16, "data", None)
  w = sds((256, 4096), jnp.bfloat16, None, "tensor")
  t = sds((512,), jnp.int32, "data")
  fwd = jax.jit(lambda h, w, t: token_logprobs(h, w, t)).lower(h, w, t)
  assert fwd.as_text().count("tpu_custom_call") == 1
  fwd.compile()
  loss = lambda h, w, t: jnp.sum(token_logprobs(h, w, t, return_entropy=True)[0])
  grad = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(h, w, t)
  assert grad.as_text().count("tpu_custom_call") == 3
  grad.compile()


def test_multi_host_topology_places_the_global_batch():
  """v5p:4x4x4 is 64 chips on 16 hosts: every process reads the same global batch and its
  devices take their rows of it; together they cover it once per replica."""
  chip, devices = hardware.topology_devices("v5p:4x4x4")
  assert len(devices) == 64 and len({d.process_index for d in devices}) == 16
  mesh = aot.make_mesh((4, -1, 1), devices, "v5p:4x4x4")
  per_host = aot.hosts_report(mesh, 64)
  assert len(per_host) == 16
  assert sorted(set().union(*map(set, per_host.values()))) == list(range(64))
  assert all(len(rows) == 64 // 16 for rows in per_host.values())


def test_bad_topology_and_mesh_give_one_line():
  with pytest.raises(ValueError, match="v9:2x2"):
    hardware.parse_topology("v9:2x2")
  with pytest.raises(ValueError, match="v5e:3x3"):
    hardware.topology_devices("v5e:3x3")
  _, devices = hardware.topology_devices("v5e:2x2")
  with pytest.raises(ValueError, match=r"mesh.shape=\(1, 1, 1\) does not divide the 4 chips"):
    aot.make_mesh((1, 1, 1), devices, "v5e:2x2")
  with pytest.raises(ValueError, match=r"\(3, -1, 1\)"):
    aot.make_mesh((3, -1, 1), devices, "v5e:2x2")


def test_cli_model_that_does_not_fit_ends_with_one_line():
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  cmd = [sys.executable, "-m", "r1jax.aot", "--config=configs/reward_model.py:tiny",
         "--topology=v5e:1x1", "--config.data.batch_size=256", "--config.data.max_len=8192"]
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 1, r.stdout + r.stderr
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith("r1jax.aot: reward_model/rm_train_step does not fit on v5e:1x1")
  assert "bytes over" in lines[0]


def test_measure_times_each_program_on_devices_that_run(monkeypatch, capsys):
  """`--measure` on a GPU topology runs each compiled program on random inputs (here the
  host CPU stands in for the GPU); the whole sampler runs every prompt to full length."""
  monkeypatch.setattr(hardware, "gpu_devices", lambda name, chip, n: jax.devices("cpu")[:n])
  c = r1_zero.get_config("tiny")
  c.mesh.shape = (1, 1, 1)
  res = aot.run(c, "h200:1", prompt_len=8, measure=1)
  (stage,) = res["stages"].values()
  progs = {r["program"]: r for r in stage["programs"]}
  assert all(r["measured_s"] > 0 for r in progs.values()), progs
  assert stage["step_measured_s"] >= stage["sample_measured_s"] > 0
  assert "step measured" in capsys.readouterr().out
  sample = next(p for p in programs.programs_of(c, aot.make_mesh((1, 1, 1), jax.devices("cpu")[:1],
                                                                 "cpu"), 8)[0][1]
                if p.name == "sample")
  args = aot.materialize(sample)
  bb, n = args[1].shape[0], c.sampling.max_new_tokens
  assert int(args[3]) == bb and np.all(np.asarray(args[5]) == n) and np.all(np.asarray(args[2]) == 1)


def test_plan_skips_slices_too_small_for_the_state(monkeypatch):
  """bench.aot_plan's floor: float32 params + two AdamW moments + a gradient (16 bytes per
  parameter; LoRA: the 4-byte base) over the chips, SmolLM2-135M's 134,515,008 parameters by
  hand; slices below it are logged as not fitting and never compiled."""
  from r1jax.bench import aot_plan
  assert aot_plan.state_floor("smollm2-135m", "full", 4) == 134_515_008 * 16 / 4
  assert aot_plan.state_floor("smollm2-135m", "lora", 2) == 134_515_008 * 4 / 2
  compiled, logged = [], []
  monkeypatch.setattr(aot_plan, "measure", lambda m, w, k, topo, effort: compiled.append(topo) or
                      dict(fits=True, topology=topo))
  r = aot_plan.smallest_slice("qwen2.5-32b", "grpo4k", "full", "v5e", logged.append)
  # ~32.8B parameters x 16 bytes = 524 GB: more than 30 of v5e's 16 GiB chips.
  assert compiled == ["v5e:4x8"] and r["topology"] == "v5e:4x8"
  assert [x["topology"] for x in logged if not x["fits"]] == [
      "v5e:1x1", "v5e:2x2", "v5e:2x4", "v5e:4x4"]
  assert all("state alone" in x["error"] for x in logged if not x["fits"])


def test_plan_effort_keeps_flops():
  """bench.aot_plan compiles at XLA's exec_time_optimization_effort -1 (`EFFORT`, several
  times faster on a CPU host): the TPU compiler builds a different executable there (on this
  tiny program it keeps temporaries in HBM that effort 0 keeps in VMEM) but counts the same
  FLOPs within 1%; the tiny config's micro-batched train step for one v5e chip. (Memory at
  the plan's sizes is compared with effort 0 in the README.)"""
  from r1jax.bench import aot_plan
  c = r1_zero.get_config("tiny")
  chip, devices = hardware.topology_devices("v5e:1x1")
  mesh = aot.make_mesh(c.mesh.shape, devices, "v5e:1x1")
  with aot.mesh_lib.use_mesh(mesh):
    p = next(p for _, ps in programs.programs_of(c, mesh, 16) for p in ps
             if p.name == "train_step")
    fast, full = (aot.compile_program(p, chip, effort=e) for e in (aot_plan.EFFORT, 0.0))
  assert fast["temp_bytes"] != full["temp_bytes"]  # the option reaches the TPU compiler
  assert abs(fast["flops"] - full["flops"]) <= 0.01 * full["flops"]
