"""What every trainer shares: its start (`setup`: distributed init, compilation cache, mesh,
model, run files), the run directory's files, the periodic test (`itstime`) and the config
-> SamplingConfig reader (`sampling_config`: the rollouts' `sampling` section, or another
such as SFT's on-policy `distill.on_policy_*` keys; the trainer and `r1jax.aot` build the
same one). Eval and judge sections go through the same `sampling.config_from`, and every
reward pool through `rewards.pool_from_config`. The held-out evaluation hook is
`eval_records.make_evaluator`.

A run directory (`--workdir`) holds config.json (the experiment config), model_config.json
(the trained model's architecture, read back by export / evaluation / later pipeline
stages), metrics.jsonl, eval.jsonl, eval_problems.jsonl (each eval's per-problem scores,
for paired comparisons), samples.jsonl, tb/ and checkpoints/.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax

from r1jax import compile_cache
from r1jax import sampling as sampling_lib
from r1jax.mesh import make_mesh
from r1jax.model.loader import load_model


class Setup(NamedTuple):
  """What `setup` made: the mesh, the model placed on it, and whether this process writes."""
  mesh: Any
  model_cfg: Any
  params: Any
  tokenizer: Any
  is_main: bool


def setup(c: Any, workdir: str | None, name: str, *, distributed: bool = False,
          cache: str = "") -> Setup:
  """Every entry point's start, in this order: `jax.distributed.initialize()` (with
  `distributed`), the compilation cache (config value `cache`, see `compile_cache.setup`;
  with a `workdir` only), the mesh of `c.mesh.shape`, the model of `c.model` loaded onto it,
  and the run files (config.json, model_config.json) in `workdir`. A `workdir` of None
  (evaluation, rejection sampling) writes nothing."""
  if distributed:
    jax.distributed.initialize()
  is_main = jax.process_index() == 0
  cache_dir = ""
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    cache_dir = compile_cache.setup(cache, workdir)
  if is_main:
    print(f"{name}: loading model ({c.model.source} {c.model.get('preset') or c.model.get('path')})"
          f"; compilation cache {cache_dir or 'off'}", flush=True)
  mesh = make_mesh(tuple(c.mesh.shape))
  model_cfg, params, tokenizer = load_model(c.model, mesh, seed=c.seed)
  if workdir is not None:
    write_run_files(workdir, c, model_cfg)
  return Setup(mesh, model_cfg, params, tokenizer, is_main)


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


def sampling_config(c, section: str = "sampling", prefix: str = "",
                    **extra) -> sampling_lib.SamplingConfig:
  """The SamplingConfig of config `c`'s `section` (the rollouts' `sampling` by default) plus
  `extra` fields. With a `prefix`, the section's keys `<prefix><field>` set the fields (e.g.
  SFT's `distill.on_policy_max_new_tokens`); its other keys are ignored."""
  s = c[section]
  if prefix:
    s = {k[len(prefix):]: v for k, v in dict(s).items() if k.startswith(prefix)}
  return sampling_lib.config_from(s, **extra)

