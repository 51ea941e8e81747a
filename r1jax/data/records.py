"""Raw records of a data source spec: what SFT, the reward-model trainer and the rejection
sampler read (task sources, which turn records into examples, are `r1jax.data.sources`).

A spec is {"kind": "jsonl"|"parquet"|"hf_disk", "path": ..., "split": ...} (a file),
{"kind": "mixture", "sources": [spec, ...], "weights": [...], "seed": int, "length": int}
(mixed by weight, the rule of `r1jax.data.mixture`), {"kind": "gym_traces", "task", "size",
"seed", "config"} (cold-start records made from reasoning-gym problems) or
{"kind": "records", "records": [...]} (in-memory records, passed through).
"""

from __future__ import annotations

from typing import Any, Mapping

import grain

from r1jax import jsonl
from r1jax.data import sources as src_lib

KINDS = ("jsonl", "parquet", "hf_disk", "gym_traces", "records", "mixture")


def read_records(spec: Mapping[str, Any]) -> list[dict]:
  """The records of a spec (see the module docstring), as JSON-serialisable dicts."""
  spec = dict(spec)
  kind = spec.pop("kind", None)
  if kind == "records":
    return [dict(r) for r in spec["records"]]
  if kind == "jsonl":
    return [r for p in src_lib.as_paths(spec["path"]) for r in jsonl.read(p)]
  if kind == "parquet":
    import pyarrow.parquet as pq
    return [src_lib.to_jsonable(r) for p in src_lib.as_paths(spec["path"])
            for r in pq.read_table(p).to_pylist()]
  if kind == "hf_disk":
    import datasets
    ds = datasets.load_from_disk(str(spec["path"]))
    if isinstance(ds, datasets.DatasetDict):
      split = spec.get("split") or (next(iter(ds)) if len(ds) == 1 else None)
      if split not in ds:
        raise ValueError(f"{spec['path']} holds splits {sorted(ds)}; set split=")
      ds = ds[split]
    return [src_lib.to_jsonable(r) for r in ds]
  if kind == "gym_traces":
    return gym_traces(**spec)
  if kind == "mixture":
    parts = [read_records(s) for s in spec["sources"]]
    mixed = src_lib.mixture([grain.MapDataset.source(p) for p in parts], spec["weights"],
                            seed=spec.get("seed", 0), length=spec.get("length"))
    return [dict(mixed[i]) for i in range(len(mixed))]
  raise ValueError(f"unknown record source kind {kind!r}; expected one of {', '.join(KINDS)}")


def summary_text(answer: str) -> str:
  """The cold-start summary of a final answer (boxed, so the accuracy reward reads it)."""
  return f"The answer is $\\boxed{{{answer}}}$."


def _expression_steps(expr: str) -> list[str] | None:
  """'a + b - c' -> ['a + b = x', 'x - c = y'] (left to right), None if not that shape."""
  parts = expr.split()
  if len(parts) < 3 or len(parts) % 2 == 0 or any(p not in "+-" for p in parts[1::2]):
    return None
  try:
    acc = int(parts[0])
    steps = []
    for op, term in zip(parts[1::2], parts[2::2]):
      new = acc + int(term) if op == "+" else acc - int(term)
      steps.append(f"{acc} {op} {term} = {new}")
      acc = new
  except ValueError:
    return None
  return steps


def gym_traces(task: str, size: int, seed: int = 0, config: Mapping | None = None
               ) -> list[dict]:
  """Cold-start records made from reasoning-gym problems whose metadata holds a +/- chain
  `expression` (basic_arithmetic, chain_sum): the reasoning evaluates it step by step, the
  summary states the reference answer in a box. A source that needs no files (the default
  config, tests); real cold-start data comes from files (`data.sft.cold_start_records`)."""
  ds = src_lib.reasoning_gym_source(task, size, seed, config)
  out = []
  for i in range(len(ds)):
    ex = ds[i]
    steps = _expression_steps(str(ex["entry"].get("metadata", {}).get("expression", "")))
    if steps is None:
      raise ValueError(f"gym_traces: {task} example {i} has no +/- expression in its metadata; "
                       "use a file of traces instead")
    out.append({"id": ex["id"], "question": ex["question"],
                "reasoning": " ".join(f"{s}." for s in steps),
                "summary": summary_text(ex["answer"])})
  return out
