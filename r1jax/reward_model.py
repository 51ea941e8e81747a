"""Reward-model trainer: `python -m r1jax.reward_model --config=configs/reward_model.py --workdir=DIR`.

Two objectives (`rm_objectives.OBJECTIVES`, one table of their data, batches, losses and
held-out metrics) on one model (our transformer + the scalar head of
r1jax.reward_head, reading the last non-pad token or, `head.pool="mean"`, the mean of the
sequence's tokens; same mesh and shardings as the policy):
  objective="bt"   Bradley-Terry on preference pairs: -log sigmoid(r_c - r_r - margin),
                   plus loss.center_coef * (r_c + r_r)^2 (reward centering);
  objective="orm"  an outcome verifier: BCE of sigmoid(r) on (prompt, completion, correct),
                   each row weighted by `loss.class_balance` ("none" | "balanced": both
                   classes weigh half, reward_head.CLASS_WEIGHTS).
Data (`data.train`, optional `data.eval`, else `data.num_eval` rows held out): a spec
{"kind": "jsonl" | "parquet" | "hf_disk", "path": ..., "split": ...}. Pair rows have
`chosen` / `rejected` as text (after an optional text `prompt`) or as chat messages
(rendered with the tokenizer's chat template; a `prompt` of messages or text is put
before an answer-only conversation), and an optional `margin`. ORM rows have `prompt`,
`completion` and a label in `correct` / `label` / `reward/accuracy` (what
`evaluate.py` and `rejection_sample.py` write). Rows with an empty or identical pair
are counted in DIR/data_stats.json and skipped. Without an eval file the held-out rows are
whole prompts (rows sharing a `prompt_id`, as the rejection sampler writes them), so no
prompt is both trained on and evaluated. Sequences keep their LAST
`data.max_len` tokens (the head reads the end). Batches come from a seeded permutation
per epoch, so a restart from a checkpoint (params, optimizer, step, RNG) resumes exactly.
Writes metrics.jsonl, eval.jsonl (held-out loss and r1jax.rm_metrics over the whole set:
pairwise accuracy and AUC for pairs; accuracy, balanced accuracy, AUC, the majority share
and the class counts for the ORM),
config.json, model_config.json and Orbax checkpoints (the `value_head` entry inside
`params`), which `r1jax.rm_reward` loads. `train.compilation_cache` as in r1jax.train.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import numpy as np
from absl import flags

from r1jax import cli, memory as memory_lib, reward_head, steps
from r1jax.rm_objectives import (OBJECTIVES, batch_items, eval_fn, load_data, loss_fn,
                                 make_batch)


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program (the pipeline imports `validate`)."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Reward-model config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints).")


def validate(c) -> None:
  """Fail fast, naming the bad field and value (and the model and data files named)."""
  cli.check_model(c.model, "model")
  cli.check_source(c.data.train, "data.train", cli.FILE_KINDS)
  if c.data.eval.path:
    cli.check_source(c.data.eval, "data.eval", cli.FILE_KINDS)
  if c.head.pool not in reward_head.POOLS:
    raise ValueError(f"head.pool={c.head.pool!r}; choose one of {tuple(reward_head.POOLS)}")
  if c.objective not in OBJECTIVES:
    raise ValueError(f"objective={c.objective!r}; choose one of {tuple(OBJECTIVES)}")
  for key in ("batch_size", "max_len"):
    if c.data[key] < 1:
      raise ValueError(f"data.{key}={c.data[key]} must be >= 1")
  if c.loss.center_coef < 0:
    raise ValueError(f"loss.center_coef={c.loss.center_coef} must be >= 0")
  balance = c.loss.class_balance
  if balance not in reward_head.CLASS_WEIGHTS:
    raise ValueError(f"loss.class_balance={balance!r}; choose one of "
                     f"{tuple(reward_head.CLASS_WEIGHTS)}")
  if balance != "none" and c.objective != "orm":
    raise ValueError(f"loss.class_balance={balance!r}: weighs ORM labels; leave it 'none' "
                     f"for objective={c.objective!r}")
  if c.loss.center_coef and c.objective != "bt":
    raise ValueError(f"loss.center_coef={c.loss.center_coef}: ignored unless objective='bt' "
                     "(reward centering of pairs); leave it 0")
  for key in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
    if c.train[key] < 0:
      raise ValueError(f"train.{key}={c.train[key]} must be >= 0")


def train(c, workdir: str) -> list[dict]:
  """Run (or resume) reward-model training; returns the logged metric rows."""
  from r1jax.checkpoint import Checkpointer
  from r1jax.mesh import shard_batch, to_host, use_mesh
  from r1jax.metrics import MetricsWriter, Progress
  from r1jax.run import itstime, setup

  validate(c)
  mesh, model_cfg, params, tokenizer, is_main = setup(c, workdir, "r1jax.reward_model",
                                                      cache=c.train.compilation_cache)
  params = reward_head.with_head(params, model_cfg, mesh)
  train_items, eval_items, data_stats = load_data(c, tokenizer)
  with open(os.path.join(workdir, "data_stats.json"), "w") as f:
    json.dump(data_stats, f, indent=2)
  print(f"reward model data: {data_stats}", flush=True)

  ocfg = steps.OptimConfig(total_steps=c.train.num_steps, **c.optim.to_dict())
  tx = steps.make_optimizer(ocfg)
  knobs = dict(model_cfg=model_cfg, objective=c.objective, center_coef=c.loss.center_coef,
               pool=c.head.pool)
  loss = functools.partial(loss_fn, **knobs)
  state = memory_lib.init_state(params, tx)  # Adam moments sharded like their params
  del params
  rng = jax.random.key(c.seed)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), c.train.keep_checkpoints)
  state, rng, start = ckpt.resume(state, rng)
  train_step = steps.jit_train_step(steps.make_train_step(loss, tx), state)
  evaluate = jax.jit(functools.partial(eval_fn, **knobs))
  writer = MetricsWriter(workdir, enabled=is_main, resume_step=start)  # drops rows > start
  progress, rows = Progress(c.train.num_steps, start), []
  bs = c.data.batch_size
  mk = lambda items: make_batch(items, c.objective, tokenizer, c.data.max_len, bs)

  def run_eval(step):
    if not eval_items:
      return
    chunks = [eval_items[i:i + bs] for i in range(0, len(eval_items), bs)]
    out = [to_host(evaluate(state.params, shard_batch(mk(ch), mesh))) for ch in chunks]
    m = OBJECTIVES[c.objective].metrics([np.asarray(r) for _, r in out], chunks, bs)
    m["loss"] = sum(float(l) * len(ch) for (l, _), ch in zip(out, chunks)) / len(eval_items)
    m = {f"eval_{k}": v for k, v in m.items()}
    writer.write(step, m, filename="eval.jsonl")
    print(f"eval step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in m.items()
                                           if v is not None), flush=True)

  with use_mesh(mesh):
    if start == 0 and c.train.eval_every:
      run_eval(0)
    t_last, logged = time.time(), start  # step time: wall time per step since the last line
    for step in range(start, c.train.num_steps):
      batch = shard_batch(mk(batch_items(train_items, step, bs, c.seed)), mesh)
      state, m = train_step(state, batch)
      done = step + 1
      if itstime(c.train.log_every, done, first=True):
        m = to_host(m)
        now = time.time()
        m["step_time_s"], t_last, logged = (now - t_last) / (done - logged), now, done
        rows.append(writer.write(done, m))
        progress.line(done, rows[-1], keys=("loss", "accuracy", "reward_mean", "grad_norm"))
      if itstime(c.train.eval_every, done, c.train.num_steps):
        run_eval(done)
      if itstime(c.train.checkpoint_every, done, c.train.num_steps):
        ckpt.save(done, state, rng, {"step": done})
  ckpt.close()
  writer.close()
  return rows


def main() -> None:
  train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  cli.run(main, check=lambda: validate(flags.FLAGS.config), required=("config", "workdir"))
