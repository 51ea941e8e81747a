"""The RL trainer (`rl.algorithm`: grpo, rloo, reinforce_pp, ppo):
`python -m r1jax.train --config=configs/r1_zero.py --workdir=DIR`.

Reads top to bottom: config -> mesh -> model -> data -> jitted functions -> (PPO only: the
critic) -> rewards -> restore -> loop. Each step: sample G completions per prompt on the
mesh, score them on the host, compute advantages (from the group's rewards, or PPO's
critic), take `mu` policy steps, write metrics / samples / checkpoints. A restart with the
same workdir resumes from the latest checkpoint (params, optimizer, step, RNG and data
iterator).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from r1jax import data as data_lib
from r1jax import eval_records
from r1jax import cli, compile_cache, dynamic_sampling, faults, multiturn, packing
from r1jax import ppo, rl, rl_step, steps
from r1jax import tools as tools_lib
from r1jax import lora as lora_lib
from r1jax import memory as memory_lib
from r1jax.checkpoint import Checkpointer
from r1jax.mesh import batch_parallel_size, shard_batch, to_host, use_mesh
from r1jax.metrics import MetricsWriter, Progress
from r1jax.model import moe
from r1jax.nonfinite import Guard
from r1jax.run import itstime, sampling_config, setup
from r1jax.sampling import generate, pad_prompts


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program (the pipeline imports `validate`)."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (metrics, samples, checkpoints).")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host TPU/GPU).")


def validate(c) -> None:
  """Fail fast, naming the bad field and value (and the model and data files named)."""
  cli.check_model(c.model, "model")
  cli.check_source(c.data.source, "data.source")
  from r1jax.rewards import REWARDS
  from r1jax.rewards import judge as judge_lib
  judge_lib.section(c.rewards.judge, "rewards.judge")  # raises on a bad value
  for name in c.rewards.weights:
    if name not in REWARDS:
      raise ValueError(f"rewards.weights has unknown reward {name!r}; known: {sorted(REWARDS)}")
  rows, g = c.train.prompts_per_step * c.sampling.num_samples, c.sampling.num_samples
  mb = c.train.micro_batch_size
  if mb <= 0 or rows % mb or mb % g:
    raise ValueError(f"train.micro_batch_size={mb} must divide prompts_per_step * num_samples "
                     f"= {rows} and be a multiple of num_samples = {g} (whole groups)")
  if g < 2:
    raise ValueError(f"sampling.num_samples={g}: group-relative RL needs groups of >= 2")
  sampling_config(c)  # raises on a bad value
  rcfg = rl.from_config(c)  # raises on a bad, ignored or moved rl / ppo knob
  packing.from_config(c)  # raises on a packing knob the chosen step ignores
  tools_lib.from_config(c)  # raises on a bad tools value
  lora_lib.check_config(c)  # raises on a bad lora value, or LoRA with PPO's critic
  if rcfg.critic:
    ppo.from_config(c, rcfg)
    ppo.check_config(c)  # raises naming ppo.critic_model, or what the critic does not take
  if c.train.dynamic_sampling and c.train.max_sampling_rounds < 1:
    raise ValueError(f"train.max_sampling_rounds={c.train.max_sampling_rounds} must be >= 1")
  for key in ("mu", "num_steps", "log_every", "sample_every", "eval_every", "checkpoint_every",
              "max_nonfinite_steps"):
    if c.train[key] < (1 if key == "mu" else 0):
      raise ValueError(f"train.{key}={c.train[key]} must be >= {1 if key == 'mu' else 0}")
  data_lib.prefill_text(c.data.template, c.data.think_prefill)  # validates the template name
  if rcfg.router_replay and tools_lib.from_config(c):
    raise ValueError("rl.router_replay=True with tools.enabled=True: the tool replies' "
                     "routing is not recorded by the multi-turn sampler; turn one off")
  if rcfg.routes and not str(c.model.get("path", "")).startswith("@"):
    from r1jax.programs import model_config  # the architecture, without reading weights
    rcfg.check_model(model_config(c.model))  # raises on router knobs for a dense model


def build_batch(prompt_tokens, prompt_mask, out, advantages, bucket: int = 16) -> rl.Batch:
  """Host numpy training batch; completion columns trimmed to the longest row, padded to a
  power-of-two bucket (few distinct shapes, so few train-step compilations). A multi-turn
  rollout's `loss_mask` (tool replies untrained) rides along, and so do the sampler's experts
  (router replay), the prompt's fitted to the prompt width."""
  keep = compile_cache.completion_bucket(int(out.lengths.max()), out.tokens.shape[1], bucket)
  loss_mask = getattr(out, "loss_mask", None)
  experts, pexperts = getattr(out, "experts", None), getattr(out, "prompt_experts", None)
  g = len(out.tokens) // len(prompt_tokens)
  return rl.Batch(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask,
                    completion_tokens=out.tokens[:, :keep], completion_mask=out.mask[:, :keep],
                    advantages=np.asarray(advantages, np.float32), old_logp=None, ref_logp=None,
                    sampler_logp=out.logprobs[:, :keep],
                    loss_mask=None if loss_mask is None else loss_mask[:, :keep],
                    prompt_experts=None if pexperts is None else moe.fit_experts(
                        pexperts[::g], np.shape(prompt_tokens)[1], left=True),
                    experts=None if experts is None else experts[:, :, :keep])


