"""PPO pieces: clipped value loss and GAE advantages with the KL in the reward, by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import ppo


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
