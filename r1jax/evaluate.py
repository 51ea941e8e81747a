"""The paper's evaluation protocol: k samples per problem, pass@1, pass@k, cons@k.

    python -m r1jax.evaluate --config=configs/r1_zero.py --checkpoint=WORKDIR_OR_STEP_DIR
    python -m r1jax.evaluate --config=configs/r1_zero.py            # the base model
    python -m r1jax.evaluate --config=configs/r1_zero.py --checkpoint=/tmp/r1z \\
        --num_samples=16 --source='{"kind": "jsonl", "path": "aime.jsonl"}' --output_dir=/tmp/ev

Beside pass@1 and cons@k: their 95% confidence interval, a percentile bootstrap over
problems (`pass@1_lo` / `pass@1_hi`, `cons@k_lo` / `cons@k_hi`; `r1jax.stats`; settings
`ci_resamples` (0: off) and `ci_level`).

Test-time compute beside cons@k: best-of-k (the sample an outcome scorer ranks first) and
verifier-weighted majority voting, given any scorer (`records_metrics(..., scorer=)`).

pass@1 = mean correctness over the k samples of a problem (then over problems);
pass@k uses the unbiased estimator 1 - C(n-c, k) / C(n, k); cons@k is correctness of
the majority answer among the k samples (answers normalised as the accuracy reward
parses them: `rewards.extract_answer` + `normalize_answer`; ties go to the answer seen
first). Sampling follows the paper: temperature 0.6, top-p 0.95 (configurable).

Settings come from the config's `eval` section when it has one (`--config.eval.x=...`),
else from `EVAL_DEFAULTS`; the flags below override both. Data: the config's held-out
split (the trainer's `train_eval_split`, same seed) unless a source spec is given.
Writes `samples.jsonl` (every sample) and `metrics.json` (protocol metrics, per-task
breakdown, response-length distribution, reflection share) to the output directory
(default: WORKDIR/eval/step_N with a checkpoint, ./eval_base without).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
from absl import flags

from r1jax import cli, stats
from r1jax.checkpoint import resolve_checkpoint, restore_params  # noqa: F401 (CLI API)
from r1jax.eval_metrics import (  # noqa: F401 - the metrics, re-exported
    pass_at_k, majority_vote, best_of_n, weighted_majority_vote, test_time_metrics, reflection_rate, per_problem, summarize)
from r1jax.mesh import use_mesh
from r1jax.sampling import config_from
from r1jax.eval_records import (  # noqa: F401 - the library, re-exported
    make_evaluator, problem_scores, records_metrics, sample_and_score)

# Used when the config has no `eval` section (and as the fallback for missing keys).
EVAL_DEFAULTS = dict(
    source=None,  # None: the held-out split of config.data.source; else a source spec
    num_problems=0,  # 0: all
    num_samples=16,  # k
    ks=(1, 2, 4, 8, 16, 32, 64),  # pass@k reported for each k <= num_samples
    temperature=0.6, top_p=0.95, top_k=0,
    max_new_tokens=0,  # 0: config.sampling.max_new_tokens
    batch_prompts=16,  # prompts per sampler call (x num_samples rows)
    reflection_words=None,  # None: config.train.reflection_words
    percentiles=(10, 25, 50, 75, 90, 99),
    seed=0,
    ci_resamples=stats.NUM_RESAMPLES,  # bootstrap resamples for the intervals; 0: none
    ci_level=stats.CONFIDENCE,
)


# ----------------------------------------------------------------------------- the CLI


def eval_settings(c, **overrides) -> dict:
  """EVAL_DEFAULTS <- config.eval (if any) <- overrides (None values ignored)."""
  s = dict(EVAL_DEFAULTS)
  if "eval" in c:
    ev = c.eval.to_dict() if hasattr(c.eval, "to_dict") else dict(c.eval)
    unknown = set(ev) - set(EVAL_DEFAULTS)
    if unknown:
      raise ValueError(f"config.eval has unknown keys {sorted(unknown)}; "
                       f"known: {sorted(EVAL_DEFAULTS)}")
    s.update(ev)
  s.update({k: v for k, v in overrides.items() if v is not None})
  if not s["max_new_tokens"]:
    s["max_new_tokens"] = c.sampling.max_new_tokens
  if s["reflection_words"] is None:
    s["reflection_words"] = tuple(c.train.reflection_words)
  if s["num_samples"] < 1:
    raise ValueError(f"eval.num_samples={s['num_samples']} must be >= 1")
  if s["temperature"] < 0 or not 0 < s["top_p"] <= 1:
    raise ValueError(f"bad eval.temperature={s['temperature']} or eval.top_p={s['top_p']}")
  if s["ci_resamples"] < 0:
    raise ValueError(f"eval.ci_resamples={s['ci_resamples']} must be >= 0 (0: no interval)")
  if not 0 < s["ci_level"] < 1:
    raise ValueError(f"eval.ci_level={s['ci_level']} must be in (0, 1)")
  return s


def validate(c, checkpoint: str | None = None, **overrides) -> dict:
  """Fail fast, naming the bad field and value (the settings, the model and data files, the
  checkpoint); returns the settings."""
  s = eval_settings(c, **overrides)
  cli.check_model(c.model, "model")
  cli.check_source(s["source"] or c.data.source, "eval.source" if s["source"] else "data.source")
  if checkpoint:
    cli.check_checkpoint(checkpoint)
  return s


def load_examples(c, source: Mapping[str, Any] | None, num_problems: int = 0) -> list[dict]:
  """The config's held-out split (as the trainer makes it), or all of `source`."""
  from r1jax import data as data_lib
  if source is None:
    full = data_lib.make_source(dict(c.data.source))
    _, ds = data_lib.train_eval_split(full, c.data.num_eval, seed=c.seed)
  else:
    ds = data_lib.make_source(dict(source))
  n = len(ds) if not num_problems else min(num_problems, len(ds))
  return [ds[i] for i in range(n)]


