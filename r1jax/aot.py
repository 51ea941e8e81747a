"""Ahead-of-time compile of a run's programs for a TPU topology, on any host, no TPU needed.

`python -m r1jax.aot --config=configs/r1_zero.py --topology=v5p:2x2x2 [--prompt_len=1024]`

Builds the run's mesh (the config's `mesh.shape`, `-1` as in training) from the compile-only
devices libtpu describes, and compiles every program the config's entry point executes from
ShapeDtypeStructs alone (no weights are read or allocated): for GRPO the sampler (prefill +
decode loop), the reference / old log-probs, the train step with its micro-batches and, where
configured, PPO's critic and the reward model's forward; for SFT / distillation, reward-model
training and rejection sampling their steps; for the R1 pipeline (`configs/r1.py`) each stage.
Per program and chip it prints the TPU compiler's memory (arguments, outputs, temporaries,
total against the chip's HBM), FLOPs and bytes from its cost analysis, and a roofline time.

XLA's cost analysis counts a loop body once, so time comes from programs compiled for one
iteration, each with how often a step runs it: `prefill` once, `decode_step` once per new token
(its cache at full length: an upper bound), one micro-batch's gradient per extra micro-batch.
A roofline time is max(FLOPs / peak, bytes / bandwidth) per program: it leaves out collective
communication, host work (rewards, data), kernel launch and pipeline gaps, and assumes every
completion runs to `max_new_tokens`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from r1jax import grpo, hardware, memory, mesh as mesh_lib, ppo, reward_head, sampling, steps
from r1jax import distill, lora as lora_lib
from r1jax.model import hf
from r1jax.model.config import PRESETS, ModelConfig
from r1jax.model.transformer import param_axes, param_shapes

_CONFIG = _TOPOLOGY = _PROMPT_LEN = _STAGE = _JSON = None


def define_flags() -> None:
  """Command-line flags, defined only when run as a program (the trainers define --config
  too, and tests import both)."""
  global _CONFIG, _TOPOLOGY, _PROMPT_LEN, _STAGE, _JSON
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                            lock_config=False)
  _TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2", "TPU topology: v5p:2x2x2, v5e:2x4, ...")
  _PROMPT_LEN = flags.DEFINE_integer("prompt_len", 256, "Prompt tokens (GRPO, rejection sampling).")
  _STAGE = flags.DEFINE_string("stage", "", "Pipeline configs: compile only this stage.")
  _JSON = flags.DEFINE_string("json", "", "Also write the results to this JSON file.")


@dataclasses.dataclass
class Program:
  name: str
  fn: Any                       # a jitted function
  args: tuple                   # ShapeDtypeStructs with shardings
  per_step: float = 1.0         # times a step runs it, for the roofline (0: memory only)
  sampling: bool = False        # part of the rollout


class DoesNotFit(Exception):
  pass


# ------------------------------------------------------------------ abstract inputs


def model_config(spec: Any, stages: Any = None) -> ModelConfig:
  """The architecture of a model spec, without reading weights; "@stage" run paths of a
  pipeline config resolve to the model that stage trains."""
  spec = dict(spec)
  src = spec["source"]
  dtypes = {k: spec[k] for k in ("dtype", "param_dtype", "remat") if k in spec}
  if src == "run" and str(spec.get("path", "")).startswith("@") and stages is not None:
    name = spec["path"][1:].split("/")[0]
    if name not in stages:
      raise ValueError(f"model.path={spec['path']!r} names no stage of the pipeline")
    return model_config(stages[name]["config"]["model"], stages).replace(**dtypes)
  if src == "preset":
    if spec.get("preset") not in PRESETS:
      raise ValueError(f"model.preset={spec.get('preset')!r}; choose from {sorted(PRESETS)}")
    cfg = PRESETS[spec["preset"]]
  elif src in ("smollm2_gguf", "gguf"):
    from r1jax.model import gguf
    path = gguf.smollm2_gguf_path() if src == "smollm2_gguf" else spec["path"]
    cfg = gguf.config_from_gguf(gguf.open_gguf(path))  # metadata only
  elif src == "hf_dir":
    from r1jax.model.checkpoint_io import read_hf_config
    cfg = hf.config_from_hf(read_hf_config(spec["path"]))
  elif src == "run":
    from r1jax.model.checkpoint_io import load_model_config
    import os
    cfg = load_model_config(os.path.join(spec["path"], "model_config.json"))
  else:
    raise ValueError(f"model.source={src!r} cannot be compiled ahead of time")
  if int(spec.get("prune_every", 0) or 0) > 1:
    cfg = cfg.replace(num_layers=len(range(0, cfg.num_layers, int(spec["prune_every"]))))
  return cfg.replace(**dtypes)


def _sds(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def abstract_params(cfg: ModelConfig, mesh) -> Any:
  shapes = param_shapes(cfg)
  shardings = mesh_lib.tree_shardings(mesh, param_axes(cfg), shapes)
  return jax.tree.map(lambda s, sh: _sds(s.shape, s.dtype, sh), shapes, shardings)


def abstract_state(params: Any, tx, trainable=lambda p: p) -> steps.TrainState:
  shapes = memory.abstract_state(params, tx, trainable)
  shardings = memory.state_shardings(params, tx, trainable)
  return jax.tree.map(lambda s, sh: _sds(s.shape, s.dtype, sh), shapes, shardings)


def batch_sds(mesh, shape, dtype=jnp.int32) -> jax.ShapeDtypeStruct:
  """Leading dim over the `batch` axes, the rest whole (as `mesh.shard_batch` places it)."""
  axes = ("batch",) + (None,) * (len(shape) - 1)
  return _sds(shape, dtype, mesh_lib.named_sharding(mesh, axes, shape))


def _round(n: int, k: int) -> int:
  return -(-n // k) * k if k > 1 else n


def _train_programs(prefix: str, loss_fn: Callable, tx, state, batch, n_micro: int,
                    micro_weight, mu: float = 1.0, lcfg=lora_lib.LoraConfig(),
                    consts: tuple = ()) -> list[Program]:
  """The jitted train step as the trainer runs it, and (n_micro > 1) one micro-batch's
  gradient, which the step's scan runs n_micro - 1 more times than its cost analysis says."""
  step = lora_lib.make_train_step(loss_fn, tx, n_micro, micro_weight, lcfg) if not consts \
      else steps.make_train_step(loss_fn, tx, n_micro, micro_weight)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  jitted = jax.jit(step, donate_argnums=0, out_shardings=(shardings, None))
  out = [Program(f"{prefix}train_step", jitted, (state, batch, *consts), per_step=mu)]
  if n_micro > 1:
    micro = jax.tree.map(lambda x: batch_sds(x.sharding.mesh, (x.shape[0] // n_micro,)
                                             + x.shape[1:], x.dtype), batch)
    if lcfg.enabled:
      base = state.params["base"]
      grad = jax.value_and_grad(lambda ad, mb: loss_fn(lora_lib.combine(base, ad, lcfg), mb),
                                has_aux=True)
      args = (state.params["lora"], micro)
    else:
      grad = jax.value_and_grad(loss_fn, has_aux=True)
      args = (state.params, micro, *consts)
    out.append(Program(f"{prefix}micro_grad", jax.jit(grad), args, per_step=mu * (n_micro - 1)))
  return out


# ------------------------------------------------------------------ programs per entry point


def sampler_programs(params, cfg: ModelConfig, mesh, b: int, p: int, scfg, prefix=""):
  """The sampler as it runs (memory), and its prefill and one decode step (time)."""
  scfg = dataclasses.replace(scfg, fuse_weights=False)  # what an accelerator backend picks
  bb = sampling.batch_bucket(b, scfg.batch_bucket, mesh_lib.batch_parallel_size(mesh))
  rows, n = bb * scfg.num_samples, scfg.max_new_tokens
  toks, mask = batch_sds(mesh, (bb, p)), batch_sds(mesh, (bb, p))
  rng = jax.eval_shape(lambda: jax.random.key(0))
  rep = mesh_lib.replicated(mesh)
  rng = _sds(rng.shape, rng.dtype, rep)
  gen = jax.jit(sampling._generate.__wrapped__, static_argnames=("cfg", "scfg"))
  out = [Program(f"{prefix}sample", functools.partial(_lower_static, gen, cfg=cfg, scfg=scfg),
                 (params, toks, mask, _sds((), jnp.int32, rep), rng), per_step=0,
                 sampling=True)]

  def prefill(params, toks, mask):
    m = mask.astype(bool)
    last, cache = sampling._prefill(params, cfg, toks, m, sampling.positions_from_mask(m),
                                    scfg.prefill_chunk)
    logits = last @ sampling.unembed_matrix(params, cfg).astype(last.dtype)
    return logits, cache
  out.append(Program(f"{prefix}prefill", jax.jit(prefill), (params, toks, mask), sampling=True))

  wdt = jnp.dtype(scfg.decode_dtype or cfg.dtype)
  kt = sampling._k_transposed(wdt)
  s = p + n  # the cache at its full length: an upper bound on every step's reads
  k_shape = (rows, cfg.num_kv_heads, cfg.hd, s) if kt else (rows, cfg.num_kv_heads, s, cfg.hd)
  v_shape = (rows, cfg.num_kv_heads, s, cfg.hd)
  named = lambda axes, shape: mesh_lib.named_sharding(mesh, axes, shape)
  cache = sampling._Cache(
      tuple(_sds(k_shape, wdt, named(sampling._K_AXES if kt else sampling._V_AXES, k_shape))
            for _ in range(cfg.num_layers)),
      tuple(_sds(v_shape, wdt, named(sampling._V_AXES, v_shape)) for _ in range(cfg.num_layers)),
      batch_sds(mesh, (rows, s), jnp.bool_))
  # Decode weights in their storage dtype, made once per generate call (not per token).
  wparams = jax.tree.map(lambda x: _sds(x.shape, wdt if x.ndim > 1 else x.dtype, x.sharding),
                         params)

  def decode(params, tok, pos, live, cache):
    w = sampling._decode_weights(params, cfg, False, wdt)
    return sampling._decode_step(w, cfg, tok, pos, live, cache, jnp.asarray(s - 1, jnp.int32))
  out.append(Program(f"{prefix}decode_step", jax.jit(decode),
                     (wparams, batch_sds(mesh, (rows,)), batch_sds(mesh, (rows,)),
                      batch_sds(mesh, (rows,), jnp.bool_), cache), per_step=n, sampling=True))
  return out


def _lower_static(gen, *args, cfg, scfg):
  return gen.lower(args[0], cfg, *args[1:], scfg)


def _completion_batch(mesh, b, p, rows, n, *, per_token_adv=False, ref=False, old=False):
  f32 = jnp.float32
  return grpo.Batch(
      prompt_tokens=batch_sds(mesh, (b, p)), prompt_mask=batch_sds(mesh, (b, p)),
      completion_tokens=batch_sds(mesh, (rows, n)), completion_mask=batch_sds(mesh, (rows, n)),
      advantages=batch_sds(mesh, (rows, n) if per_token_adv else (rows,), f32),
      old_logp=batch_sds(mesh, (rows, n), f32) if old else None,
      ref_logp=batch_sds(mesh, (rows, n), f32) if ref else None,
      sampler_logp=batch_sds(mesh, (rows, n), f32))


def grpo_programs(c, mesh, prompt_len: int, stages=None) -> list[Program]:
  from r1jax import run as run_lib
  cfg = model_config(c.model, stages)
  gcfg = run_lib.grpo_config(c)
  lcfg = lora_lib.from_config(c.get("lora"))
  pcfg = ppo.from_config(c)
  g, b = c.sampling.num_samples, c.grpo.prompts_per_step
  rows, n = b * g, c.sampling.max_new_tokens
  p = _round(prompt_len, c.data.get("prompt_bucket", 1))
  params = abstract_params(cfg, mesh)
  out = sampler_programs(params, cfg, mesh, b, p, run_lib.sampling_config(c))
  ref, old = gcfg.beta > 0, c.grpo.mu > 1 or bool(pcfg)
  batch = _completion_batch(mesh, b, p, rows, n, per_token_adv=bool(pcfg), ref=ref, old=old)
  logp = jax.jit(functools.partial(grpo.batch_logprobs, model_cfg=cfg,
                                   temperature=gcfg.temperature, impl=gcfg.logprob_impl))
  if ref or old:
    out.append(Program("logprobs", logp, (params, batch), per_step=int(ref) + int(old)))
  ocfg = steps.OptimConfig(total_steps=c.train.num_steps, **c.optim.to_dict())
  tx = steps.make_optimizer(ocfg)
  loss = functools.partial(grpo.grpo_loss, cfg=ppo.loss_config(gcfg, pcfg) if pcfg else gcfg,
                           model_cfg=cfg)
  tparams = lora_lib.abstract_params(params, lcfg, mesh_lib.replicated(mesh))
  state = abstract_state(tparams, tx, lora_lib.trainable(lcfg))
  n_micro = rows // c.grpo.micro_batch_size
  out += _train_programs("", loss, tx, state, batch, n_micro, grpo.micro_batch_weight(gcfg),
                         mu=c.grpo.mu, lcfg=lcfg)
  if pcfg:
    ccfg = model_config(ppo.critic_spec(c) or c.model, stages) if ppo.critic_spec(c) and \
        ppo.critic_spec(c).get("source") != "policy" else cfg
    cparams = {"model": abstract_params(ccfg, mesh),
               "head": {"w": _sds((ccfg.hidden_size,), jnp.float32, mesh_lib.replicated(mesh)),
                        "b": _sds((), jnp.float32, mesh_lib.replicated(mesh))}}
    ctx = steps.make_optimizer(dataclasses.replace(ocfg, learning_rate=pcfg.critic_learning_rate))
    cstate = abstract_state(cparams, ctx)
    vals = jax.jit(lambda prm, bt: ppo.values(prm, ccfg, bt.prompt_tokens, bt.prompt_mask,
                                              bt.completion_tokens, bt.completion_mask))
    out.append(Program("critic_values", vals, (cparams, batch)))
    cbatch = ppo.CriticBatch(batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens,
                             batch.completion_mask, batch_sds(mesh, (rows, n), jnp.float32),
                             batch_sds(mesh, (rows, n), jnp.float32))
    closs = functools.partial(ppo.critic_loss, pcfg=pcfg, model_cfg=ccfg)
    out += _train_programs("critic_", lambda prm, bt: closs(prm, bt), ctx, cstate, cbatch,
                           n_micro, lambda bt: bt.completion_mask.sum())
  rm = c.rewards.get("reward_model", {})
  if rm.get("checkpoint") and rm.get("weight", 0):
    out.append(rm_forward_program(rm, mesh, rows, p + n, stages))
  return out


def rm_forward_program(rm, mesh, rows: int, length: int, stages=None) -> Program:
  """The reward model's scoring forward over the step's completions (rm_reward)."""
  path = rm["checkpoint"]
  if str(path).startswith("@") and stages is not None:
    spec = stages[path[1:].split("/")[0]]["config"]
    cfg, max_len = model_config(spec["model"], stages), spec["data"]["max_len"]
  else:
    import os
    with open(os.path.join(path, "config.json")) as f:
      spec = json.load(f)
    cfg, max_len = model_config(dict(source="run", path=path)), spec["data"]["max_len"]
  max_len = rm.get("max_len") or max_len or length
  params = reward_head_params(cfg, mesh)
  bs = rm.get("batch_size", rows) or rows
  fn = jax.jit(reward_head.scores, static_argnums=1)
  return Program("rm_forward", functools.partial(_lower_cfg, fn, cfg=cfg),
                 (params, batch_sds(mesh, (bs, max_len)), batch_sds(mesh, (bs, max_len))),
                 per_step=-(-rows // bs))


def _lower_cfg(fn, params, *args, cfg):
  return fn.lower(params, cfg, *args)


def reward_head_params(cfg: ModelConfig, mesh) -> Any:
  params = abstract_params(cfg, mesh)
  head = jax.eval_shape(lambda: reward_head.init_head(cfg))
  axes = reward_head.head_axes()
  params[reward_head.HEAD] = {k: _sds(v.shape, v.dtype, mesh_lib.named_sharding(
      mesh, axes[k], v.shape)) for k, v in head.items()}
  return params


def sft_programs(c, mesh, prompt_len: int, stages=None) -> list[Program]:
  from r1jax import sft as sft_lib
  cfg = model_config(c.model, stages)
  dcfg = sft_lib.distill_config(c)
  teacher_cfg = teacher = None
  if sft_lib.uses_teacher(c):
    teacher_cfg = model_config(c.teacher, stages)
    teacher = abstract_params(teacher_cfg, mesh)
  bsz, length = c.data.batch_size, c.data.seq_len
  batch = {k: batch_sds(mesh, (bsz, length)) for k in
           ("tokens", "positions", "segment_ids", "targets", "loss_mask")}
  ocfg = steps.OptimConfig(**c.optim.to_dict())
  tx = steps.make_optimizer(ocfg)
  state = abstract_state(abstract_params(cfg, mesh), tx)
  loss = functools.partial(sft_lib._loss, model_cfg=cfg, dcfg=dcfg, teacher_cfg=teacher_cfg)
  return _train_programs("sft_", loss, tx, state, batch, bsz // c.train.micro_batch_size,
                         distill.token_count, consts=(teacher,))


def reward_model_programs(c, mesh, prompt_len: int, stages=None) -> list[Program]:
  from r1jax import reward_model as rm_lib
  cfg = model_config(c.model, stages)
  bs, length = c.data.batch_size, c.data.max_len
  rows = 2 * bs if c.objective == "bt" else bs
  f32 = jnp.float32
  batch = dict(tokens=batch_sds(mesh, (rows, length)), mask=batch_sds(mesh, (rows, length)),
               weight=batch_sds(mesh, (bs,), f32),
               **({"margin": batch_sds(mesh, (bs,), f32)} if c.objective == "bt"
                  else {"label": batch_sds(mesh, (bs,), f32)}))
  tx = steps.make_optimizer(steps.OptimConfig(**c.optim.to_dict()))
  state = abstract_state(reward_head_params(cfg, mesh), tx)
  loss = functools.partial(rm_lib.loss_fn, model_cfg=cfg, objective=c.objective,
                           center_coef=c.loss.center_coef)
  return _train_programs("rm_", loss, tx, state, batch, 1, None)


def rejection_programs(c, mesh, prompt_len: int, stages=None) -> list[Program]:
  cfg = model_config(c.model, stages)
  s = c.sampling
  scfg = sampling.SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                 top_p=s.get("top_p", 1.0), num_samples=s.num_samples)
  p = _round(prompt_len, c.data.get("prompt_bucket", 1))
  return sampler_programs(abstract_params(cfg, mesh), cfg, mesh, c.batch_prompts, p, scfg)


KINDS = {"grpo": grpo_programs, "sft": sft_programs, "reward_model": reward_model_programs,
         "rejection_sample": rejection_programs}


def config_kind(c) -> str:
  """Which entry point a config is for."""
  if "stages" in c:
    return "pipeline"
  for key, kind in (("grpo", "grpo"), ("distill", "sft"), ("objective", "reward_model"),
                    ("filters", "rejection_sample")):
    if key in c:
      return kind
  raise ValueError("the config is none of GRPO, SFT, reward model, rejection sampling or "
                   "the R1 pipeline")


def programs_of(c, mesh, prompt_len: int, stage: str = "") -> list[tuple[str, list[Program]]]:
  """[(stage name or kind, programs)] for a config of any entry point."""
  kind = config_kind(c)
  if kind != "pipeline":
    return [(kind, KINDS[kind](c, mesh, prompt_len))]
  stages = c.stages.to_dict() if hasattr(c.stages, "to_dict") else dict(c.stages)
  names = [stage] if stage else [n for n in c.get("order", stages) if n in stages]
  if stage and stage not in stages:
    raise ValueError(f"--stage={stage!r}; the pipeline's stages are {sorted(stages)}")
  out = []
  for name in names:
    sc = ConfigDict(stages[name]["config"])
    out.append((name, KINDS[stages[name]["kind"]](sc, mesh, prompt_len, stages)))
  return out


# ------------------------------------------------------------------ compile and report


def make_mesh(shape, devices, topology: str):
  shape = list(shape)
  n = len(devices)
  known = 1
  for s in shape:
    known *= s if s != -1 else 1
  if (-1 in shape and n % known) or (-1 not in shape and known != n):
    raise ValueError(f"mesh.shape={tuple(shape)} does not divide the {n} chips of "
                     f"--topology={topology} (e.g. --config.mesh.shape='(1,-1,1)')")
  return mesh_lib.make_mesh(tuple(shape), devices)


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def compile_program(p: Program, chip: hardware.Chip) -> dict:
  """Lower and compile `p`; its per-chip memory, cost and roofline time."""
  lowered = p.fn.lower(*p.args) if hasattr(p.fn, "lower") else p.fn(*p.args)
  compiled = lowered.compile()
  m = compiled.memory_analysis()
  cost = _cost(compiled)
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  return dict(program=p.name, argument_bytes=m.argument_size_in_bytes,
              output_bytes=m.output_size_in_bytes, alias_bytes=m.alias_size_in_bytes,
              temp_bytes=m.temp_size_in_bytes, code_bytes=m.generated_code_size_in_bytes,
              total_bytes=total, hbm_bytes=chip.hbm_bytes, flops=flops, bytes_accessed=nbytes,
              roofline_s=max(flops / chip.peak_flops, nbytes / chip.hbm_bw),
              per_step=p.per_step, sampling=p.sampling,
              pallas_kernels=lowered.as_text().count("tpu_custom_call"))


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def _bytes_over(msg: str) -> float | None:
  """Bytes over HBM from XLA's "RESOURCE_EXHAUSTED: ... (1.53T) exceeds available HBM
  (15.75G)", or None for any other error."""
  import re
  if "RESOURCE_EXHAUSTED" not in msg:
    return None
  sizes = [float(v) * _UNITS[u] for v, u in re.findall(r"\(([\d.]+)([KMGTP]?)\)", msg)]
  return sizes[0] - sizes[1] if len(sizes) >= 2 else float("nan")


def _gib(x: float) -> str:
  return f"{x / hardware.GiB:.3f}"


def print_table(stage: str, results: list[dict]) -> dict:
  print(f"\n[{stage}]  GiB per chip; GFLOP and GB accessed per chip; roofline ms per call")
  print(f"{'program':<20}{'args':>9}{'out':>9}{'temp':>9}{'total':>9}{'HBM%':>7}"
        f"{'GFLOP':>10}{'GB':>9}{'ms':>10}{'x/step':>8}{'mosaic':>7}")
  for r in results:
    print(f"{r['program']:<20}{_gib(r['argument_bytes']):>9}{_gib(r['output_bytes']):>9}"
          f"{_gib(r['temp_bytes']):>9}{_gib(r['total_bytes']):>9}"
          f"{100 * r['total_bytes'] / r['hbm_bytes']:>6.1f}%{r['flops'] / 1e9:>10.2f}"
          f"{r['bytes_accessed'] / 1e9:>9.3f}{r['roofline_s'] * 1e3:>10.3f}"
          f"{r['per_step']:>8g}{r['pallas_kernels']:>7}")
  step = sum(r["roofline_s"] * r["per_step"] for r in results)
  samp = sum(r["roofline_s"] * r["per_step"] for r in results if r["sampling"])
  peak = max(r["total_bytes"] for r in results)
  summary = dict(step_roofline_s=step, sampling_share=samp / step if step else 0.0,
                 peak_bytes=peak)
  print(f"step roofline {step:.4g} s ({100 * summary['sampling_share']:.0f}% sampling); "
        f"largest program {_gib(peak)} GiB of {_gib(results[0]['hbm_bytes'])} GiB HBM")
  return summary


def hosts_report(mesh, rows: int) -> dict:
  """Per process: its devices and the global batch rows they hold. Every process reads the
  same global batch (the trainer's shard_count=1), so each places its own devices' rows."""
  sh = mesh_lib.named_sharding(mesh, ("batch",), (rows,))
  per = {}
  for dev, idx in sh.devices_indices_map((rows,)).items():
    start, stop, _ = idx[0].indices(rows)
    per.setdefault(dev.process_index, set()).update(range(start, stop))
  covered = set().union(*per.values())
  if covered != set(range(rows)):
    raise ValueError(f"the batch of {rows} rows is not covered by the mesh's devices")
  return {int(k): sorted(v) for k, v in sorted(per.items())}


def run(c, topology: str, prompt_len: int = 256, stage: str = "") -> dict:
  """Compile every program of config `c` for `topology`; raises DoesNotFit / ValueError."""
  chip, devices = hardware.topology_devices(topology)
  mesh = make_mesh(tuple(c.mesh.shape) if "mesh" in c else (1, 1, -1), devices, topology)
  n_hosts = len({d.process_index for d in devices})
  print(f"r1jax.aot: {topology}: {len(devices)} x {chip.name} on {n_hosts} host(s) "
        f"({_gib(chip.hbm_bytes)} GiB HBM, {chip.peak_flops / 1e12:.0f} TFLOP/s bf16, "
        f"{chip.hbm_bw / 1e9:.0f} GB/s; {chip.source}); mesh "
        + " ".join(f"{k}={v}" for k, v in mesh.shape.items()), flush=True)
  out = dict(topology=topology, chip=chip.name, chips=len(devices), hosts=n_hosts,
             mesh=dict(mesh.shape), stages={})
  with mesh_lib.use_mesh(mesh):
    for name, progs in programs_of(c, mesh, prompt_len, stage):
      results = []
      for p in progs:
        try:
          r = compile_program(p, chip)
        except Exception as e:  # noqa: BLE001 - one line naming the program
          msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
          over = _bytes_over(msg)
          if over is not None:  # the TPU compiler's own HBM check
            raise DoesNotFit(f"{name}/{p.name} does not fit on {topology}: about {over:.4g} "
                             f"bytes over per chip ({msg})") from e
          raise DoesNotFit(f"{name}/{p.name} does not compile for {topology}: {msg}") from e
        if r["total_bytes"] > chip.hbm_bytes:
          raise DoesNotFit(f"{name}/{p.name} does not fit on {topology}: {r['total_bytes']} "
                           f"bytes per chip > {chip.hbm_bytes} HBM "
                           f"({r['total_bytes'] - chip.hbm_bytes} bytes over)")
        results.append(r)
      summary = print_table(name, results)
      if n_hosts > 1:
        rows = progs[0].args[1].shape[0] if progs and len(progs[0].args) > 1 else 0
        if rows:
          summary["rows_per_host"] = {k: len(v) for k, v in hosts_report(mesh, rows).items()}
          print(f"{n_hosts} hosts: every process reads the global batch of {rows} prompts and "
                f"places its devices' rows: {summary['rows_per_host']}")
      out["stages"][name] = dict(programs=results, **summary)
  return out


def main(argv) -> None:
  del argv
  c = _CONFIG.value
  if c is None:
    raise app.UsageError("--config is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    res = run(c, _TOPOLOGY.value, _PROMPT_LEN.value, _STAGE.value)
  except (DoesNotFit, ValueError, FileNotFoundError) as e:
    print(f"r1jax.aot: {e}", file=sys.stderr)
    sys.exit(1)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(res, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
