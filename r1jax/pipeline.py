"""The DeepSeek-R1 pipeline as one resumable command.

    python -m r1jax.pipeline --config=configs/r1.py --workdir=DIR [--stages=sft,all_scenario_rl]

Runs the config's `stages` in order (R1: cold_start_sft -> reasoning_rl ->
rejection_sampling -> reward_model -> sft -> all_scenario_rl), each in DIR/<stage>/ with
its own config, metrics, samples and checkpoints. The pipeline holds no training logic:
each stage is one of our entry points run as a subprocess on a config file written to
DIR/<stage>/stage_config.py (kinds: sft, grpo, reward_model, rejection_sample). Inputs
are named in the stage configs as "@<stage>[/file]" strings (e.g. a model spec
{"source": "run", "path": "@reasoning_rl"}, a data path "@rejection_sampling/sft.jsonl"),
resolved to DIR/<stage>[/file] and checked before the stage starts: a missing one is an
error naming the stage and the path.

A stage that finished writes DIR/<stage>/DONE.json and is skipped on restart; an
interrupted one is run again in the same directory, where the trainers resume from their
last checkpoint and the rejection sampler from its last written prompt. After each
model-producing stage (sft, grpo; and the base model first) the held-out evaluation of
`eval` (r1jax.evaluate, in this process) runs into DIR/<stage>/eval/. At the end DIR/summary.md tabulates
per finished stage: pass@1, cons@k, format rate, language consistency, mean response length
(for the stages that make a model), the stage's and its evaluation's wall time, and their sum,
and for a reward-model stage one line of its last held-out evaluation (accuracy, balanced
accuracy, AUC, AUC within prompts, majority share; flagged when it is no better than always
answering the majority class, or when it ranks prompts rather than the answers to one);
DIR/summary.png plots the metrics.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from absl import flags

from r1jax import cli, jsonl

KINDS = {"sft": ("r1jax.sft", "workdir"), "grpo": ("r1jax.train", "workdir"),
         "reward_model": ("r1jax.reward_model", "workdir"),
         "rejection_sample": ("r1jax.rejection_sample", "out")}
MODEL_KINDS = ("sft", "grpo")
REJECTION_OUT = "sft.jsonl"  # the rejection sampler's records inside its stage directory
COLUMNS = (("pass@1", "pass@1"), ("cons@k", "cons@"), ("format", "format_rate"),
           ("cold-start format", "cold_start_format_rate"), ("language", "language"),
           ("mean length", "completion_len_mean"))
# A reward-model stage's held-out metrics (r1jax.rm_metrics) in its summary line.
RM_COLUMNS = (("accuracy", "eval_accuracy"), ("balanced accuracy", "eval_balanced_accuracy"),
              ("AUC", "eval_auc"), ("AUC within prompts", "eval_auc_within_prompt"),
              ("majority share", "eval_majority_share"))


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program (r1jax.aot imports `validate`)."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Pipeline config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Pipeline directory (one subdir per stage).")
  flags.DEFINE_string("stages", "", "Comma-separated stages to run (default: all of "
                      "config.order).")


def resolve(tree: Any, workdir: str, refs: list | None = None) -> Any:
  """A copy of `tree` with every "@stage[/rest]" string replaced by DIR/stage[/rest];
  `refs` collects the resolved paths."""
  if isinstance(tree, Mapping):
    return {k: resolve(v, workdir, refs) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(resolve(v, workdir, refs) for v in tree)
  if isinstance(tree, str) and tree.startswith("@"):
    path = os.path.join(workdir, tree[1:])
    if refs is not None:
      refs.append((tree, path))
    return path
  return tree


def write_config(cfg: Mapping[str, Any], path: str) -> str:
  """A config file `get_config()` for one stage, holding `cfg` (JSON-able) verbatim."""
  text = json.dumps(cfg, indent=1, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
  with open(path, "w") as f:
    f.write('"""Written by r1jax.pipeline: this stage\'s config."""\nimport json\n\n'
            "import ml_collections\n\n\ndef get_config():\n"
            f"  return ml_collections.ConfigDict(json.loads({text!r}))\n")
  return path


def validate_stage(kind: str, cfg: Any, name: str = "") -> None:
  """A stage's config checked by its entry point's `validate` (its "@stage" inputs are
  left to `check_inputs`); a bad field is named under stages.<name>.config."""
  import ml_collections
  cfg = cfg if isinstance(cfg, ml_collections.ConfigDict) else ml_collections.ConfigDict(cfg)
  try:
    importlib.import_module(KINDS[kind][0]).validate(cfg)
  except cli.ConfigError as e:
    if not name:
      raise
    raise cli.ConfigError(f"stages.{name}.config.{e.field}", e.value, e.why) from e
  except cli.BAD_INPUT as e:
    if not name:
      raise
    raise ValueError(f"stage {name!r}: {cli.one_line(e)}") from e


