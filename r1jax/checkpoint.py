"""Orbax checkpoints of a run: train state (params, optimizer, step), RNG, data iterator.

Saving is atomic: Orbax writes into a temporary directory and renames it only once
complete, so a crash mid-save leaves the last good step as the latest one. Restoring
places every array straight into its target sharding.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Wraps `ocp.CheckpointManager` with the items of a training run."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, rng: jax.Array, data_state: Any,
           extra: dict | None = None) -> None:
    rng_data = np.asarray(jax.random.key_data(rng)) if _is_typed_key(rng) else np.asarray(rng)
    meta = {"data": data_state, "rng": rng_data.tolist(), **(extra or {})}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, jax.Array, Any, dict]:
    """Returns (state, rng, data_state, meta) of `step` (default: latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    meta = dict(out["meta"])
    rng = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
    return out["state"], rng, meta.get("data"), meta

  def close(self) -> None:
    self.manager.close()


def _is_typed_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, as a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
