"""LoRA: gradients equal a hand-written W + (alpha/r) A@B model's, the base stays frozen with no
optimizer state, and the merged weights export to transformers with the same logits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import rl, lora, memory, steps
from r1jax.model import PRESETS, init_params
from r1jax.model import forward as _forward

forward = jax.jit(_forward, static_argnums=1)

CFG = PRESETS["tiny"]
LCFG = lora.LoraConfig(rank=4, alpha=8.0, targets="q|v|o|down")


def _batch(seed=0):
  r = np.random.RandomState(seed)
  b, g, p, n = 2, 2, 5, 4
  mask = np.ones((b * g, n), bool)
  mask[1, 3:] = False
  return rl.Batch(jnp.asarray(r.randint(0, 256, (b, p))), jnp.ones((b, p), bool),
                    jnp.asarray(r.randint(0, 256, (b * g, n))), jnp.asarray(mask),
                    jnp.asarray(r.randn(b * g), jnp.float32), None, None)


def _adapters(params, seed=1):
  """Adapters with B != 0 (at init B = 0 and A would get no gradient)."""
  ad = lora.init(params, LCFG, jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 1), 100))
  return jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), ad)


def _naive_merge(params, adapters, scale=8.0 / 4):
  """W + (alpha/r) A @ B written out with matrices: W as [in, out], A [in, r], B [r, out]."""
  out = jax.tree.map(lambda x: x, params)
  for i, ad in enumerate(adapters["layers"] if isinstance(adapters["layers"], list)
                         else [adapters["layers"][k] for k in sorted(adapters["layers"])]):
    layer = out["layers"][i]
    for name, ab in ad.items():
      w = layer[name]
      n_in = 2 if name == "o" else 1
      rows = int(np.prod(w.shape[:n_in]))
      a = ab["a"].reshape(rows, -1)
      b = ab["b"].reshape(a.shape[1], -1)
      layer[name] = (w.reshape(rows, -1) + scale * (a @ b)).reshape(w.shape)
  return out


def _loss(model_params, batch):
  """A policy-gradient-shaped loss on the completions (plain log-softmax, cheap to compile)."""
  t = batch.completion_tokens
  pos = jnp.broadcast_to(jnp.arange(t.shape[1]), t.shape)
  logits, _ = _forward(model_params, CFG, t, pos)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), t[:, 1:, None], -1)[..., 0]
  m = batch.completion_mask[:, 1:]
  return -(logp * m * batch.advantages[:, None]).sum() / m.sum(), {}


def test_targets_by_name_pattern():
  assert LCFG.target_names() == ("q", "v", "o", "down")
  assert lora.LoraConfig(rank=2, targets="gate|up").target_names() == ("gate", "up")
  with pytest.raises(ValueError, match="lora.targets"):
    lora.LoraConfig(rank=2, targets="nothing")
  with pytest.raises(ValueError, match="lora.rank"):
    lora.LoraConfig(rank=-1)


def test_lora_step_gradients_equal_naive_and_base_stays_frozen():
  params = init_params(CFG, 0)
  adapters = _adapters(params)
  batch = _batch()
  tx = optax.sgd(1.0)  # the update is minus the gradient
  state = memory.init_state({"base": params, "lora": adapters}, tx, lora.trainable(LCFG))
  assert sum(x.size for x in jax.tree.leaves(state.opt_state)) == 0  # sgd: no state
  adam = optax.adam(1e-3)
  n_lora = sum(x.size for x in jax.tree.leaves(adapters))
  adam_state = memory.init_state({"base": params, "lora": adapters}, adam, lora.trainable(LCFG))
  assert sum(x.size for x in jax.tree.leaves(adam_state.opt_state)) == 2 * n_lora + 1
  before = jax.tree.map(np.asarray, state.params)
  step = jax.jit(lora.make_train_step(_loss, tx, lcfg=LCFG))
  state, m = step(state, batch)
  # Naive: the loss of hand-merged weights W + (alpha/r) A@B, differentiated in A and B.
  naive = jax.jit(jax.grad(lambda ad: _loss(_naive_merge(params, ad), batch)[0]))(adapters)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(naive)) > 1e-4
  for old, new, g in zip(jax.tree.leaves(before["lora"]), jax.tree.leaves(state.params["lora"]),
                         jax.tree.leaves(naive)):
    np.testing.assert_allclose(np.asarray(new) - old, -np.asarray(g), rtol=2e-4, atol=1e-6)
  for x, y in zip(jax.tree.leaves(before["base"]), jax.tree.leaves(state.params["base"])):
    np.testing.assert_array_equal(x, np.asarray(y))
  assert lora.base(state.params, LCFG) is state.params["base"] and float(m["grad_norm"]) > 0
  # At init (B = 0) the LoRA model is the base model exactly.
  fresh = lora.combine(params, lora.init(params, LCFG, jax.random.key(0)), LCFG)
  t = batch.completion_tokens
  pos = jnp.broadcast_to(jnp.arange(t.shape[1]), t.shape)
  np.testing.assert_array_equal(forward(fresh, CFG, t, pos)[0], forward(params, CFG, t, pos)[0])


def test_merged_export_loads_in_transformers_with_same_logits(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from r1jax.model.checkpoint_io import save_hf_dir
  params = init_params(CFG, 0)
  adapters = _adapters(params)
  merged = jax.jit(functools.partial(lora.merge, lcfg=LCFG))({"base": params, "lora": adapters})
  save_hf_dir(merged, CFG, str(tmp_path))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
  tokens = np.random.RandomState(0).randint(0, 256, (2, 12))
  with torch.no_grad():
    ref = model(torch.from_numpy(tokens)).logits.numpy()
  pos = jnp.broadcast_to(jnp.arange(12), tokens.shape)
  unmerged = jax.jit(functools.partial(lora.combine, lcfg=LCFG))(params, adapters)
  # ^ runs x@W + x@A@(sB), not the merged weights
  ours = np.asarray(forward(unmerged, CFG, jnp.asarray(tokens), pos)[0])
  base = np.asarray(forward(params, CFG, jnp.asarray(tokens), pos)[0])
  assert np.abs(ours - base).max() > 1e-3  # the adapters matter
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_checkpointed_lora_state_restores_and_merges(tmp_path):
  """A LoRA run's checkpoint (train-state params {"base", "lora"}) restores from the abstract
  tree `abstract_params` gives and merges to the model's param structure."""
  from r1jax.checkpoint import Checkpointer
  from r1jax.model import param_shapes
  params = init_params(CFG, 0)
  state = {"base": params, "lora": _adapters(params)}
  ck = Checkpointer(str(tmp_path))
  ck.save(1, steps.TrainState(jnp.zeros((), jnp.int32), state, ()), jax.random.key(0), {})
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev),
                        param_shapes(CFG))
  abstract = steps.TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=dev),
                              lora.abstract_params(shapes, LCFG, dev), ())
  restored = ck.restore(abstract)[0].params
  ck.close()
  merged = lora.merge(restored, LCFG)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  want = _naive_merge(params, state["lora"])
  for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_lora_grpo_run_exports_merged_weights(tmp_path):
  """End to end: a tiny GRPO run with adapters trains with the base frozen; then (with the
  adapters' B made non-zero, as training would) the export function restores base +
  adapters from the trainer's checkpoint and writes the merged model, which transformers
  reads with the logits of a hand-merged W + (alpha / r) A B."""
  transformers = pytest.importorskip("transformers")
  from configs import r1_zero
  from hf_oracle import hf_logits
  from r1jax import train as train_lib
  from r1jax.checkpoint import Checkpointer
  from r1jax.export import export
  c = r1_zero.get_config("tiny")
  c.unlock()
  c.train.update(num_steps=2, eval_every=0, checkpoint_every=2)
  c.lora.update(rank=4, alpha=8.0)
  run = str(tmp_path / "run")
  train_lib.train(c, run)
  ck = Checkpointer(run + "/checkpoints")
  lcfg = lora.from_config(c.lora)
  tx = steps.make_optimizer(steps.OptimConfig(total_steps=2, **c.optim.to_dict()))
  like = memory.init_state(lora.wrap_params(init_params(PRESETS["tiny"], 0), lcfg,
                                            jax.random.key(0)), tx, lora.trainable(lcfg))
  state, rng, data_state, _ = ck.restore(jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like))
  base0 = init_params(PRESETS["tiny"], c.seed)
  for x, y in zip(jax.tree.leaves(state.params["base"]), jax.tree.leaves(base0)):
    np.testing.assert_array_equal(x, y)  # the base never moves
  keys = iter(jax.random.split(jax.random.key(3), 100))
  adapters = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape),
                          state.params["lora"])
  ck.save(3, state._replace(params=dict(state.params, lora=adapters)), rng, data_state)
  ck.close()
  export(run, str(tmp_path / "hf"))
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
  merged = _naive_merge(state.params["base"], adapters, c.lora.alpha / c.lora.rank)
  toks = np.asarray([[3, 40, 41, 42, 9]])
  ours, _ = _forward(merged, PRESETS["tiny"], jnp.asarray(toks), jnp.arange(5)[None])
  plain, _ = _forward(base0, PRESETS["tiny"], jnp.asarray(toks), jnp.arange(5)[None])
  assert not np.allclose(ours, plain, atol=1e-3)
  np.testing.assert_allclose(hf_logits(back, toks), ours, atol=1e-4)
