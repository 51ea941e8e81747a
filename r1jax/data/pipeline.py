"""Batching pipeline: seeded shuffle, sharding by process, repeat, checkpointable state.

The pipeline is index-based (grain `MapDataset`): batch k of a process is a pure
function of (source, seed, shard, k), so the iterator state is one integer and a
restored iterator continues exactly where the saved one stopped.

Checkpointing with orbax (orbax-checkpoint 0.12.x) goes through grain's handler, which
writes one JSON file per process::

  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(train_state),
      data=grain.checkpoint.CheckpointSave(data_iter)))
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iter)))  # restores data_iter in place

`save_iterator_state` / `restore_iterator_state` give the same state as a JSON-able
dict for other stores.
"""

from __future__ import annotations

import json
from typing import Any

import grain
import numpy as np

from r1jax.data.shuffle import as_map_dataset, shuffle as shuffle_dataset


def _copy_batch(examples: list[dict]) -> list[dict]:
  # Shallow copies: a consumer adding keys to an example must not change the
  # in-memory source that later epochs read again.
  return [dict(e) for e in examples]


def _process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"bad shard: shard_index={shard_index}, shard_count={shard_count}")
  return shard_index, shard_count


def batch_iterator(
  source: Any,
  batch_size: int,
  *,
  seed: int,
  shard_index: int | None = None,
  shard_count: int | None = None,
  repeat: bool = True,
  shuffle: bool = True,
  drop_remainder: bool = False,
  num_threads: int = 1,
  prefetch: int = 2,
) -> grain.DatasetIterator:
  """Iterator over batches (python lists of `batch_size` example dicts).

  The whole source is shuffled with `seed` (a new order every epoch), repeated
  forever if `repeat`, and then dealt round-robin to `shard_count` shards, so shards
  are disjoint and together see every example once per epoch. Shards default to this
  JAX process (jax.process_index() of jax.process_count()).

  With repeat=False the last batch may be short unless `drop_remainder`; shard sizes
  then differ by at most one example.

  The iterator is checkpointable: `it.get_state()` is a small JSON-able dict and
  `it.set_state(state)` on a fresh iterator built with the same arguments resumes at
  the exact next batch. `num_threads` / `prefetch` set background reading (batches).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}")
  shard_index, shard_count = _process_shard(shard_index, shard_count)
  ds = as_map_dataset(source)
  if len(ds) == 0:
    raise ValueError("batch_iterator got an empty source")
  if shuffle:
    ds = shuffle_dataset(ds, seed)  # a new order each epoch
  if repeat:
    ds = ds.repeat()
  if shard_count > 1:
    ds = ds[shard_index::shard_count]
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_copy_batch)
  if len(ds) == 0:
    raise ValueError(f"shard {shard_index}/{shard_count} has fewer than batch_size={batch_size} "
                     "examples and drop_remainder=True")
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(read))


def train_eval_split(source: Any, num_eval: int, seed: int, *, dedupe_key: str | None = None
                     ) -> tuple[grain.MapDataset, grain.MapDataset]:
  """Deterministic disjoint split: `num_eval` held-out examples picked by `seed`, the
  rest for training. Both keep the source's order; each is a finite MapDataset.

  Disjoint indices are not disjoint problems when the source repeats itself (a generator
  drawing 2000 sums of small numbers repeats many); `dedupe_key` (e.g. "question") also
  drops from training every example whose value under that key equals a held-out one's,
  so the held-out score never counts a problem the policy trained on. It reads every
  example once. The held-out split is the same with or without it."""
  ds = as_map_dataset(source)
  n = len(ds)
  if not 0 < num_eval < n:
    raise ValueError(f"num_eval must be in (0, {n}) for a source of {n} examples, got {num_eval}")
  perm = np.random.default_rng(seed).permutation(n)
  eval_idx = np.sort(perm[:num_eval]).tolist()
  train_idx = np.sort(perm[num_eval:]).tolist()
  if dedupe_key:
    held = {str(ds[i][dedupe_key]) for i in eval_idx}
    train_idx = [i for i in train_idx if str(ds[i][dedupe_key]) not in held]
    if not train_idx:
      raise ValueError(f"every training example repeats a held-out {dedupe_key!r}")
  # Explicit index lists (not slices of a shuffle): an index past the end wraps within
  # the split, so later epochs never leak held-out examples into training.
  take = _Take(ds)
  return (grain.MapDataset.source(train_idx).map(take),
          grain.MapDataset.source(eval_idx).map(take))


class _Take:
  """index -> source[index] (a class, so the pipeline stays picklable)."""

  def __init__(self, ds: grain.MapDataset):
    self._ds = ds

  def __call__(self, index: int) -> Any:
    return self._ds[index]


def save_iterator_state(it: grain.DatasetIterator) -> dict:
  """The iterator's state as a JSON-able dict (checked by a JSON round trip)."""
  return json.loads(json.dumps(it.get_state()))


def restore_iterator_state(it: grain.DatasetIterator, state: dict | str | bytes
                           ) -> grain.DatasetIterator:
  """Sets `it` (built with the same arguments as the saved one) to `state`, a dict
  from `save_iterator_state` or its JSON text; returns `it`."""
  if isinstance(state, (str, bytes)):
    state = json.loads(state)
  it.set_state(state)
  return it