def validate(c, stages: Sequence[str] | None = None, workdir: str | None = None,
             flag: str = "--stages") -> list[str]:
  """Fail fast, naming the bad field and value: the stages to run (`stages`, default
  `order`), each one's config, and (given `workdir`) their inputs. Returns the stages."""
  for name in c.order:
    if name not in c.stages:
      raise ValueError(f"order names stage {name!r} but stages has {sorted(c.stages)}")
  order = list(stages or c.order)
  for name in order:
    if name not in c.stages:
      raise cli.ConfigError(flag, ",".join(order), f"names {name!r}; the config has "
                            f"{sorted(c.stages)}")
  for name in order:
    kind = c.stages[name].kind
    if kind not in KINDS:
      raise ValueError(f"stages.{name}.kind={kind!r}; choose one of {sorted(KINDS)}")
    validate_stage(kind, c.stages[name].config, name)
  if workdir is not None:
    check_inputs(c.to_dict(), order, os.path.abspath(workdir))
  return order


def _env() -> dict[str, str]:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
  return env


def _run(argv: Sequence[str], log_path: str, what: str) -> None:
  print(f"[pipeline] {what}: {' '.join(argv[1:])}", flush=True)
  with open(log_path, "a") as log:
    proc = subprocess.run(list(argv), stdout=log, stderr=subprocess.STDOUT, env=_env())
  if proc.returncode:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    raise RuntimeError(f"{what} failed (exit {proc.returncode}); log {log_path}:\n{tail}")


def run_stage(name: str, spec: Mapping[str, Any], workdir: str) -> None:
  """Run one stage in DIR/<name>/ unless DONE.json says it finished."""
  stage_dir = os.path.join(workdir, name)
  if os.path.exists(os.path.join(stage_dir, "DONE.json")):
    print(f"[pipeline] {name}: done, skipped", flush=True)
    return
  refs: list = []
  cfg = resolve(spec["config"], workdir, refs)
  for ref, path in refs:
    if not os.path.exists(path):
      raise FileNotFoundError(f"stage {name!r}: input {ref} ({path}) does not exist; run the "
                              "stage that makes it first")
  os.makedirs(stage_dir, exist_ok=True)
  module, out_flag = KINDS[spec["kind"]]
  out = stage_dir if out_flag == "workdir" else os.path.join(stage_dir, REJECTION_OUT)
  t0 = time.time()
  _run([sys.executable, "-m", module,
        "--config=" + write_config(cfg, os.path.join(stage_dir, "stage_config.py")),
        f"--{out_flag}={out}"], os.path.join(stage_dir, "stage.log"), f"stage {name}")
  with open(os.path.join(stage_dir, "DONE.json"), "w") as f:
    json.dump({"kind": spec["kind"], "wall_s": time.time() - t0}, f)


def evaluate(name: str, model: Mapping[str, Any], eval_cfg: Mapping[str, Any],
             workdir: str) -> dict:
  """Held-out metrics of a model spec (cached in DIR/<name>/eval/metrics.json). Runs in this
  process: evaluation holds no training state, and the sampler compiles once for all stages."""
  import ml_collections

  from r1jax import evaluate as eval_lib
  out = os.path.join(workdir, name, "eval")
  path = os.path.join(out, "metrics.json")
  if not os.path.exists(path):
    print(f"[pipeline] evaluating {name}", flush=True)
    cfg = dict(resolve(eval_cfg, workdir), model=resolve(dict(model), workdir))
    t0 = time.time()
    res = eval_lib.run(ml_collections.ConfigDict(cfg), None, out)
    res["metrics"]["eval_wall_s"] = time.time() - t0
    with open(os.path.join(out, "samples.jsonl")) as f:
      lang = [json.loads(l).get("reward/language") for l in f]
    if lang and None not in lang:
      res["metrics"]["language"] = sum(lang) / len(lang)
    with open(path, "w") as f:
      json.dump(res, f, indent=2)
  with open(path) as f:
    return json.load(f)["metrics"]


def _cell(metrics: Mapping[str, Any], key: str) -> str:
  hit = [v for k, v in metrics.items() if k == key or (key.endswith("@") and k.startswith(key)
                                                     and "/" not in k
                                                     and not k.endswith(("_lo", "_hi")))]
  return f"{hit[0]:.3f}" if hit else "-"


def rm_note(name: str, workdir: str) -> str | None:
  """A line on a reward-model stage's last held-out evaluation; None without one."""
  path = os.path.join(workdir, name, "eval.jsonl")
  evals = jsonl.read(path) if os.path.exists(path) else []
  if not evals:
    return None
  last = evals[-1]
  cells = ", ".join(f"{label} {last[k]:.3f}" for label, k in RM_COLUMNS if k in last)
  counts = (f" ({last['eval_positives']} correct, {last['eval_negatives']} incorrect)"
            if "eval_positives" in last else "")
  line = f"{name}, held out at step {last['step']}{counts}: {cells}."
  if last.get("eval_balanced_accuracy", 1.0) <= 0.55:
    line += " No better than always answering the majority class (balanced accuracy <= 0.55)."
  if last.get("eval_auc_within_prompt", 1.0) <= 0.55:
    line += (" Within a prompt it does not rank correct answers above wrong ones (AUC within "
             "prompts <= 0.55): it tells hard prompts from easy ones, which GRPO's per-group "
             "centring cancels, so as an RL reward it adds no signal.")
  return line


