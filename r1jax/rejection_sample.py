"""Rejection sampling (DeepSeek-R1 stage 3): k samples per prompt -> filtered SFT records.

    python -m r1jax.rejection_sample --config=configs/rejection_sample.py \\
        --checkpoint=RL_WORKDIR --out=/tmp/rs/sft.jsonl

The model is the config's `model` source (any spec `load_model` reads), with the params
of `--checkpoint` (a trainer workdir, its checkpoints/ dir or one step dir) when given.
Each prompt gets `sampling.num_samples` completions (T 0.6, top-p 0.95 by default) from
our sampler on the mesh; correctness is the rule reward `rewards.correct` (>=
`filters.min_reward`); samples whose reference is unusable are "unverifiable" and dropped
(or judged by a reward model when `reward_model.checkpoint` is set: correct when its
score is >= `reward_model.threshold`; or by a generative judge when `judge.model` is set,
r1jax/rewards/judge.py: correct when its verdict's score is >= `judge.threshold`, the
verdict logged with the sample as `judge/verdict` and `judge/output`). The `filters`
section (r1jax.filters) drops the rest. Files written (OUT = the --out path):
  OUT                 one SFT record per kept sample: {"messages": [user question,
                      assistant prefill + completion], "id", "prompt_id", "task",
                      "reward", "pass_rate"}
  OUT.prompts.jsonl   one line per prompt: id, question, answer, task, pass_rate, kept,
                      and every dropped sample with its `drop_reason` (the resume log)
  OUT.stats.json      counts per drop reason, prompts, pass-rate histogram, how many
                      prompts have a pass rate in (pass_rate.lo, pass_rate.hi)
  OUT.rl_prompts.jsonl  those prompts (question/answer/task/id): RL prompt selection
  OUT.pairs.jsonl / OUT.labeled.jsonl  reward-model data from the model's own samples
                      (kept over worse-dropped pairs; ORM rows), see `reward_model_data`
  OUT.mixed.jsonl     with `mixture.sources`: the kept records mixed by weight with
                      non-reasoning SFT data (JSONL with `messages`)
Resumable: each prompt's lines are flushed when done; a restart reads the prompt ids in
OUT.prompts.jsonl, drops a half-written last line and the records of prompts not logged
there, and samples only the rest. Batches draw from `fold_in(seed, batch index)`, so a
resumed run writes the same records as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import flags

from r1jax import cli, jsonl
from r1jax import filters as F
from r1jax.data.records import read_records


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program (the pipeline imports `validate`)."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Rejection-sampling config file.",
                                  lock_config=True)
  flags.DEFINE_string("checkpoint", "", "Trainer workdir, its checkpoints/ dir or one step dir; "
                      "empty: the config's model as loaded.")
  flags.DEFINE_string("out", "", "Output JSONL of SFT records.")


def filter_config(c) -> F.FilterConfig:
  return F.FilterConfig(**c.filters.to_dict())


def validate(c) -> None:
  """Fail fast, naming the bad field and value (and the model and data files named)."""
  from r1jax import data as data_lib
  from r1jax.rewards import REWARDS
  if c.rewards.correct not in REWARDS:
    raise ValueError(f"rewards.correct={c.rewards.correct!r} is not a reward; known: "
                     f"{sorted(REWARDS)}")
  filter_config(c)  # raises on a bad value
  from r1jax.rewards import judge as judge_lib
  js = judge_lib.section(c.judge, "judge", judge_lib.FILTER_KNOBS)
  if js["model"] and c.reward_model.checkpoint:
    raise ValueError(f"judge.model={js['model']} and reward_model.checkpoint="
                     f"{c.reward_model.checkpoint!r}: set one of them")
  s = c.sampling
  if s.num_samples < 1 or s.max_new_tokens < 1:
    raise ValueError(f"sampling.num_samples={s.num_samples} and sampling.max_new_tokens="
                     f"{s.max_new_tokens} must be >= 1")
  if s.temperature < 0 or not 0 < s.top_p <= 1:
    raise ValueError(f"bad sampling.temperature={s.temperature} or sampling.top_p={s.top_p}")
  if not 0 <= c.pass_rate.lo <= c.pass_rate.hi <= 1:
    raise ValueError(f"pass_rate.lo={c.pass_rate.lo}, pass_rate.hi={c.pass_rate.hi}: "
                     "need 0 <= lo <= hi <= 1")
  if c.batch_prompts < 1:
    raise ValueError(f"batch_prompts={c.batch_prompts} must be >= 1")
  for i, src in enumerate(c.mixture.sources):
    if src["weight"] <= 0 or not src.get("path"):
      raise ValueError(f"mixture.sources[{i}] needs a path and a weight > 0, got {dict(src)}")
    cli.check_data_path(src["path"], f"mixture.sources[{i}].path")
  data_lib.prefill_text(c.data.template, c.data.think_prefill)
  cli.check_model(c.model, "model")
  cli.check_source(c.data.source, "data.source")
  if c.reward_model.checkpoint:
    cli.check_path(c.reward_model.checkpoint, "reward_model.checkpoint", is_dir=True,
                   what="an r1jax.reward_model run directory")


def process_prompt(example: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                   cfg: F.FilterConfig, prefill: str, correct_reward: str,
                   judged: Sequence[bool] | None = None) -> tuple[list[dict], dict]:
  """One prompt's sample records (as `eval_records.sample_and_score` makes them) -> (SFT
  records of the kept samples, the prompt's log line). `judged`: reward-model verdicts
  for the samples, used when the rule reward cannot verify them."""
  texts = [prefill + r["completion"] for r in records]
  correct = []
  for i, r in enumerate(records):
    if not r.get("invalid"):
      correct.append(r[f"reward/{correct_reward}"] >= cfg.min_reward)
    else:
      correct.append(None if judged is None else bool(judged[i]))
  reasons = [F.check_sample(t, example, cfg, hit_limit=r["truncated"], correct=ok)
             for t, r, ok in zip(texts, records, correct)]
  reasons = F.select_group(texts, reasons, cfg)
  rate = F.pass_rate(correct)
  pid = str(example.get("id"))
  kept = [{"messages": [{"role": "user", "content": example["question"]},
                        {"role": "assistant", "content": t}],
           "id": f"{pid}#{r['sample']}", "prompt_id": pid, "task": example.get("task", ""),
           "reward": r["reward"], "pass_rate": rate, **_judged(r)}
          for t, r, why in zip(texts, records, reasons) if why is None]
  log = {"id": pid, "question": example["question"], "answer": example.get("answer"),
         "task": example.get("task", ""), "prompt": records[0]["prompt"] if records else "",
         "prefill": prefill, "pass_rate": rate, "kept": len(kept),
         "dropped": [{"completion": t, "drop_reason": why, "reward": r["reward"], **_judged(r)}
                     for t, r, why in zip(texts, records, reasons) if why is not None]}
  return kept, log


def _judged(record: Mapping[str, Any]) -> dict:
  return {k: record[k] for k in ("judge/verdict", "judge/output") if k in record}


def judge_unverifiable(judge, examples: Sequence[Mapping[str, Any]], records: list[dict],
                       k: int, rng: jax.Array, threshold: float) -> np.ndarray:
  """bool[n] verdicts of the generative judge on the samples the rule reward could not
  verify (False elsewhere), all judged in one call; their records get the verdict."""
  rows = [i for i, r in enumerate(records) if r.get("invalid")]
  v = judge([examples[i // k]["question"] for i in rows],
            [examples[i // k].get("answer") for i in rows],
            [records[i]["completion"] for i in rows], rng)
  ok = np.zeros(len(records), bool)
  for j, i in enumerate(rows):
    ok[i] = v.scores[j] >= threshold
    records[i].update({"judge/verdict": v.verdicts[j], "judge/output": v.outputs[j]})
  return ok


def _read_jsonl(path: str) -> list[dict]:
  return jsonl.read(path) if os.path.exists(path) else []


def resume_state(out: str) -> set[str]:
  """Prompt ids finished by an earlier run; OUT is cut back to exactly their records."""
  log_path = out + ".prompts.jsonl"
  for p in (out, log_path):
    jsonl.repair(p)
  done = {r["id"] for r in _read_jsonl(log_path)}
  records = _read_jsonl(out)
  if any(r["prompt_id"] not in done for r in records):
    jsonl.write(out, [r for r in records if r["prompt_id"] in done])
  return done


def stats(logs: Sequence[Mapping[str, Any]], lo: float, hi: float) -> dict[str, Any]:
  """Counts per drop reason over the prompt logs, and the pass-rate picture."""
  reasons = [None] * sum(l["kept"] for l in logs)
  reasons += [d["drop_reason"] for l in logs for d in l["dropped"]]
  rates = [l["pass_rate"] for l in logs]
  known = [r for r in rates if r is not None]
  return {"prompts": len(logs), "samples": len(reasons), **F.count_reasons(reasons),
          "prompts_with_kept": sum(l["kept"] > 0 for l in logs),
          "prompts_unverified": len(rates) - len(known),
          "pass_rate_mean": float(np.mean(known)) if known else None,
          "pass_rate_histogram": np.histogram(known, bins=10, range=(0, 1))[0].tolist(),
          "pass_rate_lo": lo, "pass_rate_hi": hi,
          "prompts_in_pass_rate_range": int(F.select_by_pass_rate(rates, lo, hi).sum())}


# Drop reasons that make a sample a worse answer (not a duplicate / surplus / unverified one).
WORSE = ("truncated", "incorrect", "mixed_language", "long_paragraph", "code_in_cot",
         "repetition")


def reward_model_data(logs: Sequence[Mapping[str, Any]],
                      records: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
  """Reward-model data from the model's own samples, ranked by the rule rewards and filters:
  (preference pairs: a kept sample over a worse-reason dropped one of the same prompt;
  ORM rows: kept -> correct 1, worse-reason dropped -> 0; each text once per prompt, as
  the kept samples are). Texts follow the rendered prompt
  (which ends with the prefill), as the GRPO reward model reads them."""
  kept: dict[str, list[str]] = {}
  for r in records:
    kept.setdefault(r["prompt_id"], []).append(r["messages"][-1]["content"])
  pairs, rows = [], []
  for log in logs:
    cut = lambda t: t[len(log["prefill"]):] if t.startswith(log["prefill"]) else t
    good = [cut(t) for t in kept.get(log["id"], [])]
    # Distinct texts per class: the kept samples are already deduplicated, and repeats of one
    # wrong answer would otherwise outnumber the right one it repeats (labels skewed to 0).
    bad = list(dict.fromkeys(cut(d["completion"]) for d in log["dropped"]
                             if d["drop_reason"] in WORSE))
    pairs += [{"prompt": log["prompt"], "chosen": g, "rejected": b, "prompt_id": log["id"]}
              for g, b in zip(good, bad)]
    rows += [{"prompt": log["prompt"], "completion": t, "correct": ok, "prompt_id": log["id"]}
             for ts, ok in ((good, 1), (bad, 0)) for t in ts]
  return pairs, rows


def mix_records(reasoning: Sequence[dict], others: Sequence[tuple[Sequence[dict], float]],
                reasoning_weight: float, seed: int) -> list[dict]:
  """Reasoning records plus, per other source of weight w, round(n * w / reasoning_weight)
  of its records (shuffled, cycled when short), all shuffled together."""
  rng = random.Random(seed)
  out = list(reasoning)
  for i, (recs, w) in enumerate(others):
    if not recs:
      raise ValueError(f"mixture.sources[{i}] has no records")
    n = round(len(reasoning) * w / reasoning_weight)
    order = list(recs)
    rng.shuffle(order)
    out += [dict(order[j % len(order)]) for j in range(n)]
  rng.shuffle(out)
  return out


def run(c, checkpoint: str | None, out: str) -> dict[str, Any]:
  """Sample, score, filter and write (resuming a half-done OUT); returns the stats."""
  from r1jax import data as data_lib
  from r1jax.checkpoint import restore_params
  from r1jax.eval_records import sample_and_score
  from r1jax.mesh import use_mesh
  from r1jax.rewards import pool_from_config, scored_weights
  from r1jax.run import sampling_config, setup

  validate(c)
  cfg = filter_config(c)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  done = resume_state(out)
  source = data_lib.make_source(dict(c.data.source))
  n = len(source) if not c.data.num_prompts else min(c.data.num_prompts, len(source))
  examples = [source[i] for i in range(n)]
  bp = c.batch_prompts
  todo = [b for b in range(0, n, bp) if any(str(e["id"]) not in done for e in examples[b:b + bp])]
  if todo:
    mesh, model_cfg, params, tokenizer, _ = setup(c, None, "r1jax.rejection_sample")
    if checkpoint:
      params, step = restore_params(checkpoint, params)
      print(f"sampling from step {step} of {checkpoint}", flush=True)
    render = data_lib.make_renderer(c.data, tokenizer)
    prefill = data_lib.prefill_text(c.data.template, c.data.think_prefill)
    scfg = sampling_config(c, eos_ids=tuple(sorted(tokenizer.eos_ids)), pad_id=tokenizer.pad_id)
    judge = None
    if c.reward_model.checkpoint:
      from r1jax import rm_reward
      judge = rm_reward.load_scorer(c.reward_model.checkpoint, mesh, c.reward_model.scope,
                                    prefill=prefill)
    gen_judge = None  # the generative judge ("policy": the model sampled here)
    if c.judge.model:
      from r1jax.rewards import judge as judge_lib
      gen_judge = judge_lib.load(c.judge, mesh, prefill, policy_cfg=model_cfg,
                                 policy_tokenizer=tokenizer, policy_params=params,
                                 seed=c.seed, knobs=judge_lib.FILTER_KNOBS)
    k, key = scfg.num_samples, jax.random.key(c.seed)
    pool = pool_from_config(c.rewards, scored_weights({c.rewards.correct: 1.0}))
    with pool, use_mesh(mesh):
      for b in todo:
        chunk = examples[b:b + bp]
        recs = sample_and_score(params, model_cfg, tokenizer, chunk, render, pool, scfg,
                                jax.random.fold_in(key, b), batch_prompts=len(chunk),
                                prompt_bucket=c.data.prompt_bucket, prefill=prefill)
        verdicts = None
        if judge is not None:
          scores = judge([r["prompt"] for r in recs], [r["completion"] for r in recs])
          verdicts = scores >= c.reward_model.threshold
        elif gen_judge is not None:
          verdicts = judge_unverifiable(gen_judge, chunk, recs, k,
                                        jax.random.fold_in(key, 2**20 + b), c.judge.threshold)
        for j, ex in enumerate(chunk):
          if str(ex["id"]) in done:
            continue
          kept, log = process_prompt(ex, recs[j * k:(j + 1) * k], cfg, prefill,
                                     c.rewards.correct,
                                     None if verdicts is None else verdicts[j * k:(j + 1) * k])
          # The records before the log line: a prompt is done once its line is logged.
          jsonl.append_records(out, kept)
          jsonl.append_records(out + ".prompts.jsonl", [log])
        print(f"  {min(b + bp, n)}/{n} prompts", flush=True)
  return finish(c, out)


def finish(c, out: str) -> dict[str, Any]:
  """Stats, RL prompt selection and the optional mixture, from the files on disk."""
  logs = _read_jsonl(out + ".prompts.jsonl")
  lo, hi = c.pass_rate.lo, c.pass_rate.hi
  st = stats(logs, lo, hi)
  sel = F.select_by_pass_rate([l["pass_rate"] for l in logs], lo, hi)
  jsonl.write(out + ".rl_prompts.jsonl",
              [{k: l[k] for k in ("id", "question", "answer", "task")}
               for l, keep in zip(logs, sel) if keep])
  pairs, labeled = reward_model_data(logs, _read_jsonl(out))
  jsonl.write(out + ".pairs.jsonl", pairs)
  jsonl.write(out + ".labeled.jsonl", labeled)
  st.update(preference_pairs=len(pairs), orm_rows=len(labeled))
  if c.mixture.sources:
    others = [(read_records({"kind": "jsonl", "path": src["path"]}), src["weight"])
              for src in c.mixture.sources]
    mixed = mix_records(_read_jsonl(out), others, c.mixture.reasoning_weight, c.seed)
    jsonl.write(out + ".mixed.jsonl", mixed)
    st["mixed_records"] = len(mixed)
  with open(out + ".stats.json", "w") as f:
    json.dump(st, f, indent=2)
  return st


def check() -> None:
  """The CLI's inputs: the config, and --checkpoint when given."""
  validate(flags.FLAGS.config)
  if flags.FLAGS.checkpoint:
    cli.check_checkpoint(flags.FLAGS.checkpoint)


def main() -> None:
  st = run(flags.FLAGS.config, flags.FLAGS.checkpoint or None, flags.FLAGS.out)
  print(json.dumps({k: v for k, v in st.items() if k != "pass_rate_histogram"}))


if __name__ == "__main__":
  define_flags()
  cli.run(main, check=check, required=("config", "out"))
