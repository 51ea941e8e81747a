"""Orbax checkpoints of a run: train state (params, optimizer, step), RNG, data iterator.

Saving is atomic: Orbax writes into a temporary directory and renames it only once
complete, so a crash mid-save leaves the last good step as the latest one (leftover
temporary directories are removed at the next start). Saves are synchronous: Orbax
deletes checkpoints beyond `max_to_keep` only after the new one is committed (with async
saves its finalize step deletes them even when the new save failed), so the last good
checkpoint is never deleted before a newer one is complete. A failed save (a full disk)
raises `CheckpointSaveError` naming the step, the directory and the intact previous step.

Restoring the latest step falls back over damaged checkpoints (partial, truncated or
unreadable files): each is reported, and once an older one restores, the damaged ones are
renamed `<step>.damaged` so that the run can write those steps again. Restoring places
every array straight into its target sharding.
"""

from __future__ import annotations

import errno
import json
import os
import time
from typing import Any

import jax
from absl import logging
import numpy as np
import orbax.checkpoint as ocp

from r1jax import faults


class Checkpointer:
  """Wraps `ocp.CheckpointManager` with the items of a training run."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, rng: jax.Array, data_state: Any,
           extra: dict | None = None) -> None:
    rng_data = np.asarray(jax.random.key_data(rng)) if _is_typed_key(rng) else np.asarray(rng)
    meta = {"data": data_state, "rng": rng_data.tolist(), **(extra or {})}
    previous = self.latest_step()
    if faults.armed("checkpoint", step):  # kill -9 tests: die while this save writes
      faults.kill_when_files_appear(self.directory, f"{step}.orbax-checkpoint-tmp")
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
      self.manager.wait_until_finished()
    except Exception as e:  # tensorstore and the JSON writer raise different types
      full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in str(e)
      kept = (f"the previous checkpoint (step {previous}) is intact" if previous is not None
              else "there is no previous checkpoint")
      raise CheckpointSaveError(
          f"{'disk full' if full else 'error'} while saving checkpoint step {step} to "
          f"{self.directory} ({type(e).__name__}: {e}); {kept}. Stopping: free space and "
          "restart to resume from it.") from e

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, jax.Array, Any, dict]:
    """Returns (state, rng, data_state, meta) of `step` (default: the newest readable one)."""
    if step is not None:
      return self._restore(abstract_state, step)
    damaged = []
    for s in sorted(self.manager.all_steps(), reverse=True):
      try:
        out = self._restore(abstract_state, s)
      except Exception as e:  # noqa: BLE001 - any read failure means a damaged checkpoint
        logging.warning("checkpoint step %d under %s is damaged or unreadable (%s: %s); "
                        "trying the previous one", s, self.directory, type(e).__name__,
                        str(e)[:500])
        print(f"warning: checkpoint step {s} is damaged or unreadable ({type(e).__name__}); "
              "falling back to the previous one", flush=True)
        damaged.append(s)
        continue
      for d in damaged:
        self._set_aside(d)
      return out
    raise FileNotFoundError(f"no readable checkpoint under {self.directory}"
                            + (f" (damaged steps: {damaged})" if damaged else ""))

  def resume(self, state: Any, rng: jax.Array, data_it: Any = None) -> tuple[Any, jax.Array, int]:
    """Restore or start: (state, rng, step) of the newest readable checkpoint, with `data_it`
    (a grain iterator) moved to its saved position; the inputs and step 0 without one."""
    if self.latest_step() is None:
      return state, rng, 0
    state, rng, data_state, _ = self.restore(abstract_like(state))
    if data_it is not None:
      from r1jax.data import restore_iterator_state
      restore_iterator_state(data_it, data_state)
    step = self.latest_step()  # damaged newer steps were set aside by `restore`
    print(f"resumed from step {step} of {os.path.dirname(self.directory)}", flush=True)
    return state, rng, step

  def _set_aside(self, step: int) -> None:
    """Rename a damaged step directory out of Orbax's view (kept for inspection)."""
    src = os.path.join(self.directory, str(step))
    dst = f"{src}.damaged"
    if os.path.exists(dst):
      dst = f"{dst}.{int(time.time())}"
    if jax.process_index() == 0:
      try:
        os.rename(src, dst)
        logging.warning("moved damaged checkpoint %s to %s", src, dst)
      except FileNotFoundError:
        pass
    self.manager.reload()

  def _restore(self, abstract_state: Any, step: int) -> tuple[Any, jax.Array, Any, dict]:
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    meta = dict(out["meta"])
    rng = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
    return out["state"], rng, meta.get("data"), meta

  def close(self) -> None:
    self.manager.close()


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


def _is_typed_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, as a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


# ----------------------------------------------------------------------------- reading runs


def resolve_checkpoint(path: str) -> tuple[str, int | None, str]:
  """WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/STEP -> (manager dir, step, workdir).

  step None means the latest.
  """
  path = os.path.abspath(path)
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
    ckpt_dir = os.path.dirname(path)
    return ckpt_dir, int(base), _workdir_of(ckpt_dir)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None, path
  if os.path.isdir(path) and any(d.isdigit() for d in os.listdir(path)):
    return path, None, _workdir_of(path)
  raise FileNotFoundError(f"no checkpoint at {path} (want a workdir, its checkpoints/ "
                          "directory, or one step directory inside it)")


def _workdir_of(ckpt_dir: str) -> str:
  return os.path.dirname(ckpt_dir) if os.path.basename(ckpt_dir) == "checkpoints" else ckpt_dir


def restore_params(path: str, like: Any) -> tuple[Any, int]:
  """Params of a trainer checkpoint (only the `params` of its TrainState is read), placed
  like the arrays of `like` (a params pytree of the same structure). Returns (params, step)."""
  import orbax.checkpoint as ocp

  from r1jax import lora
  ckpt_dir, step, workdir = resolve_checkpoint(path)
  lcfg = _run_lora(workdir)  # a LoRA run saves {"base", "lora"}: restore both, then merge
  mngr = ocp.CheckpointManager(ckpt_dir)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint under {ckpt_dir}")
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    if lcfg.enabled:
      mesh = jax.tree.leaves(target)[0].sharding.mesh
      target = lora.abstract_params(target, lcfg, jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec()))
    abstract = {"params": target}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=abstract, restore_args=restore_args, partial_restore=True)))
  finally:
    mngr.close()
  return lora.merge(out["state"]["params"], lcfg), int(step)


def _run_lora(workdir: str):
  """The LoRA config of the run in `workdir` (off when its config.json has none)."""
  from r1jax import lora
  path = os.path.join(workdir, "config.json")
  section = None
  if os.path.exists(path):
    with open(path) as f:
      section = json.load(f).get("lora")
  return lora.from_config(section)
