"""The programs a run executes, as jitted functions over abstract, sharded inputs.

For each entry point's config (GRPO and its family, SFT / distillation, reward-model
training, rejection sampling, and the R1 pipeline stage by stage) `programs_of` lists the
jitted functions the trainer runs, each with ShapeDtypeStructs carrying the shardings the
trainer gives its arrays on `mesh` and with how often one step runs it. Nothing is read
or allocated: model architectures come from presets, GGUF metadata or config.json files.
`r1jax.aot` compiles them for a TPU topology.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from r1jax import distill, rl, memory, mesh as mesh_lib, packing, ppo, reward_head
from r1jax import rl_step, sampling, steps
from r1jax import lora as lora_lib
from r1jax.model import hf, moe
from r1jax.model.config import PRESETS, ModelConfig, runtime_fields
from r1jax.model.moe import EXPERT_DTYPE
from r1jax.model.transformer import param_axes, param_shapes


@dataclasses.dataclass
class Program:
  name: str
  fn: Any                       # a jitted function
  args: tuple                   # ShapeDtypeStructs with shardings
  per_step: float = 1.0         # times a step runs it, for the roofline (0: memory only)
  sampling: bool = False        # part of the rollout
  int_fill: tuple = ()          # per argument: the value integer inputs take when measured
  calls: float | None = None    # times a step calls it as a whole (None: per_step); 0 for
                                # the pieces compiled apart for the roofline


# ------------------------------------------------------------------ abstract inputs


def model_config(spec: Any, stages: Any = None) -> ModelConfig:
  """The architecture of a model spec, without reading weights; "@stage" run paths of a
  pipeline config resolve to the model that stage trains."""
  spec = dict(spec)
  src = spec["source"]
  dtypes = runtime_fields(spec)
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
    from r1jax.model.smollm2 import smollm2_gguf_path
    path = smollm2_gguf_path() if src == "smollm2_gguf" else spec["path"]
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
  if spec.get("num_layers"):  # planning: the same blocks, fewer of them (r1jax.bench.aot_plan)
    cfg = cfg.replace(num_layers=int(spec["num_layers"]))
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
                    micro_weight=None, mu: float = 1.0, lcfg=lora_lib.LoraConfig(),
                    consts: tuple = (), step: Callable | None = None) -> list[Program]:
  """The jitted train step as the trainer runs it (`step`, or the plain step of `loss_fn`),
  and (n_micro > 1) one micro-batch's gradient, which the step's scan runs n_micro - 1 more
  times than its cost analysis says."""
  step = step or steps.make_train_step(loss_fn, tx, n_micro, micro_weight)
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
    out.append(Program(f"{prefix}micro_grad", jax.jit(grad), args, per_step=mu * (n_micro - 1),
                       calls=0))  # inside train_step's scan
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
  limits = batch_sds(mesh, (rows,))
  if scfg.mode == "continuous":  # as `sampling.generate` picks the slots
    from r1jax import continuous
    dp = mesh_lib.batch_parallel_size(mesh)
    slots = min(scfg.num_slots or max(1, b * scfg.num_samples // 2), b * scfg.num_samples)
    slots = -(-slots // dp) * dp
    gen = functools.partial(_lower_static, continuous.generate_continuous, cfg=cfg, scfg=scfg,
                            num_slots=slots)
    # Upper bound: every sample runs to max_new_tokens, so the slots decode rows/slots waves.
    decode_rows, decode_steps = slots, n * -(-rows // slots)
  else:
    gen = functools.partial(_lower_static, sampling._generate, cfg=cfg, scfg=scfg)
    decode_rows, decode_steps = rows, n
  out = [Program(f"{prefix}sample", gen,
                 (params, toks, mask, _sds((), jnp.int32, rep), rng, limits), per_step=0,
                 sampling=True, int_fill=(1, 1, 1, bb, 0, n), calls=1)]  # all prompts, full

  def prefill(params, toks, mask):
    m = mask.astype(bool)
    last, cache = sampling._prefill(params, cfg, toks, m, sampling.positions_from_mask(m),
                                    scfg.prefill_chunk)
    logits = last @ sampling.unembed_matrix(params, cfg).astype(last.dtype)
    return logits, cache
  out.append(Program(f"{prefix}prefill", jax.jit(prefill), (params, toks, mask), sampling=True,
                     calls=0))

  wdt = jnp.dtype(scfg.decode_dtype or cfg.dtype)
  kt = sampling._k_transposed(wdt)
  s = p + n  # the cache at its full length: an upper bound on every step's reads
  heads, dk, dv = cfg.cache_dims  # MLA: its latent cache
  k_shape = (decode_rows, heads, dk, s) if kt else (decode_rows, heads, s, dk)
  v_shape = (decode_rows, heads, s, dv)
  named = lambda axes, shape: mesh_lib.named_sharding(mesh, axes, shape)
  cache = sampling._Cache(
      tuple(_sds(k_shape, wdt, named(sampling._K_AXES if kt else sampling._V_AXES, k_shape))
            for _ in range(cfg.num_layers)),
      tuple(_sds(v_shape, wdt, named(sampling._V_AXES, v_shape)) for _ in range(cfg.num_layers)),
      batch_sds(mesh, (decode_rows, s), jnp.bool_))
  # Decode weights in their storage dtype, made once per generate call (not per token).
  wparams = jax.tree.map(lambda x: _sds(x.shape, wdt if x.ndim > 1 else x.dtype, x.sharding),
                         params)

  def decode(params, tok, pos, live, cache):
    w = sampling._decode_weights(params, cfg, False, wdt)
    return sampling._decode_step(w, cfg, tok, pos, live, cache, jnp.asarray(s - 1, jnp.int32))
  out.append(Program(f"{prefix}decode_step", jax.jit(decode, donate_argnums=4),  # in place
                     (wparams, batch_sds(mesh, (decode_rows,)), batch_sds(mesh, (decode_rows,)),
                      batch_sds(mesh, (decode_rows,), jnp.bool_), cache), per_step=decode_steps,
                     sampling=True, calls=0))
  return out


def _lower_static(gen, params, *args, cfg, scfg, **static):
  """Lower a jitted sampler whose model and sampling configs are static arguments."""
  return gen.lower(params, cfg, *args, scfg, **static)


def _experts_sds(mesh, cfg: ModelConfig | None, rows: int, t: int):
  """Router replay's expert ids [rows, L_moe, t, k] (None without a `cfg`: replay off)."""
  if cfg is None:
    return None
  return batch_sds(mesh, (rows, len(cfg.moe_layers), t, cfg.num_experts_per_tok), EXPERT_DTYPE)


