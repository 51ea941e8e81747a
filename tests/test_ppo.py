"""PPO pieces: clipped value loss and GAE advantages with the KL in the reward, by hand;
a layer-pruned critic's values against a plain forward of the blocks it should keep."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import rl, ppo, steps
from r1jax.mesh import make_mesh
from r1jax.model import PRESETS, forward, init_params, positions_from_mask


def test_value_clipping_hand_numbers():
  # t0: V=1.5, V_old=1.0, R=2: unclipped 0.25, clipped (1.2 - 2)^2 = 0.64 wins (no gradient).
  # t1: V=2.0, V_old=1.0, R=1: unclipped 1.0 wins over (1.2 - 1)^2 = 0.04: gradient V - R.
  # t2: padding. loss = 0.5 * (0.64 + 1.0) / 2 = 0.41; d/dV = (0, (2 - 1) / 2, 0).
  v = jnp.asarray([[1.5, 2.0, 7.0]])
  old, ret, mask = jnp.asarray([[1.0, 1.0, 0.0]]), jnp.asarray([[2.0, 1.0, 0.0]]), \
      jnp.asarray([[1.0, 1.0, 0.0]])
  (loss, m), g = jax.value_and_grad(ppo.value_loss, has_aux=True)(v, old, ret, mask, 0.2)
  np.testing.assert_allclose(float(loss), 0.41, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g), [[0.0, 0.5, 0.0]], atol=1e-7)
  np.testing.assert_allclose(float(m["value_clip_frac"]), 0.5)
  # Without clipping: 0.5 * (0.25 + 1.0) / 2, gradient (V - R) / 2.
  (loss, _), g = jax.value_and_grad(ppo.value_loss, has_aux=True)(v, old, ret, mask, 0.0)
  np.testing.assert_allclose(float(loss), 0.3125, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g), [[-0.25, 0.5, 0.0]], atol=1e-7)


def test_ppo_advantages_kl_in_reward_vs_loop():
  rng = np.random.default_rng(1)
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
  scores = np.array([1.0, -0.5], np.float32)
  vals = rng.normal(size=mask.shape).astype(np.float32)
  old = np.log(rng.uniform(0.1, 1, size=mask.shape)).astype(np.float32)
  ref = np.log(rng.uniform(0.1, 1, size=mask.shape)).astype(np.float32)
  beta, gamma, lam = 0.1, 1.0, 0.9
  want = np.zeros_like(vals)
  for b in range(2):
    n = int(mask[b].sum())
    a = 0.0
    for t in reversed(range(n)):
      r = -beta * (old[b, t] - ref[b, t]) + (scores[b] if t == n - 1 else 0.0)
      nv = vals[b, t + 1] if t + 1 < n else 0.0
      a = r + gamma * nv - vals[b, t] + gamma * lam * a
      want[b, t] = a
  ret_want = (want + vals) * mask
  valid = want[mask > 0]
  white = (want - valid.mean()) / valid.std() * mask
  cfg = ppo.PPOConfig(gamma=gamma, lam=lam)
  adv, ret = ppo.ppo_advantages(jnp.asarray(scores), jnp.asarray(vals), jnp.asarray(mask),
                                jnp.asarray(old), jnp.asarray(ref), beta, cfg)
  np.testing.assert_allclose(np.asarray(ret), ret_want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(adv), white, rtol=1e-4, atol=1e-4)
  # KL in the loss: the reward is the score alone.
  cfg = ppo.PPOConfig(gamma=gamma, lam=lam, kl_in="loss", whiten_advantages=False)
  adv, _ = ppo.ppo_advantages(jnp.asarray(scores), jnp.asarray(vals), jnp.asarray(mask),
                              jnp.asarray(old), jnp.asarray(ref), beta, cfg)
  np.testing.assert_allclose(float(adv[1, 1]), -0.5 - vals[1, 1], rtol=1e-5)


def test_bad_ppo_config_is_named():
  with pytest.raises(ValueError, match="kl_in='both'"):
    ppo.PPOConfig(kl_in="both")
  with pytest.raises(ValueError, match="ppo.lam=1.5"):
    ppo.PPOConfig(lam=1.5)


def test_pruned_policy_critic_values_vs_plain_forward():
  # A 4-block policy; critic_model=dict(source="policy", prune_every=2) keeps blocks 0 and 2.
  cfg = PRESETS["tiny"].replace(num_layers=4)
  params = init_params(cfg, 0)
  mesh = make_mesh((1, 1, 1))
  ccfg, cparams = ppo.load_critic_model(dict(source="policy", prune_every=2), params, cfg, mesh)
  state, critic = ppo.make_critic(cparams, ccfg, ppo.PPOConfig(), steps.OptimConfig(), 1, mesh)
  assert ccfg.num_layers == 2 and len(state.params["model"]["layers"]) == 2
  rng = np.random.default_rng(0)
  w, b = rng.normal(size=cfg.hidden_size).astype(np.float32), np.float32(0.3)
  head = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
  # Two prompts (one left-padded), three completions each, some finished early.
  g, p, n = 3, 6, 5
  prompt = rng.integers(3, cfg.vocab_size, (2, p)).astype(np.int32)
  pmask = np.ones((2, p), np.int32)
  pmask[1, :2], prompt[1, :2] = 0, 0
  comp = rng.integers(3, cfg.vocab_size, (2 * g, n)).astype(np.int32)
  cmask = np.ones((2 * g, n), np.int32)
  cmask[2, 3:], cmask[4, 1:] = 0, 0
  comp[cmask == 0] = 0
  batch = rl.Batch(prompt, pmask, comp, cmask, np.zeros(2 * g, np.float32), None, None)
  got = np.asarray(critic.values(dict(state.params, head=head), batch))
  # Reference: blocks 0 and 2 of the policy picked by hand, each row's whole sequence through
  # one plain causal forward; V(t) = h(state before token t) . w + b.
  ref = dict(params, layers={0: params["layers"][0], 1: params["layers"][2]})
  toks = np.concatenate([np.repeat(prompt, g, 0), comp], 1)
  mask = np.concatenate([np.repeat(pmask, g, 0), cmask], 1)
  h, _ = forward(ref, cfg.replace(num_layers=2), jnp.asarray(toks),
                 positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask), return_hidden=True)
  want = np.asarray(h)[:, p - 1:p + n - 1] @ w + b
  np.testing.assert_allclose(got[cmask == 1], want[cmask == 1], atol=1e-4)