def main() -> None:
  train(flags.FLAGS.config, flags.FLAGS.workdir, distributed=flags.FLAGS.distributed)


def train(c, workdir: str, distributed: bool = False) -> list[dict]:
  """Run (or resume) an RL run described by config `c`; returns the logged metric rows."""
  # Mesh and model (params placed by the logical-axis rules, once), run files.
  mesh, model_cfg, params, tokenizer, is_main = setup(
      c, workdir, "r1jax.train", distributed=distributed, cache=c.train.compilation_cache)
  rcfg = rl.from_config(c)
  pcfg = ppo.from_config(c, rcfg)  # PPO: a critic and GAE advantages; None otherwise
  rcfg.check_model(model_cfg)  # a pipeline's "@stage" model is known only now
  lcfg = lora_lib.from_config(c.lora)
  # The reference policy is a frozen copy (the train state is donated every step); with LoRA
  # it is the frozen base inside the train state.
  ref_params = jax.tree.map(jnp.copy, params) if rcfg.beta > 0 and not lcfg.enabled else None

  # Data: held-out split, checkpointable iterator over the rest.
  source = data_lib.make_source(dict(c.data.source))
  train_src, eval_src = data_lib.train_eval_split(source, c.data.num_eval, seed=c.seed,
                                                  dedupe_key=c.data.heldout_dedupe or None)
  # Every process reads the same global batch (shard_count=1): sampling and training are
  # global computations on the mesh, and host work (rewards) is repeated per process.
  data_it = data_lib.batch_iterator(train_src, c.train.prompts_per_step, seed=c.seed,
                                    shard_index=0, shard_count=1)
  eval_examples = [eval_src[i] for i in range(len(eval_src))]
  render = data_lib.make_renderer(c.data, tokenizer)
  prefill = data_lib.prefill_text(c.data.template, c.data.think_prefill)

  g = c.sampling.num_samples
  # Router replay: the rollouts also return each token's experts (train batches carry them).
  scfg = sampling_config(c, eos_ids=tuple(sorted(tokenizer.eos_ids)), pad_id=tokenizer.pad_id,
                         return_experts=rcfg.router_replay)
  eval_scfg = dataclasses.replace(scfg, return_experts=False, num_samples=c.train.eval_samples,
                                  temperature=c.train.eval_temperature, top_p=c.train.eval_top_p)

  # Jitted steps; all share the mesh and the params' shardings.
  ocfg = steps.OptimConfig(total_steps=c.train.num_steps, **c.optim.to_dict())
  tx = steps.make_optimizer(ocfg, moe.decay_mask_for(model_cfg))
  schedule = steps.make_schedule(ocfg)
  tcfg = tools_lib.from_config(c)  # multi-turn tool use (None: single-turn sampling)
  policy = lora_lib.policy_fn(lcfg)  # train-state params -> model params (LoRA merged)
  n_micro = (c.train.prompts_per_step * g) // c.train.micro_batch_size
  row_len = packing.from_config(c)  # None: the padded step; else padding-free packed rows
  packed = row_len is not None
  fns = rl_step.build(model_cfg, rcfg, tx, n_micro, packed=packed, lcfg=lcfg)
  logp_fn = jax.jit(fns.logprobs)

  params = lora_lib.wrap_params(params, lcfg, jax.random.key(c.seed + 1),
                                jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  # Optimizer state (of the adapters only with LoRA) sharded like its params.
  state = memory_lib.init_state(params, tx, lora_lib.trainable(lcfg))
  del params
  # ---- PPO only: the critic (its own transformer and train state, checkpointed beside the
  # policy's), which turns rewards into GAE advantages in the loop.
  critic_state = critic = None
  if pcfg:
    critic_state, critic = ppo.setup(c, pcfg, state.params, model_cfg, ocfg, n_micro, mesh,
                                     announce=is_main)

  # Rewards run on the host, in worker processes with a per-completion deadline (started after
  # the models, so that a bad model spec stops the run before any worker exists).
  from r1jax import rm_reward
  from r1jax.rewards import pool_from_config, scored_weights
  # reward model, generative judge, per-source routing
  rewarder = rm_reward.from_config(c, mesh, prefill, model_cfg, tokenizer)
  pool = pool_from_config(c.rewards, scored_weights(rewarder.pool_weights) if rewarder else None)

  rng = jax.random.key(c.seed)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), c.train.keep_checkpoints)
  # `start` counts loop steps (state.step counts updates: mu per step)
  tree, rng, start = ckpt.resume((state, critic_state) if pcfg else state, rng, data_it)
  state, critic_state = tree if pcfg else (tree, None)
  dp = batch_parallel_size(mesh)
  if (c.train.micro_batch_size // g) % dp:
    logging.warning("train.micro_batch_size=%d holds %d prompts, not a multiple of the %d "
                    "data-parallel devices (the mesh axes of `batch`): XLA will reshard every "
                    "micro-batch the slow way", c.train.micro_batch_size,
                    c.train.micro_batch_size // g, dp)
  train_step = steps.jit_train_step(fns.step, state)

  writer = MetricsWriter(workdir, enabled=is_main, resume_step=start)  # drops rows after start
  progress = Progress(c.train.num_steps, start)
  guard = Guard(c.train.max_nonfinite_steps)
  rows = []

  run_eval = eval_records.make_evaluator(model_cfg, tokenizer, eval_examples, render, prefill, pool,
                            eval_scfg, writer, mesh, prompt_bucket=c.data.prompt_bucket,
                            reflection_words=tuple(c.train.reflection_words),
                            tools=tcfg,  # held-out samples use the tools as training does
                            batch_prompts=c.train.eval_batch_prompts)

  with use_mesh(mesh):
    if start == 0 and c.train.eval_every > 0 and eval_examples and c.train.eval_at_start:
      if is_main:
        print(f"eval step 0: {len(eval_examples)} held-out prompts (compiling the sampler "
              f"first; train.eval_at_start=False skips this)", flush=True)
      run_eval(policy(state.params), jax.random.fold_in(rng, 10**9), 0)
    t_loop = time.time()  # train.max_wall_s (0 = off) stops early, with a final eval + save
    for step in range(start, c.train.num_steps):
      t_step, compiles0 = time.time(), compile_cache.snapshot()
      rng, sample_rng, eval_rng = jax.random.split(rng, 3)
      times, tool_m = {"sample": 0.0, "reward": 0.0}, {}

      def draw(rnd, sample_rng=sample_rng):
        """1. Rollouts of the next prompts on the mesh; 2. their rewards on the host."""
        examples = next(data_it)
        prompts = [render(ex) for ex in examples]
        ids = [tokenizer.encode(p) for p in prompts]
        t0 = time.time()
        key = jax.random.fold_in(sample_rng, rnd) if rnd else sample_rng
        if tcfg:  # multi-turn: the tools run on the host between sampler calls
          out, tool_calls = multiturn.generate_with_tools(
              policy(state.params), model_cfg, ids, tokenizer, key, scfg, tcfg,
              c.data.prompt_bucket)
          tool_m.update(multiturn.metrics(tool_calls))
        else:
          dev = shard_batch(pad_prompts(ids, tokenizer.pad_id, c.data.prompt_bucket), mesh)
          out = to_host(generate(policy(state.params), model_cfg, *dev, key, scfg))
        faults.hit("sample", step + 1)
        times["sample"] += time.time() - t0
        t0 = time.time()
        texts = [tokenizer.decode(t[:l].tolist()) for t, l in zip(out.tokens, out.lengths)]
        row_examples = [dict(examples[i // g], prefill=prefill,
                             completion_tokens=int(out.lengths[i])) for i in range(len(texts))]
        faults.hit("reward", step + 1)
        res = pool.score(texts, row_examples)
        if rewarder is not None:
          res = rewarder.rescore(
              res, [prompts[i // g] for i in range(len(texts))], texts, row_examples,
              jax.random.fold_in(sample_rng, 2**20 + rnd),  # the judge's draws
              policy(state.params) if rewarder.judge_uses_policy else None)
        times["reward"] += time.time() - t0
        return dynamic_sampling.Rollout(examples, prompts, ids, out, texts, res)

      if c.train.dynamic_sampling:
        ro, dyn_metrics = dynamic_sampling.fill_batch(draw, c.train.prompts_per_step, g,
                                                      c.train.max_sampling_rounds)
      else:
        ro, dyn_metrics = draw(0), {}
      examples, prompts, out, texts, res = ro.examples, ro.prompts, ro.out, ro.texts, ro.res
      ptoks, pmask = pad_prompts(ro.prompt_ids, tokenizer.pad_id, c.data.prompt_bucket)
      t_sample, t_reward = times["sample"], times["reward"]

      # 3. Advantages (the algorithm's; PPO's come from the critic below) and the update(s).
      t0 = time.time()
      adv = rcfg.advantages(res.total, g)
      batch, layout, pack_m = build_batch(ptoks, pmask, out, adv), None, {}
      if packed:
        batch, layout = packing.pack_batch(batch, row_len, n_micro * dp, rcfg.loss_aggregation,
                                           rcfg.max_completion_len)
        pack_m = {"packed/fill": packing.useful_share(batch), "packed/rows": len(batch.tokens)}
      batch = shard_batch(batch, mesh)
      if rcfg.beta > 0:
        ref = lora_lib.base(state.params, lcfg) if ref_params is None else ref_params
        batch = batch._replace(ref_logp=logp_fn(ref, batch))
      if c.train.mu > 1 or pcfg:
        batch = batch._replace(old_logp=logp_fn(policy(state.params), batch))
      critic_m, m, mu = {}, {}, c.train.mu
      if pcfg:  # PPO: GAE advantages from the critic, one critic step (only it in warm-up)
        batch, critic_state, critic_m, adv = ppo.update_critic(critic, critic_state, batch,
                                                               res.total, rcfg.beta, layout)
        mu = 0 if step < pcfg.critic_warmup_steps else mu
      skipped = 0
      for _ in range(mu):
        state, m = train_step(state, batch)
        faults.hit("train", step + 1)
        skipped += m["nonfinite_skipped"]
      m = dict(to_host(m), nonfinite_skipped=int(skipped))
      t_train = time.time() - t0

      # 4. Metrics, samples, evaluation, checkpoints.
      step_time = time.time() - t_step
      n_gen = int(out.lengths.sum())
      metrics = dict(m, **dyn_metrics, **critic_m, **tool_m, **pack_m)
      metrics.update(
          reward_mean=float(res.total.mean()), reward_std=float(res.total.std()),
          accuracy=float(res.per_reward["accuracy"].mean()),
          format_rate=float(res.per_reward["format"].mean()),
          completion_len_mean=float(out.lengths.mean()),
          completion_len_max=int(out.lengths.max()),
          truncated_rate=float(np.mean(out.lengths >= scfg.max_new_tokens)),
          reflection_rate=eval_records.reflection_rate(texts, c.train.reflection_words),
          adv_zero_groups=float(np.mean(np.ptp(res.total.reshape(-1, g), axis=1) == 0)),
          tokens_per_s=n_gen / step_time, sample_tokens_per_s=n_gen / max(t_sample, 1e-9),
          step_time_s=step_time, sample_time_s=t_sample, reward_time_s=t_reward,
          train_time_s=t_train, reward_invalid=res.invalid,
          learning_rate=float(schedule(step)))
      compiled = compile_cache.since(compiles0)
      metrics.update(compile_s=compiled["compile_s"], cache_hits=compiled["cache_hits"])
      for name, v in res.per_reward.items():
        metrics[f"reward/{name}"] = float(v.mean())
      for name, n in res.failures.items():
        metrics[f"reward_failures/{name}"] = n
      done_steps = step + 1
      timeout = 0 < c.train.max_wall_s <= time.time() - t_loop
      if itstime(c.train.log_every, done_steps, first=True):
        rows.append(writer.write(done_steps, metrics))
        if is_main:
          progress.line(done_steps, metrics)
      if itstime(c.train.sample_every, done_steps):
        k = c.train.num_logged_samples
        writer.write_samples(done_steps, [
            {"prompt": prompts[i // g], "completion": prefill + texts[i],
             "task": examples[i // g].get("task", ""),
             "reference": examples[i // g].get("answer"), "reward": float(res.total[i]),
             "advantage": float(adv[i]), "length": int(out.lengths[i]),
             **{f"reward/{n}": float(v[i]) for n, v in res.per_reward.items()},
             **{n: v[i] for n, v in res.extras.items()}}
            for i in range(min(k, len(texts)))])
      guard.update(done_steps, metrics)  # raises after too many NaN/inf steps in a row
      if eval_examples and itstime(c.train.eval_every, done_steps, ending=timeout):
        run_eval(policy(state.params), eval_rng, done_steps)
      if itstime(c.train.checkpoint_every, done_steps, c.train.num_steps, ending=timeout):
        ckpt.save(done_steps, (state, critic_state) if pcfg else state, rng,
                  data_lib.save_iterator_state(data_it))
      if timeout:
        break

  pool.close()
  ckpt.close()
  writer.close()
  return rows


if __name__ == "__main__":
  define_flags()
  cli.run(main, check=lambda: validate(flags.FLAGS.config), required=("config", "workdir"))
