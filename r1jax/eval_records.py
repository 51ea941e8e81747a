"""The held-out evaluation every trainer and `r1jax.evaluate` share: sample and score
examples (`sample_and_score`), their metrics with bootstrap intervals (`records_metrics`),
per-problem score rows (`problem_scores`), and the trainers' periodic eval hook
(`make_evaluator`, writing eval.jsonl and eval_problems.jsonl)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from r1jax import jsonl, stats
from r1jax.eval_metrics import per_problem, reflection_rate, summarize, test_time_metrics
from r1jax.mesh import to_host, use_mesh
from r1jax.metrics import MetricsWriter, bar
from r1jax.sampling import SamplingConfig, generate, pad_prompts


def sample_and_score(params: Any, model_cfg, tokenizer, examples: Sequence[Mapping[str, Any]],
                     render: Callable[[Mapping[str, Any]], str], reward_pool, scfg: SamplingConfig,
                     rng: jax.Array, *, batch_prompts: int = 16, prompt_bucket: int = 32,
                     prefill: str = "",
                     on_records: Callable[[list[dict]], None] | None = None,
                     tools: Any = None) -> list[dict]:
  """Generate `scfg.num_samples` completions per example and score them.

  Returns one record per sample (k consecutive records per example): example id, task,
  sample index, prompt, completion, reference, extracted and normalised answer,
  per-reward scores, total reward, length, truncated. `on_records` sees each batch's
  records as they are made (e.g. to stream them to a JSONL file). With `tools` (an
  `r1jax.tools.ToolConfig`) the samples are multi-turn rollouts (`r1jax.multiturn`, as in
  training) and each record also counts its tool calls (`tool_calls`) and error replies
  (`tool_errors`).
  """
  from r1jax.rewards import extract_answer, normalize_answer
  records = []
  g = scfg.num_samples
  for start in range(0, len(examples), batch_prompts):
    chunk = list(examples[start:start + batch_prompts])
    prompts = [render(ex) for ex in chunk]
    ids = [tokenizer.encode(p) for p in prompts]
    toks, mask = pad_prompts(ids, tokenizer.pad_id, prompt_bucket)
    rng, sub = jax.random.split(rng)
    calls = None
    if tools is not None:
      from r1jax import multiturn
      out, tc = multiturn.generate_with_tools(params, model_cfg, ids, tokenizer, sub, scfg,
                                              tools, prompt_bucket)
      calls = tc.calls
    else:
      out = to_host(generate(params, model_cfg, toks, mask, sub, scfg))
    texts = [tokenizer.decode(t[:l].tolist()) for t, l in zip(out.tokens, out.lengths)]
    row_examples = [dict(chunk[i // g], prefill=prefill) for i in range(len(texts))]
    res = reward_pool.score(texts, row_examples)
    batch = []
    for i, text in enumerate(texts):
      ex = chunk[i // g]
      ans = extract_answer(prefill + text)
      batch.append({
          "id": ex.get("id", str(start + i // g)), "task": ex.get("task", ""), "sample": i % g,
          "prompt": prompts[i // g], "completion": text, "reference": ex.get("answer"),
          "extracted": ans, "normalized": normalize_answer(ans) if ans else None,
          "reward": float(res.total[i]), "length": int(out.lengths[i]),
          "invalid": bool(res.invalid_mask[i]),  # a rewarded reward had no usable reference
          "truncated": bool(out.lengths[i] >= scfg.max_new_tokens and
                            not set(out.tokens[i, :out.lengths[i]].tolist()) & set(scfg.eos_ids)),
          **{f"reward/{k}": float(v[i]) for k, v in res.per_reward.items()}})
      if calls is not None:
        batch[-1].update(tool_calls=len(calls[i]), tool_errors=sum(
            body.startswith("error:") for _, body in calls[i]))
    if on_records is not None:
      on_records(batch)
    records.extend(batch)
  return records


def _length_stats(lengths: np.ndarray, percentiles: Sequence[float]) -> dict[str, float]:
  out = {"completion_len_mean": float(lengths.mean()), "completion_len_max": int(lengths.max())}
  for q in percentiles:
    out[f"completion_len_p{q:g}"] = float(np.percentile(lengths, q))
  return out


def _grid(records: Sequence[Mapping[str, Any]], k: int) -> tuple[np.ndarray, list]:
  """correct [P, k] (accuracy reward > 0.5) and normalised answers [P][k] of records."""
  correct = np.asarray([r.get("reward/accuracy", 0.0) for r in records]).reshape(-1, k) > 0.5
  answers = [[r["normalized"] for r in records[i:i + k]] for i in range(0, len(records), k)]
  return correct, answers


def problem_scores(records: Sequence[Mapping[str, Any]], k: int) -> dict[str, list]:
  """Each problem's id, pass@1 and cons@k (lists in problem order), from records."""
  if len(records) % k:
    raise ValueError(f"{len(records)} records are not groups of k={k}")
  correct, answers = _grid(records, k)
  return {"id": [str(records[i].get("id", i // k)) for i in range(0, len(records), k)],
          **{name: v.tolist() for name, v in per_problem(correct, answers).items()}}


def records_metrics(records: Sequence[Mapping[str, Any]], k: int,
                    reflection_words: Sequence[str] = (), *, ks: Sequence[int] | None = None,
                    percentiles: Sequence[float] = (50, 90),
                    scorer: Callable[[Sequence[Mapping[str, Any]]], Sequence[float]] | None = None,
                    ci_resamples: int = stats.NUM_RESAMPLES, ci_level: float = stats.CONFIDENCE
                    ) -> dict[str, float]:
  """Protocol metrics from `sample_and_score` records (k consecutive records per problem).

  pass@1, pass@j for each j in `ks` (default: k) with 1 < j <= k, cons@k; with
  `ci_resamples` > 0 the `ci_level` bootstrap interval over problems of pass@1 and cons@k
  (`pass@1_lo`, `pass@1_hi`, `cons@k_lo`, `cons@k_hi`); response length
  mean, max and percentiles; format rate and truncation rate when recorded; reflection
  share; with several tasks, pass@1 / cons@k / pass@k per task (`pass@1/TASK`, ...).
  `scorer` (any outcome scorer, e.g. an ORM: records -> one score each) adds best_of_k and
  weighted_cons@k (`test_time_metrics`).
  """
  if not records:
    return {}
  if len(records) % k:
    raise ValueError(f"{len(records)} records are not groups of k={k}")
  ks = (k,) if ks is None else tuple(ks)
  correct, answers = _grid(records, k)
  out = summarize(correct, answers, ks=ks)
  out["num_problems"] = len(answers)
  if ci_resamples:
    for name, scores in per_problem(correct, answers).items():
      out[f"{name}_lo"], out[f"{name}_hi"] = stats.bootstrap_ci(
          scores, num_resamples=ci_resamples, confidence=ci_level)
  if scorer is not None:
    scores = np.asarray(scorer(records), np.float64).reshape(-1, k)
    out.update(test_time_metrics(correct, answers, scores))
  out.update(_length_stats(np.asarray([r["length"] for r in records]), percentiles))
  if "reward/format" in records[0]:
    out["format_rate"] = float(np.mean([r["reward/format"] for r in records]))
  if "reward/cold_start_format" in records[0]:
    out["cold_start_format_rate"] = float(np.mean([r["reward/cold_start_format"]
                                                   for r in records]))
  if "tool_calls" in records[0]:  # multi-turn rollouts with tools
    n_calls = sum(r["tool_calls"] for r in records)
    out["tools/calls_per_sample"] = n_calls / len(records)
    out["tools/call_rate"] = float(np.mean([r["tool_calls"] > 0 for r in records]))
    out["tools/error_share"] = sum(r["tool_errors"] for r in records) / n_calls if n_calls else 0.0
  if "truncated" in records[0]:
    out["truncated_rate"] = float(np.mean([r["truncated"] for r in records]))
  out["reward_mean"] = float(np.mean([r.get("reward", 0.0) for r in records]))
  if reflection_words:
    out["reflection_rate"] = reflection_rate([r["completion"] for r in records], reflection_words)
  tasks = sorted({r["task"] for r in records})
  if len(tasks) > 1:
    group_task = [records[i]["task"] for i in range(0, len(records), k)]
    for t in tasks:
      sel = [i for i, gt in enumerate(group_task) if gt == t]
      m = summarize(correct[sel], [answers[i] for i in sel], ks=ks)
      for name, v in m.items():
        out[f"{name}/{t}"] = v
      out[f"num_problems/{t}"] = len(sel)
  return out


def make_evaluator(model_cfg: Any, tokenizer: Any, examples: Sequence[Mapping[str, Any]],
                   render: Callable[[Mapping[str, Any]], str], prefill: str, pool: Any,
                   scfg: SamplingConfig, writer: MetricsWriter, mesh: Any, *,
                   prompt_bucket: int = 32, reflection_words: Sequence[str] = (),
                   verbose: bool = True, tools: Any = None, batch_prompts: int = 16
                   ) -> Callable[[Any, jax.Array, int], dict]:
  """`run_eval(params, rng, step) -> metrics`: held-out pass@1 / cons@k (with their
  bootstrap intervals) / format / length of `examples` sampled with `scfg`, written to
  eval.jsonl (and TensorBoard); each problem's scores go to eval_problems.jsonl (one row
  per eval: `problem_scores`). With `tools` (a ToolConfig) the samples are
  multi-turn rollouts with tools, as in training, and the tool metrics are logged.
  `batch_prompts` prompts (x scfg.num_samples rows) go to the sampler at a time."""
  is_main = verbose and jax.process_index() == 0

  def run_eval(params: Any, rng: jax.Array, step: int) -> dict:
    t0, done = time.time(), []

    def show(recs):  # progress bar: one update per batch of prompts
      done.append(len(recs) // scfg.num_samples)
      if is_main:
        print(f"eval step {step} {bar(sum(done), len(examples))} prompts "
              f"{time.time() - t0:.0f}s", flush=True)
    with use_mesh(mesh):
      recs = sample_and_score(params, model_cfg, tokenizer, examples, render, pool,
                                       scfg, rng, prompt_bucket=prompt_bucket, prefill=prefill,
                                       on_records=show, tools=tools,
                                       batch_prompts=batch_prompts)
    m = records_metrics(recs, scfg.num_samples, reflection_words)
    m["eval_time_s"] = time.time() - t0
    writer.write(step, m, filename="eval.jsonl")
    if writer.enabled:
      row = {"step": int(step), **problem_scores(recs, scfg.num_samples)}
      jsonl.append(os.path.join(writer.workdir, "eval_problems.jsonl"), [json.dumps(row)])
    if is_main:
      print(f"eval step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())),
            flush=True)
    return m

  return run_eval
