"""SFT and distillation trainer: `python -m r1jax.sft --config=configs/sft.py --workdir=DIR`.

Reads top to bottom like `train.py`: config -> mesh -> student (and teacher) -> records ->
packed rows -> jitted step -> restore -> loop. Each step trains on `data.batch_size` packed
rows: next-token cross-entropy on the assistant tokens through the fused log-prob kernel
(one token mean over the whole batch), plus, with a teacher, a logit-distillation term
streamed over vocabulary blocks (`r1jax.distill`). With `distill.on_policy > 0` that share of
batches is sampled from the student itself and scored by the teacher (GKD). A restart with
the same workdir resumes from the latest checkpoint (params, optimizer, step, RNG and the
data iterator). The run directory is a pipeline stage's output: `model.source="run"` with
`path=DIR` loads it.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
from absl import flags

from r1jax import data as data_lib
from r1jax import eval_records
from r1jax import cli, compile_cache, distill, faults, steps
from r1jax import memory as memory_lib
from r1jax.checkpoint import Checkpointer
from r1jax.data import records
from r1jax.data import sft as sft_data
from r1jax.mesh import shard_batch, to_host, use_mesh
from r1jax.metrics import MetricsWriter, Progress
from r1jax.model import moe
from r1jax.model.loader import load_model
from r1jax.nonfinite import Guard
from r1jax.run import itstime, sampling_config, setup
from r1jax import sampling as sampling_lib
from r1jax.sampling import generate, pad_prompts


def data_config(c) -> sft_data.SFTDataConfig:
  d = c.data
  return sft_data.SFTDataConfig(layout=d.layout, template=d.template,
                                system_prompt=d.system_prompt, seq_len=d.seq_len,
                                overlong=d.overlong, on_bad_record=d.on_bad_record,
                                correctness_key=d.correctness_key)


def validate(c) -> None:
  """Fail fast, naming the bad field and value (and the model and data files named)."""
  cli.check_model(c.model, "model")
  if distill.uses_teacher(c):
    cli.check_model(c.teacher, "teacher")
  cli.check_source(c.data.source, "data.source", records.KINDS)
  if c.eval.num_problems > 0:
    cli.check_source(c.eval.source, "eval.source")
  data_config(c)
  distill.from_config(c)
  if c.data.batch_size < 1 or c.train.micro_batch_size < 1 or \
      c.data.batch_size % c.train.micro_batch_size:
    raise ValueError(f"train.micro_batch_size={c.train.micro_batch_size} must divide "
                     f"data.batch_size={c.data.batch_size}")
  if not 0 <= c.distill.on_policy <= 1:
    raise ValueError(f"distill.on_policy={c.distill.on_policy} must be in [0, 1]")
  if c.distill.on_policy > 0 and c.distill.alpha == 0:
    raise ValueError(f"distill.on_policy={c.distill.on_policy} with distill.alpha=0 would train "
                     "on the student's own samples with no teacher signal; set alpha > 0")
  if distill.uses_teacher(c) and not c.teacher.source:
    raise ValueError(f"distill.alpha={c.distill.alpha} / on_policy={c.distill.on_policy} need "
                     "a teacher: set teacher.source")
  if c.distill.on_policy > 0 and c.distill.on_policy_max_new_tokens >= c.data.seq_len:
    raise ValueError(f"distill.on_policy_max_new_tokens={c.distill.on_policy_max_new_tokens} "
                     f"must be < data.seq_len={c.data.seq_len}")
  for key in ("num_steps", "num_epochs", "log_every", "eval_every", "checkpoint_every",
              "max_nonfinite_steps"):
    if c.train[key] < 0:
      raise ValueError(f"train.{key}={c.train[key]} must be >= 0")
  if c.train.num_steps == 0 and c.train.num_epochs == 0:
    raise ValueError("train.num_steps and train.num_epochs are both 0: nothing to train")
  data_lib.prefill_text(c.eval.template, c.eval.think_prefill)


def check_teacher(model_cfg, tokenizer, teacher_cfg, teacher_tok) -> None:
  """Logit distillation compares distributions over the same token ids."""
  if teacher_cfg.vocab_size != model_cfg.vocab_size or \
      teacher_tok.vocab_size != tokenizer.vocab_size:
    raise ValueError(f"teacher vocabulary (model {teacher_cfg.vocab_size}, tokenizer "
                     f"{teacher_tok.vocab_size}) differs from the student's (model "
                     f"{model_cfg.vocab_size}, tokenizer {tokenizer.vocab_size}): logit "
                     "distillation needs the same vocabulary; use SFT on teacher samples")


def on_policy_rows(params, model_cfg, examples, tokenizer, c, step: int, rng,
                   n_rows: int) -> dict:
  """`n_rows` rows sampled from the student: prompts of examples picked by (seed, step),
  the student's completions as the trained tokens (one segment per row)."""
  room = c.data.seq_len - c.distill.on_policy_max_new_tokens
  pool = [e for e in examples if 0 < int(np.argmax(e.trainable)) <= room]
  if not pool:
    raise ValueError(f"no prompt fits data.seq_len - distill.on_policy_max_new_tokens = {room}")
  pick = np.random.default_rng([c.seed, step]).choice(len(pool), n_rows)
  prompts = [pool[i].ids[:int(np.argmax(pool[i].trainable))].tolist() for i in pick]
  ptoks, pmask = pad_prompts(prompts, tokenizer.pad_id, 16)
  scfg = sampling_config(c, "distill", prefix="on_policy_",
                         eos_ids=tuple(sorted(tokenizer.eos_ids)), pad_id=tokenizer.pad_id)
  out = to_host(generate(params, model_cfg, ptoks, pmask, rng, scfg))
  made = [sft_data.Tokenized(np.asarray(p + out.tokens[i, :out.lengths[i]].tolist(), np.int32),
                             np.asarray([False] * len(p) + [True] * int(out.lengths[i]), bool))
          for i, p in enumerate(prompts)]
  return sft_data.pack_rows(made, [[i] for i in range(n_rows)], c.data.seq_len,
                            tokenizer.pad_id)


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program (so that trainers can be imported
  side by side, e.g. by the pipeline, without clashing flag names)."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints).")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")


