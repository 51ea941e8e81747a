"""GRPO log-probs on a real (tiny) transformer against a naive full-sequence computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import rl
from r1jax.model import PRESETS, forward, init_params, positions_from_mask

CFG = PRESETS["tiny"]


def _batch(b=2, g=3, p=7, n=5, seed=0):
  rng = np.random.RandomState(seed)
  prompt = rng.randint(3, CFG.vocab_size, (b, p)).astype(np.int32)
  pmask = np.ones((b, p), np.int32)
  pmask[1, :3] = 0  # left padding
  prompt[1, :3] = 0
  comp = rng.randint(3, CFG.vocab_size, (b * g, n)).astype(np.int32)
  cmask = np.ones((b * g, n), np.int32)
  cmask[2, 3:] = 0  # finished early
  cmask[4, 1:] = 0
  comp[cmask == 0] = 0
  adv = rng.normal(size=b * g).astype(np.float32)
  return rl.Batch(prompt, pmask, comp, cmask, adv, None, None)


def _naive_logprobs(params, batch, temperature):
  """Each row's full sequence (prompt + completion) through a plain causal forward."""
  g = batch.completion_tokens.shape[0] // batch.prompt_tokens.shape[0]
  toks = jnp.concatenate([jnp.repeat(batch.prompt_tokens, g, 0), batch.completion_tokens], 1)
  mask = jnp.concatenate([jnp.repeat(batch.prompt_mask, g, 0), batch.completion_mask], 1)
  logits, _ = forward(params, CFG, toks, positions_from_mask(mask), mask)
  n = batch.completion_tokens.shape[1]
  logp = jax.nn.log_softmax(logits[:, -n - 1:-1] / temperature, axis=-1)
  return jnp.take_along_axis(logp, batch.completion_tokens[..., None], -1)[..., 0]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prompt_logprobs_and_grads_match_full_sequences(temperature):
  params = init_params(CFG, 0)
  batch = _batch()
  m = jnp.asarray(batch.completion_mask, jnp.float32)
  w = jnp.asarray(np.random.RandomState(1).normal(size=m.shape), jnp.float32)

  def ours(p):
    lp = rl.completion_logprobs(p, CFG, batch.prompt_tokens, batch.prompt_mask,
                                  batch.completion_tokens, batch.completion_mask, temperature,
                                  impl="xla")
    return (lp * m * w).sum(), lp

  def naive(p):
    lp = _naive_logprobs(p, batch, temperature)
    return (lp * m * w).sum(), lp

  (v1, lp1), g1 = jax.value_and_grad(ours, has_aux=True)(params)
  (v2, lp2), g2 = jax.value_and_grad(naive, has_aux=True)(params)
  np.testing.assert_allclose(np.asarray(lp1)[batch.completion_mask == 1],
                             np.asarray(lp2)[batch.completion_mask == 1], atol=2e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)


def test_grpo_loss_same_for_every_logprob_impl():
  params = init_params(CFG, 1)
  batch = _batch(seed=2)
  old = np.asarray(rl.batch_logprobs(params, batch, CFG, impl="naive"))
  batch = batch._replace(old_logp=old - 0.05, ref_logp=old + 0.1)
  results = {}
  for impl in ("naive", "xla", "pallas"):
    cfg = rl.RLConfig(beta=0.04, logprob_impl=impl)
    (loss, _), grads = jax.value_and_grad(rl.grpo_loss, has_aux=True)(params, batch, cfg, CFG)
    results[impl] = (float(loss), grads)
  for impl in ("xla", "pallas"):
    assert results[impl][0] == pytest.approx(results["naive"][0], abs=1e-6)
    for a, b in zip(jax.tree.leaves(results[impl][1]), jax.tree.leaves(results["naive"][1])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("how", rl.AGGREGATIONS)
def test_micro_batched_step_equals_full_batch_objective(how):
  """Two micro-batches with different completion-token counts (13 vs 11) give the gradient
  of the whole batch's objective, computed by hand from full-sequence log-probs."""
  import optax
  from r1jax import steps
  params = init_params(CFG, 0)
  batch = _batch()
  m = jnp.asarray(batch.completion_mask, jnp.float32)
  adv = jnp.asarray(batch.advantages)[:, None]
  cfg = rl.RLConfig(loss_aggregation=how, logprob_impl="xla", beta=0.0)

  def reference(p):  # ratio = 1 at the sampling policy, so d loss = -A * d log p, aggregated
    lp = _naive_logprobs(p, batch, 1.0)
    x = adv * lp * m
    if how == "token-mean":
      return -x.sum() / m.sum()
    if how == "seq-mean-token-mean":
      return -(x.sum(1) / m.sum(1)).mean()
    return -(x.sum(1) / m.shape[1]).mean()

  want = jax.grad(reference)(params)
  tx = optax.sgd(1.0)
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  loss_fn = lambda p, b: rl.grpo_loss(p, b, cfg, CFG)
  step = jax.jit(steps.make_train_step(loss_fn, tx, 2, rl.micro_batch_weight(cfg)))
  new, _ = step(state, jax.tree.map(jnp.asarray, batch))
  got = jax.tree.map(lambda a, b: a - b, params, new.params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-6, rtol=2e-4)