def _completion_batch(mesh, b, p, rows, n, *, per_token_adv=False, ref=False, old=False,
                      replay: ModelConfig | None = None):
  f32 = jnp.float32
  return rl.Batch(
      prompt_tokens=batch_sds(mesh, (b, p)), prompt_mask=batch_sds(mesh, (b, p)),
      completion_tokens=batch_sds(mesh, (rows, n)), completion_mask=batch_sds(mesh, (rows, n)),
      advantages=batch_sds(mesh, (rows, n) if per_token_adv else (rows,), f32),
      old_logp=batch_sds(mesh, (rows, n), f32) if old else None,
      ref_logp=batch_sds(mesh, (rows, n), f32) if ref else None,
      sampler_logp=batch_sds(mesh, (rows, n), f32),
      prompt_experts=_experts_sds(mesh, replay, b, p), experts=_experts_sds(mesh, replay, rows, n))


def _packed_batch(mesh, rows, row_len, multiple, *, ref=False, old=False,
                  replay: ModelConfig | None = None):
  r = packing.row_bucket(rows, multiple, rows)
  i32, f32 = (batch_sds(mesh, (r, row_len), t) for t in (jnp.int32, jnp.float32))
  return packing.PackedBatch(i32, i32, i32, i32, i32, f32, f32, old_logp=f32 if old else None,
                             ref_logp=f32 if ref else None, sampler_logp=f32,
                             experts=_experts_sds(mesh, replay, r, row_len))