def summary(rows: Sequence[tuple[str, str, dict, float | None]], total_s: float,
            notes: Sequence[str] = ()) -> str:
  """Markdown: one row per finished stage (name, kind, held-out metrics of the model it made,
  its wall time and its evaluation's), the sum of those wall times, then `notes`."""
  head = ("| stage | kind | " + " | ".join(c for c, _ in COLUMNS)
          + " | stage wall (s) | eval wall (s) |")
  lines = ["# R1 pipeline summary", "", head, "|" + "---|" * (len(COLUMNS) + 4)]
  fmt = lambda v: "-" if v is None else f"{v:.0f}"
  for name, kind, m, wall in rows:
    cells = " | ".join(_cell(m, key) for _, key in COLUMNS)
    lines.append(f"| {name} | {kind} | {cells} | {fmt(wall)} | {fmt(m.get('eval_wall_s'))} |")
  spent = sum(w or 0.0 for *_, w in rows) + sum(m.get("eval_wall_s") or 0.0 for _, _, m, _ in rows)
  lines += ["", f"Stages and evaluations: {spent:.0f} s ({spent / 60:.1f} min) in all, over "
            f"every invocation. This invocation: {total_s:.0f} s (finished stages and cached "
            "evaluations are skipped)."]
  lines += [f"\n{n}" for n in notes]
  return "\n".join(lines) + "\n"


def plot(rows, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [r for r in rows if r[2]]  # the stages that made a model
  if not rows:
    return
  keys = [(c, k) for c, k in COLUMNS if k != "completion_len_mean"]
  fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 3, 4))
  width = 0.8 / len(keys)
  for j, (col, key) in enumerate(keys):
    vals = [float(_cell(m, key)) if _cell(m, key) != "-" else 0.0 for _, _, m, _ in rows]
    ax.bar([i + j * width for i in range(len(rows))], vals, width, label=col)
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [r[0] for r in rows])
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8)
  ax.set_title("held-out metrics after each stage")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def check_inputs(cd: Mapping[str, Any], order: Sequence[str], workdir: str) -> None:
  """Every "@stage" input of the stages to run is made by an earlier one of them or exists."""
  made: set[str] = set()
  for name in order:
    refs: list = []
    resolve(cd["stages"][name]["config"], workdir, refs)
    for ref, path in refs:
      if ref[1:].split("/")[0] not in made and not os.path.exists(path):
        raise FileNotFoundError(f"stage {name!r}: input {ref} ({path}) does not exist and no "
                                "earlier stage of this run makes it")
    made.add(name)


def run(c, workdir: str, stages: Sequence[str] | None = None) -> str:
  """Run (or resume) the pipeline; returns the summary markdown."""
  t0 = time.time()
  workdir = os.path.abspath(workdir)
  order = validate(c, stages, workdir)  # before anything is written
  os.makedirs(workdir, exist_ok=True)
  cd = c.to_dict()
  ev = cd.get("eval")
  rows = []
  if ev:
    rows.append(("base", "model", evaluate("base", cd["base_model"], ev, workdir), None))
  for name in order:
    spec = cd["stages"][name]
    run_stage(name, spec, workdir)
    if ev and spec["kind"] in MODEL_KINDS:
      evaluate(name, {"source": "run", "path": "@" + name}, ev, workdir)
  # The table covers every finished stage, also those of earlier invocations.
  for name in list(cd["order"]) + [s for s in order if s not in cd["order"]]:
    done = os.path.join(workdir, name, "DONE.json")
    if not os.path.exists(done):
      continue
    with open(done) as f:
      wall = json.load(f)["wall_s"]
    kind = cd["stages"][name]["kind"]
    m = (evaluate(name, {"source": "run", "path": "@" + name}, ev, workdir)
         if ev and kind in MODEL_KINDS else {})
    rows.append((name, kind, m, wall))
  notes = [rm_note(name, workdir) for name, kind, _, _ in rows if kind == "reward_model"]
  text = summary(rows, time.time() - t0, [n for n in notes if n])
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(text)
  if rows:
    plot(rows, os.path.join(workdir, "summary.png"))
  print(text, flush=True)
  return text


def _stages() -> list[str] | None:
  return [s for s in flags.FLAGS.stages.split(",") if s] or None


def main() -> None:
  run(flags.FLAGS.config, flags.FLAGS.workdir, _stages())


if __name__ == "__main__":
  define_flags()
  cli.run(main, check=lambda: validate(flags.FLAGS.config, _stages(), flags.FLAGS.workdir),
          required=("config", "workdir"))
