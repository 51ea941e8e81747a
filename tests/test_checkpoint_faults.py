"""Damaged checkpoints fall back to the newest good one; a full disk while saving stops with a
clear message and leaves the previous checkpoint intact."""

import errno
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import memory, steps
from r1jax.checkpoint import Checkpointer, CheckpointSaveError, abstract_like

TX = steps.make_optimizer(steps.OptimConfig(learning_rate=0.1))


def _state(k: int):
  """A train state whose values say which step wrote it (w = k, b = -k)."""
  params = {"w": jnp.full((64, 32), float(k)), "b": jnp.full((32,), -float(k))}
  return memory.init_state(params, TX)._replace(step=jnp.asarray(k, jnp.int32))


def _save(ckpt, k):
  ckpt.save(k, _state(k), jax.random.key(k), {"epoch": 0, "index": k})


def _check_is_step(out, k):
  state, rng, data, _ = out
  assert int(state.step) == k
  np.testing.assert_array_equal(state.params["w"], np.full((64, 32), float(k)))
  np.testing.assert_array_equal(state.params["b"], np.full((32,), -float(k)))
  np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(jax.random.key(k)))
  assert data == {"epoch": 0, "index": k}


def _files(root):
  return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


def _delete_arrays(path):  # partial: the array store of the state item is gone
  for f in _files(os.path.join(path, "state")):
    if "ocdbt" in f or "d/" in f or f.endswith("manifest.ocdbt"):
      os.remove(f)


def _truncate(path):
  for f in _files(path):
    size = os.path.getsize(f)
    with open(f, "r+b") as fh:
      fh.truncate(size // 2)


def _garbage(path):
  for f in _files(path):
    size = os.path.getsize(f)
    with open(f, "wb") as fh:
      fh.write(b"\x00garbage" * max(1, size // 8))


def _no_meta(path):
  for f in _files(os.path.join(path, "meta")):
    os.remove(f)


@pytest.mark.parametrize("damage", [_delete_arrays, _truncate, _garbage, _no_meta])
def test_damaged_latest_checkpoint_falls_back(tmp_path, damage, capsys):
  d = str(tmp_path / "ckpt")
  ckpt = Checkpointer(d, max_to_keep=3)
  for k in (1, 2, 3):
    _save(ckpt, k)
  ckpt.close()
  damage(os.path.join(d, "3"))
  # A half-written save of step 4 (a kill mid-write) is a leftover temporary directory.
  os.makedirs(os.path.join(d, "4.orbax-checkpoint-tmp-1234", "state"))

  ckpt = Checkpointer(d, max_to_keep=3)
  assert ckpt.latest_step() == 3
  _check_is_step(ckpt.restore(abstract_like(_state(0))), 2)
  assert "checkpoint step 3 is damaged" in capsys.readouterr().out
  # The damaged step is set aside, the leftover removed, and step 3 can be written again.
  assert ckpt.latest_step() == 2
  assert sorted(os.listdir(d)) == ["1", "2", "3.damaged"]
  _save(ckpt, 3)
  _check_is_step(ckpt.restore(abstract_like(_state(0))), 3)
  ckpt.close()


def test_no_readable_checkpoint_is_an_error(tmp_path):
  d = str(tmp_path / "ckpt")
  ckpt = Checkpointer(d)
  _save(ckpt, 1)
  _garbage(os.path.join(d, "1"))
  with pytest.raises(FileNotFoundError, match=r"no readable checkpoint .*damaged steps: \[1\]"):
    Checkpointer(d).restore(abstract_like(_state(0)))
  assert os.path.isdir(os.path.join(d, "1"))  # nothing set aside when nothing restores


def _wait_quiet(d, timeout=10.0):
  """Until nothing under d has changed for 0.5 s."""
  import time
  t_end, last, since = time.time() + timeout, None, time.time()
  while time.time() < t_end:
    try:
      snap = sorted((f, os.path.getsize(f)) for f in _files(d))
    except OSError:  # a file went away while listing
      snap = None
    if snap != last:
      last, since = snap, time.time()
    elif time.time() - since > 0.5:
      return
    time.sleep(0.05)


@pytest.mark.parametrize("keep", [1, 2])
def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch, keep):
  """A write hook: the JSON item's writer writes half of its file, then ENOSPC."""
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh
  d = str(tmp_path / "ckpt")
  ckpt = Checkpointer(d, max_to_keep=keep)
  _save(ckpt, 1)

  async def full_disk(self, x, directory):
    path = directory / self._filename
    path.write_text('{"half": ')
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

  monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", full_disk)
  with pytest.raises(CheckpointSaveError,
                     match=r"disk full while saving checkpoint step 2 .*previous checkpoint "
                           r"\(step 1\) is intact"):
    _save(ckpt, 2)
  monkeypatch.undo()
  _wait_quiet(d)  # the run stops here; in a test, the failed save's writer threads linger
  # Step 1 was not deleted (even with max_to_keep=1); the restarted run resumes from it, and
  # what the failed save left is gone once it saves step 2 again.
  assert "1" in os.listdir(d)
  fresh = Checkpointer(d, max_to_keep=keep)
  assert fresh.latest_step() == 1
  _check_is_step(fresh.restore(abstract_like(_state(0))), 1)
  _save(fresh, 2)
  assert sorted(os.listdir(d)) == (["2"] if keep == 1 else ["1", "2"])
  _check_is_step(fresh.restore(abstract_like(_state(0))), 2)


@pytest.fixture
def tiny_tmpfs(tmp_path):
  """A 2 MB tmpfs (a real full disk); skipped where mounting is not allowed."""
  import subprocess
  d = str(tmp_path / "tmpfs")
  os.makedirs(d)
  if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", d],
                                         capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here (needs root); the write-hook test covers ENOSPC")
  yield d
  subprocess.run(["umount", "-l", d], capture_output=True)


def test_real_full_disk_while_saving(tiny_tmpfs):
  d = os.path.join(tiny_tmpfs, "ckpt")
  ckpt = Checkpointer(d, max_to_keep=1)
  _save(ckpt, 1)
  filler = os.path.join(tiny_tmpfs, "filler")
  fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
  with pytest.raises(OSError):
    while True:
      os.write(fd, b"0" * 4096)
  os.close(fd)
  with pytest.raises(CheckpointSaveError, match=r"disk full .*step 2 .*\(step 1\) is intact"):
    _save(ckpt, 2)
  _wait_quiet(d)
  os.remove(filler)
  fresh = Checkpointer(d, max_to_keep=1)
  _check_is_step(fresh.restore(abstract_like(_state(0))), 1)
  _save(fresh, 2)
  assert sorted(os.listdir(d)) == ["2"]