def rl_programs(c, mesh, prompt_len: int, stages=None) -> list[Program]:
  from r1jax import run as run_lib
  cfg = model_config(c.model, stages)
  rcfg = rl.from_config(c)
  lcfg = lora_lib.check_config(c)
  pcfg = ppo.from_config(c, rcfg)
  g, b = c.sampling.num_samples, c.train.prompts_per_step
  rows, n = b * g, c.sampling.max_new_tokens
  p = _round(prompt_len, c.data.prompt_bucket)
  params = abstract_params(cfg, mesh)
  rcfg.check_model(cfg)
  replay = cfg if rcfg.router_replay else None  # the batches carry the sampler's experts
  out = sampler_programs(params, cfg, mesh, b, p, run_lib.sampling_config(
      c, return_experts=rcfg.router_replay))
  ref, old = rcfg.beta > 0, c.train.mu > 1 or bool(pcfg)
  batch = _completion_batch(mesh, b, p, rows, n, per_token_adv=bool(pcfg), ref=ref, old=old,
                            replay=replay)
  ocfg = steps.OptimConfig(total_steps=c.train.num_steps, **c.optim.to_dict())
  tx = steps.make_optimizer(ocfg, moe.decay_mask_for(cfg))
  n_micro = rows // c.train.micro_batch_size
  fns = rl_step.build(cfg, rcfg, tx, n_micro, lcfg=lcfg)  # the trainer's own step
  if ref or old:
    out.append(Program("logprobs", jax.jit(fns.logprobs), (params, batch),
                       per_step=int(ref) + int(old)))
  tparams = lora_lib.abstract_params(params, lcfg, mesh_lib.replicated(mesh))
  state = abstract_state(tparams, tx, lora_lib.trainable(lcfg))
  out += _train_programs("", fns.loss, tx, state, batch, n_micro, step=fns.step, mu=c.train.mu,
                         lcfg=lcfg)
  row_len = packing.from_config(c)
  if row_len is not None:  # the padding-free step, at its largest row count (one per sample)
    pfns = rl_step.build(cfg, rcfg, tx, n_micro, packed=True, lcfg=lcfg)
    out += _train_programs("packed_", pfns.loss, tx, state,
                           _packed_batch(mesh, rows, row_len or 1 << (p + n - 2).bit_length(),
                                         n_micro * mesh_lib.batch_parallel_size(mesh),
                                         ref=ref, old=old, replay=replay),
                           n_micro, step=pfns.step, mu=c.train.mu, lcfg=lcfg)
  if pcfg:
    spec = ppo.critic_spec(c)  # {}: a copy of the policy; "policy": every k-th block of it
    if spec.get("source") == "policy":
      ccfg = cfg.replace(num_layers=len(range(0, cfg.num_layers, spec.get("prune_every") or 1)))
    else:
      ccfg = model_config(spec, stages) if spec else cfg
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
  rm = c.rewards.reward_model
  routed = any("reward_model" in dict(w) for w in dict(c.rewards.routing).values())
  if rm.checkpoint and (rm.weight or routed):
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
  max_len = rm["max_len"] or max_len or length
  params = reward_head_params(cfg, mesh)
  bs = rm["batch_size"] or rows
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
  cfg = model_config(c.model, stages)
  dcfg = distill.from_config(c)
  teacher_cfg = teacher = None
  if distill.uses_teacher(c):
    teacher_cfg = model_config(c.teacher, stages)
    teacher = abstract_params(teacher_cfg, mesh)
  bsz, length = c.data.batch_size, c.data.seq_len
  batch = {k: batch_sds(mesh, (bsz, length)) for k in
           ("tokens", "positions", "segment_ids", "targets", "loss_mask")}
  ocfg = steps.OptimConfig(**c.optim.to_dict())
  tx = steps.make_optimizer(ocfg, moe.decay_mask_for(cfg))
  state = abstract_state(abstract_params(cfg, mesh), tx)
  loss = functools.partial(distill.sft_loss, model_cfg=cfg, dcfg=dcfg, teacher_cfg=teacher_cfg)
  return _train_programs("sft_", loss, tx, state, batch, bsz // c.train.micro_batch_size,
                         distill.token_count, consts=(teacher,))


def reward_model_programs(c, mesh, prompt_len: int, stages=None) -> list[Program]:
  from r1jax import rm_objectives
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
  loss = functools.partial(rm_objectives.loss_fn, model_cfg=cfg, objective=c.objective,
                           center_coef=c.loss.center_coef, pool=c.head.pool)
  return _train_programs("rm_", loss, tx, state, batch, 1, None)


def rejection_programs(c, mesh, prompt_len: int, stages=None) -> list[Program]:
  from r1jax import run as run_lib
  cfg = model_config(c.model, stages)
  p = _round(prompt_len, c.data.prompt_bucket)
  return sampler_programs(abstract_params(cfg, mesh), cfg, mesh, c.batch_prompts, p,
                          run_lib.sampling_config(c))


KINDS = {"grpo": rl_programs, "sft": sft_programs, "reward_model": reward_model_programs,
         "rejection_sample": rejection_programs}


def config_kind(c) -> str:
  """Which entry point a config is for."""
  if "stages" in c:
    return "pipeline"
  for key, kind in (("rl", "grpo"), ("distill", "sft"), ("objective", "reward_model"),
                    ("filters", "rejection_sample")):
    if key in c:
      return kind
  raise ValueError("the config is none of RL, SFT, reward model, rejection sampling or "
                   "the R1 pipeline")


def programs_of(c, mesh, prompt_len: int, stage: str = "") -> list[tuple[str, list[Program]]]:
  """[(stage name or kind, programs)] for a config of any entry point."""
  kind = config_kind(c)
  if kind != "pipeline":
    return [(kind, KINDS[kind](c, mesh, prompt_len))]
  stages = c.stages.to_dict() if hasattr(c.stages, "to_dict") else dict(c.stages)
  names = [stage] if stage else [n for n in c.order if n in stages]
  if stage and stage not in stages:
    raise ValueError(f"--stage={stage!r}; the pipeline's stages are {sorted(stages)}")
  out = []
  for name in names:
    sc = ConfigDict(stages[name]["config"])
    out.append((name, KINDS[stages[name]["kind"]](sc, mesh, prompt_len, stages)))
  return out
