"""Advantage estimators (RLOO, REINFORCE++, GAE) against hand numbers and Python loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import advantages as adv_lib
from r1jax import rl


def test_rloo_hand_computed():
  # Group (1, 0, 0, 1): for a 1 the others average 1/3 -> 2/3; for a 0 they average 2/3.
  # Group (3, 1, 2) with G=3 is in the second call.
  a = np.asarray(adv_lib.rloo_advantages([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], 4))
  np.testing.assert_allclose(a, [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0], atol=1e-6)
  a = np.asarray(adv_lib.rloo_advantages([3.0, 1.0, 2.0], 3))
  np.testing.assert_allclose(a, [1.5, -1.5, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="group_size=1"):
    adv_lib.rloo_advantages([1.0], 1)


def test_reinforce_pp_hand_computed():
  # Centred per group: (0.5, -0.5), (0, 0), (-1.5, 1.5); batch mean 0,
  # population variance (4 * 0.25 + 2 * 2.25) / 6 = 5/6 -> divide by 0.9128709.
  a = np.asarray(adv_lib.reinforce_pp_advantages([1.0, 0.0, 2.0, 2.0, 0.0, 3.0], 2))
  np.testing.assert_allclose(a, [0.5477226, -0.5477226, 0, 0, -1.6431677, 1.6431677], atol=1e-5)


def test_estimator_dispatch_and_unknown():
  r = [1.0, 0.0, 0.0, 0.0]
  np.testing.assert_allclose(adv_lib.outcome_advantages(r, 4, "rloo"), [1, -1 / 3, -1 / 3, -1 / 3],
                             atol=1e-6)
  np.testing.assert_allclose(adv_lib.outcome_advantages(r, 4, "grpo", eps=0.0),
                             [1.5, -0.5, -0.5, -0.5], atol=1e-6)  # std (ddof 1) = 0.5
  with pytest.raises(ValueError, match="'gae'"):
    adv_lib.outcome_advantages(r, 4, "gae")
  with pytest.raises(ValueError, match="algorithm='gae'"):
    rl.RLConfig(algorithm="gae")


@pytest.mark.parametrize("estimator", ["rloo", "reinforce_pp"])
def test_gradient_with_outcome_advantages(estimator):
  # At ratio 1, d(loss)/d logp_it = -A_i / |o_i| / B (seq-mean-token-mean), A from numpy.
  r = np.array([1.0, 0.0, 0.0, 2.0])
  c = r.reshape(2, 2) - r.reshape(2, 2).mean(1, keepdims=True)
  if estimator == "rloo":
    want_adv = (r.reshape(2, 2) - r.reshape(2, 2)[:, ::-1]).reshape(-1)  # G=2: minus the other
  else:
    want_adv = c.reshape(-1) / c.reshape(-1).std()
  adv = adv_lib.outcome_advantages(r, 2, estimator)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-5)
  mask = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], np.float32)
  logp = jnp.log(jnp.full((4, 3), 0.5))
  cfg = rl.RLConfig(beta=0.0, algorithm=estimator)
  g = jax.grad(lambda lp: rl.grpo_objective(lp, jax.lax.stop_gradient(lp), None, adv,
                                              jnp.asarray(mask), cfg)[0])(logp)
  want = -want_adv[:, None] / mask.sum(1, keepdims=True) / 4 * mask
  np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-7)


def _gae_loop(rewards, values, mask, gamma, lam):
  """Plain Python GAE over each row's valid prefix; the value after the last token is 0."""
  adv = np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    n = int(mask[b].sum())
    last = 0.0
    for t in reversed(range(n)):
      nv = values[b, t + 1] if t + 1 < n else 0.0
      delta = rewards[b, t] + gamma * nv - values[b, t]
      last = delta + gamma * lam * last
      adv[b, t] = last
  return adv, (adv + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_python_loop_with_padding(gamma, lam):
  rng = np.random.default_rng(0)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]],
                  np.float32)
  rewards = rng.normal(size=mask.shape).astype(np.float32)
  values = rng.normal(size=mask.shape).astype(np.float32)
  # Garbage in the padding (huge values / rewards) must not reach any valid position.
  rewards_p = np.where(mask > 0, rewards, 1e3).astype(np.float32)
  values_p = np.where(mask > 0, values, -1e3).astype(np.float32)
  want_adv, want_ret = _gae_loop(rewards * mask, values * mask, mask, gamma, lam)
  adv, ret = adv_lib.gae(jnp.asarray(rewards_p), jnp.asarray(values_p), jnp.asarray(mask),
                         gamma, lam)
  np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-5, atol=1e-5)


def test_gae_hand_numbers():
  # gamma = lam = 1: A_t = (sum of rewards from t) - V_t; episode ends at the last valid token.
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
  rewards = adv_lib.token_rewards(jnp.asarray([1.0, 2.0]), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(rewards), [[0, 0, 1], [0, 2, 0]])
  values = jnp.asarray([[0.5, 0.6, 0.8], [0.1, 0.3, 99.0]])
  adv, ret = adv_lib.gae(rewards, values, jnp.asarray(mask), 1.0, 1.0)
  np.testing.assert_allclose(np.asarray(adv), [[0.5, 0.4, 0.2], [1.9, 1.7, 0.0]], atol=1e-6)
  np.testing.assert_allclose(np.asarray(ret), [[1, 1, 1], [2, 2, 0]], atol=1e-6)
  # lam = 0: one-step TD errors. Row 0: (0 + 0.6 - 0.5, 0 + 0.8 - 0.6, 1 - 0.8).
  adv, _ = adv_lib.gae(rewards, values, jnp.asarray(mask), 1.0, 0.0)
  np.testing.assert_allclose(np.asarray(adv)[0], [0.1, 0.2, 0.2], atol=1e-6)


def test_token_rewards_kl_in_reward():
  mask = np.array([[1, 1, 0]], np.float32)
  kl = jnp.asarray([[0.5, -1.0, 7.0]])
  r = adv_lib.token_rewards(jnp.asarray([1.0]), jnp.asarray(mask), kl, beta=0.1)
  np.testing.assert_allclose(np.asarray(r), [[-0.05, 1.1, 0.0]], atol=1e-6)


def test_whiten_masked():
  x = jnp.asarray([[1.0, 3.0, 100.0]])
  m = jnp.asarray([[1.0, 1.0, 0.0]])
  np.testing.assert_allclose(np.asarray(adv_lib.whiten(x, m)), [[-1.0, 1.0, 0.0]], atol=1e-4)
