"""The reward model's objectives and data (one table, `OBJECTIVES`, keyed by `objective`).

Each objective is its data preparation (raw rows -> items), its host batches, its loss on the
head's scores and its held-out metrics (r1jax.rm_metrics):
  "bt"   preference pairs -> (chosen text, rejected text, margin, prompt_id); the batch holds
         the chosen rows, then the rejected rows; loss reward_head.bt_loss;
  "orm"  (prompt, completion, correct) rows -> (text, label, class weight, prompt_id);
         loss reward_head.orm_loss.
`loss_fn` / `eval_fn` are the jitted trainer's batch functions (r1jax.reward_model, and the
ahead-of-time compile of r1jax.programs); `load_data` reads, prepares, holds out (whole
prompts) and class-weights the rows of a config's `data` section; `batch_items` is the seeded
per-epoch order of training items (a resumed run draws the same batches).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from r1jax import reward_head, rm_metrics
from r1jax.reward_head import encode


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
  if c.data.eval.path:
    held, st_eval = prep(read_rows(dict(c.data.eval)))
    st = {k: st[k] + st_eval[k] for k in st}
  else:
    held, train = hold_out(train, min(c.data.num_eval, max(len(train) - 1, 0)), c.seed)
  if not train:
    raise ValueError(f"no usable training rows in {c.data.train.path} ({st})")
  train = balance(train, c.objective, c.loss.class_balance)
  if c.objective == "orm":
    st = dict(st, train_positives=int(sum(x[1] for x in train)),
              eval_positives=int(sum(x[1] for x in held)))
  return train, held, dict(st, train=len(train), eval=len(held))
