"""NaN/inf steps: skipped inside the jitted step (params and optimizer state untouched),
counted in the metrics, and the run stops after too many in a row, naming step and quantity."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import memory, steps
from r1jax.nonfinite import Guard, NonFiniteError

TX = steps.make_optimizer(steps.OptimConfig(learning_rate=0.1, max_grad_norm=1.0))


def _loss(params, batch):
  """Mean over rows. scale = nan/inf makes the loss NaN/inf on purpose; c == w makes the
  loss finite and its gradient not (d sqrt|w - c| / dw at w = c)."""
  w = params["w"]
  per_row = batch["scale"] * jnp.sum((w * batch["x"] - 1.0) ** 2, axis=1)
  per_row += jnp.sum(jnp.sqrt(jnp.abs(w - batch["c"])), axis=1)
  return jnp.mean(per_row), {"aux": jnp.sum(w)}


W0 = np.asarray([0.5, -1.0, 2.0], np.float32)


def _batch(scale=1.0, c=10.0):
  x = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
  return {"scale": jnp.full((4,), scale, jnp.float32), "x": jnp.asarray(x),
          "c": jnp.broadcast_to(jnp.asarray(c, jnp.float32), (4, 3))}


def _state():
  return memory.init_state({"w": jnp.asarray(W0)}, TX)


def _reference_update(state, batch):
  """optax directly (no skip logic): the update of a finite step."""
  grads = jax.grad(lambda p: _loss(p, batch)[0])(state.params)
  updates, opt = TX.update(grads, state.opt_state, state.params)
  return optax.apply_updates(state.params, updates), opt


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("n_micro", [1, 2])
def test_nonfinite_step_leaves_state_unchanged(n_micro):
  step = jax.jit(steps.make_train_step(_loss, TX, n_micro))
  s0 = _state()
  for bad, loss_bad in ((_batch(jnp.nan), 1), (_batch(jnp.inf), 1), (_batch(c=W0), 0)):
    s1, m = step(s0, bad)
    assert int(m["nonfinite_skipped"]) == 1
    assert int(m["nonfinite_loss"]) == loss_bad and int(m["nonfinite_grad"]) == 1
    assert int(s1.step) == 1
    assert _same(s1.params, s0.params) and _same(s1.opt_state, s0.opt_state)
    np.testing.assert_array_equal(s1.params["w"], W0)
  # A finite step after a skipped one is the plain optax update of the untouched state.
  s1, _ = step(s0, _batch(jnp.nan))
  s2, m = step(s1, _batch())
  assert int(m["nonfinite_skipped"]) == 0 and int(s2.step) == 2
  ref_params, ref_opt = _reference_update(s0, _batch())
  np.testing.assert_allclose(s2.params["w"], ref_params["w"], rtol=1e-6)
  assert not np.allclose(s2.params["w"], W0)


def test_guard_stops_after_consecutive_skips_naming_step_and_quantity():
  g = Guard(3)
  ok = {"nonfinite_skipped": 0, "loss": 1.0, "grad_norm": 1.0}
  nan_loss = {"nonfinite_skipped": 1, "nonfinite_loss": 1, "nonfinite_grad": 1,
              "loss": float("nan"), "grad_norm": float("nan")}
  inf_grad = {"nonfinite_skipped": 1, "nonfinite_loss": 0, "nonfinite_grad": 1,
              "loss": 2.0, "grad_norm": float("inf")}
  for step, m in enumerate([nan_loss, nan_loss, ok, inf_grad, nan_loss], start=1):
    g.update(step, m)  # the finite step 3 resets the count
  with pytest.raises(NonFiniteError, match=r"step 6: grad_norm not finite .*3 consecutive"):
    g.update(6, inf_grad)
  g = Guard(0)  # never stops
  for step in range(1, 50):
    g.update(step, nan_loss)
  assert g.total == 49
  with pytest.raises(ValueError, match="max_nonfinite_steps=-1"):
    Guard(-1)


def test_trainer_skips_nan_steps_and_stops(tmp_path, monkeypatch):
  """A GRPO loss that is NaN on purpose: every update is skipped (the checkpointed params are
  the initial ones), each step is counted, and the run stops at train.max_nonfinite_steps."""
  import json
  import os

  from configs import r1_zero
  from r1jax import rl
  from r1jax import train as train_lib
  import orbax.checkpoint as ocp

  from r1jax.checkpoint import Checkpointer

  real_loss = rl.grpo_loss

  def nan_loss(params, batch, cfg, model_cfg):
    loss, m = real_loss(params, batch, cfg, model_cfg)
    return loss * jnp.nan, m

  monkeypatch.setattr(rl, "grpo_loss", nan_loss)  # the trainer's padded step calls it
  c = r1_zero.get_config("tiny")
  c.unlock()
  c.train.update(num_steps=5, eval_every=0, checkpoint_every=1, max_nonfinite_steps=2)
  c.rl.beta = 0.0  # no reference log-probs to compile
  workdir = str(tmp_path)
  with pytest.raises(NonFiniteError, match=r"step 2: loss and grad_norm not finite .*2 consecutive"):
    train_lib.train(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [(r["step"], r["nonfinite_skipped"]) for r in rows] == [(1, 1), (2, 1)]
  # Checkpoint 1 holds the initial params: the NaN update was not applied.
  from r1jax.model.loader import load_model
  from r1jax.mesh import make_mesh
  _, init_params, _ = load_model(c.model, make_mesh(tuple(c.mesh.shape)), seed=c.seed)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.latest_step() == 1
  saved = ckpt.manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  saved_params = jax.tree.leaves(saved["state"]["params"])
  assert len(saved_params) == len(jax.tree.leaves(init_params)) > 0
  for x, y in zip(jax.tree.leaves(init_params), saved_params):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