def run(c, checkpoint: str | None = None, output_dir: str | None = None,
        **overrides) -> dict[str, Any]:
  """Evaluate the base model or a checkpoint; writes samples.jsonl and metrics.json."""
  from r1jax import data as data_lib
  from r1jax import run as run_lib
  from r1jax.rewards import pool_from_config

  s = validate(c, checkpoint, **overrides)
  mesh, model_cfg, params, tokenizer, _ = run_lib.setup(c, None, "r1jax.evaluate")
  step = None
  if checkpoint:
    params, step = restore_params(checkpoint, params)
    if output_dir is None:
      output_dir = os.path.join(resolve_checkpoint(checkpoint)[2], "eval", f"step_{step}")
  output_dir = output_dir or os.path.abspath("eval_base")
  os.makedirs(output_dir, exist_ok=True)

  examples = load_examples(c, s["source"], s["num_problems"])
  render = data_lib.make_renderer(c.data, tokenizer)
  prefill = data_lib.prefill_text(c.data.template, c.data.think_prefill)
  speed = {k: c.sampling[k] for k in ("decode_dtype", "mode", "num_slots", "kv_block") if k in c.sampling}
  scfg = config_from(s, eos_ids=tuple(sorted(tokenizer.eos_ids)), pad_id=tokenizer.pad_id,
                     **speed)  # the eval settings, with the run's decoding speed knobs

  samples_path = os.path.join(output_dir, "samples.jsonl")
  t0 = time.time()
  done = [0]
  pool = pool_from_config(c.rewards)
  with open(samples_path, "w") as f, pool:
    def write(batch):
      for r in batch:
        f.write(json.dumps({"step": step, **r}, ensure_ascii=False) + "\n")
      f.flush()
      done[0] += len(batch) // s["num_samples"]
      print(f"  {done[0]}/{len(examples)} problems, {time.time() - t0:.0f}s", flush=True)

    with use_mesh(mesh):
      records = sample_and_score(params, model_cfg, tokenizer, examples, render, pool, scfg,
                                 jax.random.key(s["seed"]), batch_prompts=s["batch_prompts"],
                                 prompt_bucket=c.data.prompt_bucket, prefill=prefill,
                                 on_records=write)
  k = s["num_samples"]
  metrics = records_metrics(records, k, s["reflection_words"],
                            ks=[j for j in s["ks"] if j <= k], percentiles=s["percentiles"],
                            ci_resamples=s["ci_resamples"], ci_level=s["ci_level"])
  metrics["eval_time_s"] = time.time() - t0
  result = {"checkpoint": checkpoint, "step": step, "settings": _jsonable(s),
            "num_samples_total": len(records), "metrics": metrics}
  with open(os.path.join(output_dir, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def _jsonable(x):
  return json.loads(json.dumps(x, default=lambda o: o.to_dict() if hasattr(o, "to_dict")
                               else list(o) if isinstance(o, (tuple, set)) else str(o)))


def format_metrics(metrics: Mapping[str, float]) -> str:
  """A readable block: overall numbers first (an interval beside its metric: `pass@1  0.42
  [0.35, 0.49]`), then per-task ones."""
  overall = {k: v for k, v in metrics.items() if "/" not in k}
  per_task = {k: v for k, v in metrics.items() if "/" in k}
  lines = []
  for k, v in sorted(overall.items()):
    if k.endswith(("_lo", "_hi")) and k[:-3] in overall:
      continue
    ci = (f"  [{overall[k + '_lo']:.4g}, {overall[k + '_hi']:.4g}]"
          if k + "_lo" in overall and k + "_hi" in overall else "")
    lines.append(f"{k:>24s}  {v:.4g}{ci}")
  tasks = sorted({k.split("/", 1)[1] for k in per_task})
  for t in tasks:
    vals = " ".join(f"{k.split('/')[0]}={v:.4g}" for k, v in sorted(per_task.items())
                    if k.split("/", 1)[1] == t)
    lines.append(f"  [{t}] {vals}")
  return "\n".join(lines)


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program (the pipeline imports `run`)."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("checkpoint", "", "Trainer workdir, its checkpoints/ dir, or one step dir "
                      "in it; empty: evaluate the config's base model.")
  flags.DEFINE_string("output_dir", "", "Where samples.jsonl and metrics.json go.")
  flags.DEFINE_string("source", "", "A data source spec (JSON or Python dict literal); "
                      "default: the config's held-out split.")
  flags.DEFINE_integer("num_samples", None, "k samples per problem.")
  flags.DEFINE_integer("num_problems", None, "Evaluate the first N only.")
  flags.DEFINE_float("temperature", None, "Sampling temperature.")
  flags.DEFINE_float("top_p", None, "Nucleus mass.")
  flags.DEFINE_integer("max_new_tokens", None, "Completion length cap.")


def _overrides() -> dict:
  """The CLI's settings flags (a --source spec parsed as JSON or a Python dict literal)."""
  f = flags.FLAGS
  source = f.source
  if source:
    import ast
    try:
      source = json.loads(source)
    except json.JSONDecodeError:
      try:
        source = ast.literal_eval(source)
      except (ValueError, SyntaxError):
        raise cli.ConfigError("--source", source, "not a JSON object or Python dict "
                              "literal") from None
  return dict(source=source or None, num_samples=f.num_samples, num_problems=f.num_problems,
              temperature=f.temperature, top_p=f.top_p, max_new_tokens=f.max_new_tokens)


def main() -> None:
  f = flags.FLAGS
  res = run(f.config, f.checkpoint or None, f.output_dir or None, **_overrides())
  print(f"step {res['step']}: {res['num_samples_total']} samples; [lo, hi]: "
        f"{res['settings']['ci_level']:.0%} bootstrap interval over problems")
  print(format_metrics(res["metrics"]))


if __name__ == "__main__":
  define_flags()
  cli.run(main, check=lambda: validate(flags.FLAGS.config, flags.FLAGS.checkpoint,
                                       **_overrides()),
          required=("config",))
