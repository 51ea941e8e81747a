"""GRPO advantages, objective and gradient against hand-computed numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import advantages, rl

# Two groups of G=2, completions of length <= 3.
REWARDS = np.array([1.0, 0.0, 0.5, 0.5])
MASK = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], np.float32)
LOGP = np.log(np.array([[0.5, 0.3, 0.9], [0.2, 0.4, 0.1], [0.6, 0.5, 0.5], [0.7, 0.8, 0.5]]))
OLD = np.log(np.array([[0.4, 0.3, 0.9], [0.22, 0.4, 0.2], [0.6, 0.5, 0.5], [0.7, 0.8, 0.5]]))
REF = np.log(np.array([[0.5, 0.2, 0.9], [0.2, 0.5, 0.1], [0.5, 0.5, 0.5], [0.7, 0.6, 0.5]]))


def test_group_advantages_hand_computed():
  # Group 1: rewards (1, 0): mean 0.5, unbiased std sqrt(0.5) -> +-0.5/0.7071 = +-0.70711.
  # Group 2: rewards equal -> 0.
  adv = np.asarray(advantages.group_advantages(REWARDS, 2, eps=0.0))
  np.testing.assert_allclose(adv, [0.70710678, -0.70710678, 0.0, 0.0], atol=1e-6)
  adv = np.asarray(advantages.group_advantages([3.0, 1.0, 2.0, 2.0, 0.0, 4.0], 3, ddof=0, eps=0.0))
  # mean 2, population std sqrt(2/3) = 0.8165
  np.testing.assert_allclose(adv, [1.2247449, -1.2247449, 0.0, 0.0, -1.2247449, 1.2247449],
                             atol=1e-6)
  adv = np.asarray(advantages.group_advantages(REWARDS, 2, norm="none"))
  np.testing.assert_allclose(adv, [0.5, -0.5, 0.0, 0.0])


def test_batch_std_scales_by_the_whole_batch():
  # Rule-reward group (1, 0) and a reward-model group of near-equal scores (0.501, 0.499).
  r = [1.0, 0.0, 0.501, 0.499]
  # batch mean 0.5, unbiased batch std sqrt((0.25 + 0.25 + 1e-6 + 1e-6) / 3) = 0.408249
  std = np.sqrt((0.25 + 0.25 + 2e-6) / 3)
  adv = np.asarray(advantages.group_advantages(r, 2, norm="batch_std", eps=0.0))
  np.testing.assert_allclose(adv, [0.5 / std, -0.5 / std, 0.001 / std, -0.001 / std], rtol=1e-4)
  # Per-group std would make the reward model's 0.002 gap as loud as the rule reward's 1.
  per_group = np.asarray(advantages.group_advantages(r, 2, norm="std", eps=0.0))
  np.testing.assert_allclose(np.abs(per_group), 0.70710678, rtol=1e-3)


def test_constant_groups_get_exactly_zero_advantage():
  # 1.2 is not exact in float32: the group mean differs from the members by rounding,
  # which std-normalisation must not amplify into a spurious signal.
  r = np.array([1.2] * 8 + [0.2] * 7 + [1.2], np.float32)
  adv = np.asarray(advantages.group_advantages(r, 8, eps=1e-6))
  assert (adv[:8] == 0).all()
  assert adv[8:].sum() == pytest.approx(0.0, abs=1e-5)
  np.testing.assert_allclose(adv[15], (1.0 - 1 / 8) / np.std([0.2] * 7 + [1.2], ddof=1), rtol=1e-5)


def test_identity_policy_ratio_one_kl_zero():
  adv = jnp.asarray([1.0, -1.0, 0.5, -0.5])
  loss, m = rl.grpo_objective(jnp.asarray(LOGP), jnp.asarray(LOGP), jnp.asarray(LOGP), adv,
                                jnp.asarray(MASK), rl.RLConfig(beta=0.04))
  assert float(m["kl"]) == 0.0
  assert float(m["clip_frac"]) == 0.0
  np.testing.assert_allclose(float(m["ratio_mean"]), 1.0, atol=1e-7)
  # loss = -mean over sequences of A (ratio 1 everywhere).
  np.testing.assert_allclose(float(loss), -np.mean([1.0, -1.0, 0.5, -0.5]), atol=1e-7)


def _hand_loss_and_grad(adv, eps_lo, eps_hi, beta, how, lmax):
  """Per-token loop: objective value and d(-objective)/d logp, by the formulas."""
  b, n = MASK.shape
  per_tok = np.zeros((b, n))
  d_tok = np.zeros((b, n))
  for i in range(b):
    for t in range(n):
      if not MASK[i, t]:
        continue
      rho = math.exp(LOGP[i, t] - OLD[i, t])
      a = adv[i]
      unclipped, clipped = rho * a, min(max(rho, 1 - eps_lo), 1 + eps_hi) * a
      per_tok[i, t] = min(unclipped, clipped)
      # d/dlogp of min(...): rho*a when the unclipped branch is active, else 0.
      d = rho * a if unclipped <= clipped else 0.0
      if beta:
        x = REF[i, t] - LOGP[i, t]
        per_tok[i, t] -= beta * (math.exp(x) - x - 1)
        d -= beta * (-math.exp(x) + 1)
      d_tok[i, t] = d
  lens = MASK.sum(1)
  if how == "seq-mean-token-mean":
    w = MASK / lens[:, None] / b
  elif how == "token-mean":
    w = MASK / MASK.sum()
  else:
    w = MASK / lmax / b
  return -(per_tok * w).sum(), -(d_tok * w)


@pytest.mark.parametrize("how", rl.AGGREGATIONS)
@pytest.mark.parametrize("beta,eps_hi", [(0.0, None), (0.04, None), (0.04, 0.28)])
def test_objective_and_gradient_match_hand_computation(how, beta, eps_hi):
  adv = np.asarray(advantages.group_advantages(REWARDS, 2))
  adv = adv + np.array([0.0, 0.0, 0.3, -0.3])  # give group 2 non-zero advantages too
  cfg = rl.RLConfig(epsilon=0.2, epsilon_high=eps_hi, beta=beta, loss_aggregation=how,
                        max_completion_len=4)
  f = lambda lp: rl.grpo_objective(lp, jnp.asarray(OLD), jnp.asarray(REF), jnp.asarray(adv),
                                     jnp.asarray(MASK), cfg)[0]
  loss, grad = jax.value_and_grad(f)(jnp.asarray(LOGP, jnp.float32))
  want_loss, want_grad = _hand_loss_and_grad(adv, 0.2, eps_hi or 0.2, beta, how, 4)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-6)


def test_explicit_numbers_seq_mean_token_mean():
  # One group of two sequences, beta = 0, eps = 0.2:
  # seq 0: A=+1, ratios (0.5/0.4=1.25 -> clipped at 1.2, 1.0): tokens 1.2, 1.0 -> mean 1.1
  # seq 1: A=-1, ratios (0.2/0.22=0.909091, 1.0, 0.5 -> min(-0.5, -0.8) = -0.8):
  #        -0.909091, -1, -0.8 -> mean -0.903030
  # J = (1.1 - 0.903030) / 2 = 0.0984848; loss = -J.
  loss, m = rl.grpo_objective(jnp.asarray(LOGP[:2]), jnp.asarray(OLD[:2]), None,
                                jnp.asarray([1.0, -1.0]), jnp.asarray(MASK[:2]),
                                rl.RLConfig(beta=0.0))
  np.testing.assert_allclose(float(loss), -0.0984848, atol=1e-6)
  # Clipped tokens: seq0 t0 (1.25 > 1.2 with A>0) and seq1 t2 (0.5 < 0.8 with A<0): 2 of 5.
  np.testing.assert_allclose(float(m["clip_frac"]), 0.4, atol=1e-7)


def test_config_validation_names_bad_value():
  with pytest.raises(ValueError, match="loss_aggregation='mean'"):
    rl.RLConfig(loss_aggregation="mean")
  with pytest.raises(ValueError, match="beta"):
    rl.RLConfig(beta=-1.0)
