"""Data layer: task sources -> grain pipelines of example dicts; prompt templates."""

from r1jax.data.pipeline import (
  batch_iterator,
  restore_iterator_state,
  save_iterator_state,
  train_eval_split,
)
from r1jax.data.records import read_records
from r1jax.data.sources import (
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
from r1jax.rewards.extract import gsm8k_reference, last_boxed, reference_answer

# Older names of the reference-answer parsers (r1jax.rewards.extract), kept for callers;
# `r1jax.rewards.extract_answer` is the one that reads a completion.
extract_answer = reference_answer
extract_boxed = last_boxed
extract_gsm8k_answer = gsm8k_reference

__all__ = [
  "COLD_START_TOKEN", "R1_ZERO_TEMPLATE", "TEMPLATES", "batch_iterator", "extract_answer",
  "extract_boxed", "extract_gsm8k_answer", "gsm8k_reference", "hf_disk_source",
  "humaneval_source", "jsonl_source", "last_boxed", "make_renderer", "make_source", "mixture",
  "normalize_record", "parquet_source", "prefill_text", "read_records", "reasoning_gym_source",
  "reference_answer", "render_prompt", "restore_iterator_state", "save_iterator_state",
  "tfds_source", "train_eval_split",
]