def main() -> None:
  train(flags.FLAGS.config, flags.FLAGS.workdir, distributed=flags.FLAGS.distributed)


def train(c, workdir: str, distributed: bool = False) -> list[dict]:
  """Run (or resume) an SFT / distillation run described by config `c`; returns the logged
  metric rows."""
  mesh, model_cfg, params, tokenizer, is_main = setup(
      c, workdir, "r1jax.sft", distributed=distributed, cache=c.train.compilation_cache)
  teacher_cfg = teacher_params = None
  if distill.uses_teacher(c):
    teacher_cfg, teacher_params, teacher_tok = load_model(c.teacher, mesh, seed=c.seed)
    check_teacher(model_cfg, tokenizer, teacher_cfg, teacher_tok)
  dcfg = distill.from_config(c)

  # Records -> tokenised examples -> packed rows -> a checkpointable grain iterator.
  rows, data_stats = sft_data.load_sft_dataset(dict(c.data.source), tokenizer, data_config(c),
                                               pack=c.data.pack)
  bsz = c.data.batch_size
  num_steps = c.train.num_steps or max(1, c.train.num_epochs * len(rows) // bsz)
  data_it = data_lib.batch_iterator(rows, bsz, seed=c.seed, shard_index=0, shard_count=1)
  if is_main:
    print(f"sft: {data_stats['examples']} examples in {len(rows)} rows of {c.data.seq_len} "
          f"(fill {data_stats['fill']:.0%}, {data_stats['truncated']} truncated, "
          f"{data_stats['dropped_overlong'] + data_stats['dropped_no_target']} dropped, "
          f"{data_stats['skipped_bad']} bad records skipped); {num_steps} steps", flush=True)

  # Jitted step: the teacher's params are a frozen, non-donated input on the same mesh.
  ocfg = steps.OptimConfig(total_steps=num_steps, **c.optim.to_dict())
  tx = steps.make_optimizer(ocfg, moe.decay_mask_for(model_cfg))  # router biases: no decay
  schedule = steps.make_schedule(ocfg)
  loss_fn = functools.partial(distill.sft_loss, model_cfg=model_cfg, dcfg=dcfg,
                              teacher_cfg=teacher_cfg)
  state = memory_lib.init_state(params, tx)  # optimizer state sharded like the params
  del params
  rng = jax.random.key(c.seed)
  ckpt = Checkpointer(f"{workdir}/checkpoints", c.train.keep_checkpoints)
  state, rng, start = ckpt.resume(state, rng, data_it)
  n_micro = bsz // c.train.micro_batch_size
  train_step = steps.jit_train_step(
      steps.make_train_step(loss_fn, tx, n_micro, distill.token_count), state)

  # Held-out evaluation by sampling, scored by the rule rewards.
  writer = MetricsWriter(workdir, enabled=is_main, resume_step=start)  # drops rows > start
  run_eval = pool = None
  if c.eval.num_problems > 0:
    from r1jax.rewards import pool_from_config, scored_weights
    ev = c.eval
    eval_src = data_lib.make_source(dict(ev.source))
    examples = [eval_src[i] for i in range(min(ev.num_problems, len(eval_src)))]
    weights = dict(scored_weights(dict(ev.rewards)), **dict(ev.rewards))  # zeros measured too
    pool = pool_from_config(ev, weights)
    scfg = sampling_lib.config_from(ev, num_samples=ev.samples,
                                    eos_ids=tuple(sorted(tokenizer.eos_ids)),
                                    pad_id=tokenizer.pad_id)
    run_eval = eval_records.make_evaluator(
        model_cfg, tokenizer, examples, data_lib.make_renderer(ev, tokenizer),
        data_lib.prefill_text(ev.template, ev.think_prefill), pool, scfg, writer, mesh,
        prompt_bucket=ev.prompt_bucket, reflection_words=tuple(ev.reflection_words))

  progress = Progress(num_steps, start)
  guard = Guard(c.train.max_nonfinite_steps)
  logged = []

  with use_mesh(mesh):
    if start == 0 and run_eval is not None:
      run_eval(state.params, jax.random.fold_in(rng, 10**9), 0)
    for step in range(start, num_steps):
      t0, compiles0 = time.time(), compile_cache.snapshot()
      rng, pol_rng, eval_rng = jax.random.split(rng, 3)
      batch = sft_data.collate(next(data_it))
      on_policy = c.distill.on_policy > 0 and \
          np.random.default_rng([c.seed, step, 1]).random() < c.distill.on_policy
      if on_policy:
        batch = on_policy_rows(state.params, model_cfg, rows.examples, tokenizer, c, step,
                               pol_rng, bsz)
        faults.hit("sample", step + 1)
      ntok = int(batch["loss_mask"].sum())
      state, m = train_step(state, shard_batch(batch, mesh), teacher_params)
      faults.hit("train", step + 1)
      m = to_host(m)
      dt = time.time() - t0
      metrics = dict(m, step_time_s=dt, trained_tokens=ntok,
                     tokens_per_s=float((batch["segment_ids"] > 0).sum()) / dt,
                     on_policy=float(on_policy), learning_rate=float(schedule(step)),
                     epoch=step * bsz / len(rows))
      compiled = compile_cache.since(compiles0)
      metrics.update(compile_s=compiled["compile_s"], cache_hits=compiled["cache_hits"])
      if step == 0:
        metrics.update({f"data/{k}": v for k, v in data_stats.items()})
      done = step + 1
      guard.update(done, metrics)  # raises after too many NaN/inf steps in a row
      if itstime(c.train.log_every, done, first=True):
        logged.append(writer.write(done, metrics))
        if is_main:
          progress.line(done, metrics, keys=("loss", "ce", "kd", "grad_norm", "tokens_per_s"))
      # the final eval runs even with train.eval_every=0
      if run_eval is not None and (itstime(c.train.eval_every, done) or done == num_steps):
        run_eval(state.params, eval_rng, done)
      if itstime(c.train.checkpoint_every, done, num_steps):
        ckpt.save(done, state, rng, data_lib.save_iterator_state(data_it))

  if pool is not None:
    pool.close()
  ckpt.close()
  writer.close()
  return logged


if __name__ == "__main__":
  define_flags()
  cli.run(main, check=lambda: validate(flags.FLAGS.config), required=("config", "workdir"))
