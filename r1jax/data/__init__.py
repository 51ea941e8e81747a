"""Data layer: task sources -> grain pipelines of example dicts; prompt templates."""

from r1jax.data.pipeline import (
  batch_iterator,
  restore_iterator_state,
  save_iterator_state,
  train_eval_split,
)
from r1jax.data.sources import (
  extract_answer,
  extract_boxed,
  extract_gsm8k_answer,
  hf_disk_source,
  humaneval_source,
  jsonl_source,
  make_source,
  mixture,
  normalize_record,
  parquet_source,
  reasoning_gym_source,
  tfds_source,
)
from r1jax.data.templates import (
  COLD_START_TOKEN,
  R1_ZERO_TEMPLATE,
  TEMPLATES,
  make_renderer,
  prefill_text,
  render_prompt,
)

__all__ = [
  "COLD_START_TOKEN", "R1_ZERO_TEMPLATE", "TEMPLATES", "batch_iterator", "extract_answer",
  "extract_boxed", "extract_gsm8k_answer", "hf_disk_source", "humaneval_source",
  "jsonl_source", "make_renderer", "make_source", "mixture", "normalize_record", "parquet_source",
  "prefill_text", "reasoning_gym_source", "render_prompt", "restore_iterator_state",
  "save_iterator_state", "tfds_source", "train_eval_split",
]
