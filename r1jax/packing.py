"""Packing an RL batch into padding-free rows (host numpy, pure functions).

The padded RL step (`rl.Batch`) pads every completion to the batch's power-of-two bucket,
so with long-tailed completion lengths most of its tokens are padding. `pack_batch` instead
lays each sample's whole sequence (its prompt's real tokens, then its completion) end to end
into rows of a fixed length `row_len`, best-fit-decreasing (`data.sft`'s packer), as the SFT
step does:

  tokens       the inputs: prompt + completion without its last token (nothing follows it)
  targets      the next token of the same sequence at every input position
  positions    0, 1, ... restarting in each segment (the padded step's positions)
  segment_ids  1, 2, ... per row, 0 = padding; attention stays inside a segment
  loss_mask    1 where the target is a trained completion token (position p - 1 + t
               predicts completion token t of a sequence whose prompt has p real tokens; a
               multi-turn rollout's tool replies, `Batch.loss_mask` 0, are context only)
  weights      the loss aggregation as per-token weights: the loss is -sum(obj * weights)
               (seq-mean-token-mean 1/(|o_i| B), token-mean 1/sum|o|, Dr. GRPO 1/(L_max B),
               with B the number of samples, empty ones included, as `rl.aggregate`)
  advantages, old_logp, ref_logp, sampler_logp: the completion-aligned arrays carried along
               (per-sequence advantages broadcast over their tokens)

The number of rows is bucketed (`row_bucket`): a multiple of `multiple` (the micro-batch
count, so rows split evenly) times one of four sizes per octave, at most one row per sample,
so a run compiles few shapes. `Layout` maps each completion token to its packed place: `place` packs
any [B, N] completion-aligned array, `unpack` brings per-token results back to [B, N].
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from r1jax.data.sft import pack_best_fit_decreasing


class PackedBatch(NamedTuple):
  """An RL batch on packed rows [R, L] (see the module docstring)."""
  tokens: Any
  targets: Any
  positions: Any
  segment_ids: Any
  loss_mask: Any
  weights: Any
  advantages: Any
  old_logp: Any = None
  ref_logp: Any = None
  sampler_logp: Any = None
  experts: Any = None  # [R, L_moe, L, k] router replay: each input token's sampler experts


class Layout(NamedTuple):
  """Where completion token (src_row, src_col) sits in the packed rows: (dst_row, dst_col)."""
  src_row: np.ndarray
  src_col: np.ndarray
  dst_row: np.ndarray
  dst_col: np.ndarray
  src_shape: tuple[int, int]  # [B, N] of the completion arrays
  dst_shape: tuple[int, int]  # [R, L] of the packed rows


def place(x: np.ndarray, layout: Layout, dtype=np.float32) -> np.ndarray:
  """A completion-aligned array [B, N] (or per-sample [B], broadcast) -> packed [R, L]."""
  x = np.asarray(x)
  out = np.zeros(layout.dst_shape, dtype)
  vals = x[layout.src_row] if x.ndim == 1 else x[layout.src_row, layout.src_col]
  out[layout.dst_row, layout.dst_col] = vals
  return out


def unpack(x: np.ndarray, layout: Layout) -> np.ndarray:
  """Packed per-token values [R, L] -> completion-aligned [B, N] (0 where no token)."""
  x = np.asarray(x)
  out = np.zeros(layout.src_shape, x.dtype)
  out[layout.src_row, layout.src_col] = x[layout.dst_row, layout.dst_col]
  return out


def row_bucket(needed: int, multiple: int, max_rows: int) -> int:
  """Rows to allocate: `multiple` * k, k >= needed / multiple from 1..8 then 10, 12, 14, 16,
  20, 24, ... (four sizes per octave: under 25% padding rows, few shapes), capped at the
  smallest multiple of `multiple` holding `max_rows` (one row per sample)."""
  per = -(-max(needed, 1) // multiple)
  step = 1 << max((per - 1).bit_length() - 3, 0)
  cap = -(-max(max_rows, 1) // multiple)
  return multiple * min(-(-per // step) * step, cap)


def aggregation_weights(lengths: np.ndarray, how: str, max_len: int) -> np.ndarray:
  """Per-sample weight of each of its completion tokens [B] for aggregation `how`, such that
  sum over tokens of weight * x equals `rl.aggregate(x, mask, how, max_len)`."""
  from r1jax.rl import AGGREGATIONS
  lengths = np.asarray(lengths, np.float64)
  b = len(lengths)
  if how == "seq-mean-token-mean":
    w = 1.0 / (np.maximum(lengths, 1.0) * b)
  elif how == "token-mean":
    w = np.full(b, 1.0 / max(lengths.sum(), 1.0))
  elif how == "seq-mean-token-sum-norm":
    w = np.full(b, 1.0 / (max_len * b))
  else:
    raise ValueError(f"loss_aggregation={how!r}; choose from {AGGREGATIONS}")
  return w.astype(np.float32)


def pack_batch(batch: Any, row_len: int, multiple: int = 1,
               aggregation: str = "seq-mean-token-mean", max_len: int = 0
               ) -> tuple[PackedBatch, Layout]:
  """A padded host `rl.Batch` (numpy) -> (PackedBatch, Layout).

  Completions must be left-aligned (mask a prefix of each row, as the sampler gives). Samples
  with no completion token take no room. `max_len` is L_max of seq-mean-token-sum-norm and
  the longest possible completion (0: the completion width, as `rl.aggregate`). `row_len`
  0: the smallest power of two holding the longest possible sequence (padded prompt width +
  max_len - 1), so the row length does not follow each batch's longest completion.
  """
  ptoks, pmask = np.asarray(batch.prompt_tokens), np.asarray(batch.prompt_mask).astype(bool)
  ctoks, cmask = np.asarray(batch.completion_tokens), np.asarray(batch.completion_mask)
  rows, n = ctoks.shape
  g = rows // ptoks.shape[0]
  clen = cmask.astype(bool).sum(1)
  prompts = [ptoks[i][pmask[i]] for i in range(ptoks.shape[0])]
  if min(map(len, prompts)) == 0:
    raise ValueError("pack_batch: a prompt with no token (nothing to predict the completion "
                     "from)")
  if row_len <= 0:
    row_len = 1 << (ptoks.shape[1] + (max_len or n) - 2).bit_length()
  seq_len = np.array([len(prompts[i // g]) + clen[i] - 1 if clen[i] else 0
                      for i in range(rows)])
  live = [i for i in range(rows) if clen[i]]
  if live and seq_len[live].max() > row_len:
    i = live[int(np.argmax(seq_len[live]))]
    raise ValueError(f"train.pack_row_len={row_len} is shorter than sample {i}'s prompt + "
                     f"completion ({seq_len[i]} tokens); raise it")
  bins = [[live[j] for j in b] for b in pack_best_fit_decreasing(seq_len[live], row_len)]
  r = row_bucket(len(bins), multiple, rows)
  shape = (r, row_len)
  tokens, targets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  positions, segs = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  src_row, src_col, dst_row, dst_col = [], [], [], []
  experts = _replayed(batch, pmask, r, row_len)
  for row, items in enumerate(bins):
    at = 0
    for s, i in enumerate(items, start=1):
      full = np.concatenate([prompts[i // g], ctoks[i, :clen[i]]])
      m, p = len(full) - 1, len(prompts[i // g])
      tokens[row, at:at + m], targets[row, at:at + m] = full[:-1], full[1:]
      if experts is not None:  # the routing of each input token: prompt, then completion
        experts[row, :, at:at + p] = batch.prompt_experts[i // g][:, pmask[i // g]]
        experts[row, :, at + p:at + m] = batch.experts[i, :, :clen[i] - 1]
      positions[row, at:at + m], segs[row, at:at + m] = np.arange(m), s
      src_row.append(np.full(clen[i], i))
      src_col.append(np.arange(clen[i]))
      dst_row.append(np.full(clen[i], row))
      dst_col.append(at + p - 1 + np.arange(clen[i]))
      at += m
  cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)
  layout = Layout(cat(src_row), cat(src_col), cat(dst_row), cat(dst_col), (rows, n), shape)
  trained = getattr(batch, "loss_mask", None)  # multi-turn: tool replies are not trained
  trained = cmask if trained is None else np.asarray(trained)
  w = aggregation_weights(trained.astype(bool).sum(1), aggregation, max_len or n)
  opt = lambda x: None if x is None else place(x, layout)
  packed = PackedBatch(
      tokens=tokens, targets=targets, positions=positions, segment_ids=segs,
      loss_mask=place(trained, layout, np.int32), weights=place(w, layout),
      advantages=place(batch.advantages, layout), old_logp=opt(batch.old_logp),
      ref_logp=opt(batch.ref_logp), sampler_logp=opt(batch.sampler_logp), experts=experts)
  return packed, layout


def _replayed(batch: Any, pmask: np.ndarray, rows: int, row_len: int) -> np.ndarray | None:
  """The packed routing buffer [R, L_moe, L, k] of -1 (None without router replay)."""
  if getattr(batch, "experts", None) is None:
    return None
  e = np.asarray(batch.experts)
  return np.full((rows, e.shape[1], row_len, e.shape[3]), -1, e.dtype)


def useful_share(packed: PackedBatch) -> float:
  """Share of the packed rows' token slots that hold a real token."""
  segs = np.asarray(packed.segment_ids)
  return float((segs > 0).mean()) if segs.size else 0.0


def from_config(c) -> int | None:
  """The packed rows' length when `train.packing` is on (0: the power of two holding a padded
  prompt and sampling.max_new_tokens, chosen by `pack_batch`), else None.

  Raises, naming the value, on a `train.pack_row_len` the padded step would ignore or one
  shorter than `sampling.max_new_tokens` (a longest completion after a 1-token prompt)."""
  on, row_len = bool(c.train.get("packing", False)), int(c.train.get("pack_row_len", 0))
  if not on:
    if row_len:
      raise ValueError(f"train.pack_row_len={row_len} is set but train.packing=False (the "
                       "padded step ignores it): set train.packing=True or leave it 0")
    return None
  if row_len < 0 or 0 < row_len < c.sampling.max_new_tokens:
    raise ValueError(f"train.pack_row_len={row_len} must be 0 (a power of two holding prompt "
                     f"+ completion) or >= sampling.max_new_tokens={c.sampling.max_new_tokens} "
                     "plus the prompt")
  return row_len
