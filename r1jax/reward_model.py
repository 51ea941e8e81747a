"""Reward-model trainer: `python -m r1jax.reward_model --config=configs/reward_model.py --workdir=DIR`.

Two objectives (`OBJECTIVES`, one table) on one model (our transformer + the scalar head of
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
`params`), which `r1jax.rm_reward` loads.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import cli, memory as memory_lib, reward_head, rm_metrics, steps
from r1jax.reward_head import encode

_CONFIG = _WORKDIR = None  # the CLI's flags (defined when run as a program)


def validate(c) -> None:
  """Fail fast, naming the bad field and value (and the model and data files named)."""
  cli.check_model(c.model, "model")
  cli.check_source(c.data.train, "data.train", cli.FILE_KINDS)
  if c.data.get("eval") and c.data.eval.get("path"):
    cli.check_source(c.data.eval, "data.eval", cli.FILE_KINDS)
  if c.get("head", {}).get("pool", "last") not in reward_head.POOLS:
    raise ValueError(f"head.pool={c.head.pool!r}; choose one of {tuple(reward_head.POOLS)}")
  if c.objective not in OBJECTIVES:
    raise ValueError(f"objective={c.objective!r}; choose one of {tuple(OBJECTIVES)}")
  for key in ("batch_size", "max_len"):
    if c.data[key] < 1:
      raise ValueError(f"data.{key}={c.data[key]} must be >= 1")
  if c.loss.center_coef < 0:
    raise ValueError(f"loss.center_coef={c.loss.center_coef} must be >= 0")
  balance = c.loss.get("class_balance", "none")
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


def read_rows(spec: Mapping[str, Any]) -> list[dict]:
  """Raw rows of a JSONL / Parquet / HF-on-disk file (`r1jax.data.records`)."""
  from r1jax.data.records import read_records
  spec = {k: v for k, v in dict(spec).items() if v not in ("", None)}
  if not spec.get("path") or not os.path.exists(spec["path"]):
    raise FileNotFoundError(f"reward-model data file {spec.get('path')!r} "
                            f"(kind {spec.get('kind')!r}) does not exist")
  return read_records(spec)


def _render(prompt: Any, answer: Any, tokenizer) -> str:
  """Text of one side: chat messages through the chat template, text as prompt + answer."""
  if isinstance(answer, (list, tuple)):
    msgs = [dict(m) for m in answer]
    if prompt and not any(m.get("role") == "user" for m in msgs):
      msgs = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
              else [dict(m) for m in prompt]) + msgs
    return tokenizer.apply_chat_template(msgs, add_generation_prompt=False)
  return (prompt if isinstance(prompt, str) else "") + str(answer or "")


def _content(x: Any) -> str:
  if isinstance(x, (list, tuple)):
    return "".join(str(m.get("content", "")) for m in x if m.get("role") != "user")
  return str(x or "")


def prepare_pairs(rows: Sequence[Mapping[str, Any]], tokenizer) -> tuple[list[tuple], dict]:
  """Rows -> [(chosen_text, rejected_text, margin, prompt_id or None)], and counts of what
  was skipped."""
  out, stats = [], {"rows": len(rows), "skipped_empty": 0, "skipped_identical": 0}
  for i, r in enumerate(rows):
    if "chosen" not in r or "rejected" not in r:
      raise KeyError(f"preference row {i} has no 'chosen'/'rejected' (keys {sorted(r)})")
    c, j = _content(r["chosen"]), _content(r["rejected"])
    if not c.strip() or not j.strip():
      stats["skipped_empty"] += 1
    elif c.strip() == j.strip():
      stats["skipped_identical"] += 1
    else:
      p = r.get("prompt")
      out.append((_render(p, r["chosen"], tokenizer), _render(p, r["rejected"], tokenizer),
                  float(r.get("margin") or 0.0), r.get("prompt_id")))
  return out, stats


def prepare_labeled(rows: Sequence[Mapping[str, Any]]) -> tuple[list[tuple], dict]:
  """ORM rows -> [(prompt + completion, label in {0, 1}, weight 1, prompt_id or None)], and
  the skipped count."""
  out, stats = [], {"rows": len(rows), "skipped_empty": 0}
  for i, r in enumerate(rows):
    key = next((k for k in ("correct", "label", "reward/accuracy") if k in r), None)
    if key is None or "completion" not in r:
      raise KeyError(f"ORM row {i} needs 'completion' and one of correct/label/"
                     f"reward/accuracy (keys {sorted(r)})")
    if not str(r["completion"]).strip():
      stats["skipped_empty"] += 1
      continue
    out.append((str(r.get("prompt") or "") + str(r["completion"]), float(float(r[key]) > 0.5),
                1.0, r.get("prompt_id")))
  return out, stats


def _bt_batch(items: Sequence[tuple], tokenizer, max_len: int) -> dict[str, np.ndarray]:
  toks, mask = encode([x[0] for x in items] + [x[1] for x in items], tokenizer, max_len)
  return dict(tokens=toks, mask=mask, margin=np.asarray([x[2] for x in items], np.float32))


def _orm_batch(items: Sequence[tuple], tokenizer, max_len: int) -> dict[str, np.ndarray]:
  toks, mask = encode([x[0] for x in items], tokenizer, max_len)
  return dict(tokens=toks, mask=mask, label=np.asarray([x[1] for x in items], np.float32),
              row_weight=np.asarray([x[2] for x in items], np.float32))


def _bt_loss(r, batch, center_coef: float):
  b = r.shape[0] // 2
  rc, rr = r[:b], r[b:]
  loss = reward_head.bt_loss(rc, rr, batch["margin"], center_coef, batch["weight"])
  return loss, (rc > rr), (rc + rr) / 2


def _orm_loss(r, batch, center_coef: float):
  loss = reward_head.orm_loss(r, batch["label"], batch["weight"])
  return loss, ((r > 0) == (batch["label"] > 0.5)), r


def _bt_metrics(scores: Sequence[np.ndarray], chunks: Sequence[Sequence[tuple]],
                size: int) -> dict:
  rc = np.concatenate([r[:len(ch)] for r, ch in zip(scores, chunks)])
  rr = np.concatenate([r[size:size + len(ch)] for r, ch in zip(scores, chunks)])
  return rm_metrics.pair_metrics(rc, rr)


def _orm_metrics(scores: Sequence[np.ndarray], chunks: Sequence[Sequence[tuple]],
                 size: int) -> dict:
  s = np.concatenate([r[:len(ch)] for r, ch in zip(scores, chunks)])
  items = [x for ch in chunks for x in ch]
  groups = [x[3] for x in items] if all(x[3] is not None for x in items) else None
  return rm_metrics.label_metrics(s, [x[1] for x in items], groups=groups)


class Objective(NamedTuple):
  """One reward-model objective: its data, its batches, its loss and its held-out metrics
  (pure functions)."""
  prepare: Callable  # (rows, tokenizer) -> (items, skipped counts)
  batch: Callable  # (items, tokenizer, max_len) -> host arrays
  loss: Callable  # (scores, batch, center_coef) -> (loss, hit per item, reward per item)
  metrics: Callable  # (scores per batch, items per batch, batch size) -> held-out metrics


# The `objective` values: Bradley-Terry pairs (chosen rows, then rejected rows) and ORM labels.
OBJECTIVES = {"bt": Objective(prepare_pairs, _bt_batch, _bt_loss, _bt_metrics),
              "orm": Objective(lambda rows, tokenizer: prepare_labeled(rows), _orm_batch,
                               _orm_loss, _orm_metrics)}


def make_batch(items: Sequence[tuple], objective: str, tokenizer, max_len: int,
               size: int) -> dict[str, np.ndarray]:
  """A fixed-size host batch (padding items weigh 0; ORM items their class weight, so the
  training batch's loss, accuracy and mean reward are class-weighted). BT: chosen rows, then
  rejected rows."""
  n = len(items)
  items = list(items) + [items[0]] * (size - n)
  batch = OBJECTIVES[objective].batch(items, tokenizer, max_len)
  weight = (np.arange(size) < n) * batch.pop("row_weight", np.float32(1))
  return dict(batch, weight=weight.astype(np.float32))


def eval_fn(params, batch, model_cfg, objective: str, center_coef: float, pool: str = "last"):
  """(loss, scores of every row) of one batch."""
  r = reward_head.scores(params, model_cfg, batch["tokens"], batch["mask"], pool)
  return OBJECTIVES[objective].loss(r, batch, center_coef)[0], r


def loss_fn(params, batch, model_cfg, objective: str, center_coef: float, pool: str = "last"):
  """(loss, metrics) of one batch; accuracy = pairwise (r_c > r_r) or label agreement."""
  r = reward_head.scores(params, model_cfg, batch["tokens"], batch["mask"], pool)
  w = batch["weight"]
  loss, hit, mean_r = OBJECTIVES[objective].loss(r, batch, center_coef)
  wsum = jnp.maximum(w.sum(), 1.0)
  return loss, {"accuracy": jnp.sum(hit * w) / wsum, "reward_mean": jnp.sum(mean_r * w) / wsum}


def batch_items(items: Sequence[tuple], step: int, size: int, seed: int) -> list[tuple]:
  """The items of training step `step`: a seeded permutation per epoch, read in order."""
  n, out = len(items), []
  for pos in range(step * size, (step + 1) * size):
    epoch, i = divmod(pos, n)
    out.append(items[int(np.random.default_rng([seed, epoch]).permutation(n)[i])])
  return out


def hold_out(items: Sequence[tuple], k: int, seed: int) -> tuple[list, list]:
  """(held-out, train): whole prompts (an item's last field, its prompt_id; an item without
  one is its own group) in seeded order until at least k items are held out, never a prompt
  that would leave no training item."""
  groups: dict[Any, list[int]] = {}
  for i, x in enumerate(items):
    groups.setdefault(("row", i) if x[-1] is None else ("prompt", str(x[-1])), []).append(i)
  keys = list(groups)
  held: list[int] = []
  for g in np.random.default_rng(seed).permutation(len(keys)):
    if len(held) >= k:
      break
    if len(held) + len(groups[keys[g]]) < len(items):
      held += groups[keys[g]]
  rest = sorted(set(range(len(items))) - set(held))
  return [items[i] for i in held], [items[i] for i in rest]


def balance(items: Sequence[tuple], objective: str, how: str) -> list[tuple]:
  """ORM items with their class weights (reward_head.CLASS_WEIGHTS[how]) from their labels."""
  if objective != "orm" or not items:
    return list(items)
  w = reward_head.CLASS_WEIGHTS[how](np.asarray([x[1] for x in items]))
  return [(x[0], x[1], float(wi), x[3]) for x, wi in zip(items, w)]


def load_data(c, tokenizer) -> tuple[list, list, dict]:
  """(train items, held-out items, data stats); ORM training items carry their class
  weights."""
  prep = functools.partial(OBJECTIVES[c.objective].prepare, tokenizer=tokenizer)
  train, st = prep(read_rows(dict(c.data.train)))
  if c.data.get("eval") and c.data.eval.get("path"):
    held, st_eval = prep(read_rows(dict(c.data.eval)))
    st = {k: st[k] + st_eval[k] for k in st}
  else:
    held, train = hold_out(train, min(c.data.num_eval, max(len(train) - 1, 0)), c.seed)
  if not train:
    raise ValueError(f"no usable training rows in {c.data.train.path} ({st})")
  train = balance(train, c.objective, c.loss.get("class_balance", "none"))
  if c.objective == "orm":
    st = dict(st, train_positives=int(sum(x[1] for x in train)),
              eval_positives=int(sum(x[1] for x in held)))
  return train, held, dict(st, train=len(train), eval=len(held))


def train(c, workdir: str) -> list[dict]:
  """Run (or resume) reward-model training; returns the logged metric rows."""
  from r1jax.checkpoint import Checkpointer
  from r1jax.mesh import shard_batch, to_host, use_mesh
  from r1jax.metrics import MetricsWriter, Progress
  from r1jax.run import itstime, setup

  validate(c)
  mesh, model_cfg, params, tokenizer, is_main = setup(c, workdir, "r1jax.reward_model")
  params = reward_head.with_head(params, model_cfg, mesh)
  train_items, eval_items, data_stats = load_data(c, tokenizer)
  with open(os.path.join(workdir, "data_stats.json"), "w") as f:
    json.dump(data_stats, f, indent=2)
  print(f"reward model data: {data_stats}", flush=True)

  ocfg = steps.OptimConfig(total_steps=c.train.num_steps, **c.optim.to_dict())
  tx = steps.make_optimizer(ocfg)
  knobs = dict(model_cfg=model_cfg, objective=c.objective, center_coef=c.loss.center_coef,
               pool=c.get("head", {}).get("pool", "last"))
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


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Reward-model config file.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
  cli.run(lambda: train(_CONFIG.value, _WORKDIR.value), check=lambda: validate(_CONFIG.value),
          required=("config", "workdir"))
