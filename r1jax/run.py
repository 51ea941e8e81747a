"""What every trainer shares: the run directory's files, the held-out evaluation hook, the
periodic test (`itstime`) and the config -> SamplingConfig / RLConfig readers (the trainer
and `r1jax.aot` build the same ones). Any other section (eval, judge) goes through the same
`sampling.config_from`, and every reward pool through `rewards.pool_from_config` (both below
`evaluate`, which imports them and is imported here).

A run directory (`--workdir`) holds config.json (the experiment config), model_config.json
(the trained model's architecture, read back by export / evaluation / later pipeline
stages), metrics.jsonl, eval.jsonl, eval_problems.jsonl (each eval's per-problem scores,
for paired comparisons), samples.jsonl, tb/ and checkpoints/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax

from r1jax import evaluate as eval_lib
from r1jax import jsonl
from r1jax.mesh import use_mesh
from r1jax.metrics import MetricsWriter, bar
from r1jax import sampling as sampling_lib
from r1jax.sampling import SamplingConfig


def write_run_files(workdir: str, c: Any, model_cfg: Any = None) -> bool:
  """Creates `workdir`, writes config.json (and model_config.json); returns is_main."""
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(c.to_json_best_effort(indent=2) if hasattr(c, "to_json_best_effort")
              else json.dumps(c, indent=2, default=str))
    if model_cfg is not None:
      with open(os.path.join(workdir, "model_config.json"), "w") as f:
        json.dump(dataclasses.asdict(model_cfg), f, indent=2)
  return is_main


def make_evaluator(model_cfg: Any, tokenizer: Any, examples: Sequence[Mapping[str, Any]],
                   render: Callable[[Mapping[str, Any]], str], prefill: str, pool: Any,
                   scfg: SamplingConfig, writer: MetricsWriter, mesh: Any, *,
                   prompt_bucket: int = 32, reflection_words: Sequence[str] = (),
                   verbose: bool = True, tools: Any = None, batch_prompts: int = 16
                   ) -> Callable[[Any, jax.Array, int], dict]:
  """`run_eval(params, rng, step) -> metrics`: held-out pass@1 / cons@k (with their
  bootstrap intervals) / format / length of `examples` sampled with `scfg`, written to
  eval.jsonl (and TensorBoard); each problem's scores go to eval_problems.jsonl (one row
  per eval: `eval_lib.problem_scores`). With `tools` (a ToolConfig) the samples are
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
      recs = eval_lib.sample_and_score(params, model_cfg, tokenizer, examples, render, pool,
                                       scfg, rng, prompt_bucket=prompt_bucket, prefill=prefill,
                                       on_records=show, tools=tools,
                                       batch_prompts=batch_prompts)
    m = eval_lib.records_metrics(recs, scfg.num_samples, reflection_words)
    m["eval_time_s"] = time.time() - t0
    writer.write(step, m, filename="eval.jsonl")
    if writer.enabled:
      row = {"step": int(step), **eval_lib.problem_scores(recs, scfg.num_samples)}
      jsonl.append(os.path.join(writer.workdir, "eval_problems.jsonl"), [json.dumps(row)])
    if is_main:
      print(f"eval step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())),
            flush=True)
    return m

  return run_eval


def itstime(every: int, step: int, last: int | None = None, *, first: bool = False,
            ending: bool = False) -> bool:
  """Whether a periodic action (log, eval, checkpoint) fires after 1-based `step`.

  It fires when `every` > 0 and `step` is a multiple of `every`, or `step` is `last` (the
  run's final step), or `first` and `step` is 1, or `ending` (the run stops here early). An
  `every` of 0 turns the action off, `last` and `ending` included.
  """
  if not every:
    return False
  return step % every == 0 or step == last or (first and step == 1) or ending


def sampling_config(c, **extra) -> SamplingConfig:
  """The rollout SamplingConfig of config `c` (its `sampling` section) plus `extra` fields."""
  return sampling_lib.config_from(c.sampling, **extra)

