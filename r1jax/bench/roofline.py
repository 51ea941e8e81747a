"""Decode roofline of a dense model: FLOPs per generated token, HBM bytes per decode step,
known HBM bandwidths, and the GFLOP/s this machine's XLA gives one unembedding-sized dot."""

from __future__ import annotations

from r1jax.bench.timing import best_time


def _matmul_weights(cfg) -> int:
  """Elements of every weight matrix a decode step multiplies by (unembedding included)."""
  d, h, kvh, hd, f = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.hd,
                      cfg.intermediate_size)
  layer = d * (h + 2 * kvh) * hd + h * hd * d + 3 * d * f
  return cfg.num_layers * layer + d * cfg.vocab_size


def _mean_context(prompt_len: int, new_tokens: int) -> float:
  return prompt_len + (new_tokens + 1) / 2


def flops_per_token(cfg, prompt_len: int, new_tokens: int) -> float:
  """Decode FLOPs per generated token: 2 x the matmul weights (unembedding included) plus the
  attention dots over the average context."""
  attn = 4.0 * cfg.num_layers * cfg.num_heads * cfg.hd * _mean_context(prompt_len, new_tokens)
  return 2.0 * _matmul_weights(cfg) + attn


# HBM bandwidth in GB/s, matched against jax's device_kind.
HBM_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L4": 300.0, "B200": 8000.0}


def bytes_per_step(cfg, batch: int, prompt_len: int, new_tokens: int, weight_bytes: int) -> float:
  """HBM bytes one decode step must read: every matmul weight once plus the batch's K/V cache
  over the average context (bf16 / fp32 as the weights)."""
  kv = batch * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.hd * _mean_context(prompt_len,
                                                                              new_tokens)
  return float(weight_bytes * (_matmul_weights(cfg) + kv))


def dot_ceiling(cfg, rows: int, dtype: str) -> float:
  """GFLOP/s of one XLA dot the size of the unembedding ([rows, D] x [D, V], float32 result):
  what this machine's XLA gives the decode step's largest matmul."""
  import jax
  import jax.numpy as jnp
  x = jnp.ones((rows, cfg.hidden_size), dtype)
  w = jnp.ones((cfg.hidden_size, cfg.vocab_size), dtype)
  f = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32))
  return 2.0 * rows * cfg.hidden_size * cfg.vocab_size / best_time(f, x, w) / 1e9
