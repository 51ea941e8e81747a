"""Policy-loss variants (dual-clip, GSPO, CISPO), TIS and the mismatch metrics: values and
gradients against per-token numpy formulas written out independently."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import rl
from r1jax import policy_loss as pl

MASK = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], np.float32)
# Ratios r = p / p_old chosen to hit every branch: 5 and 0.5 (outside the clip range), 1.1.
P = np.array([[0.5, 0.3, 0.9], [0.5, 0.4, 0.1], [0.6, 0.5, 0.5], [0.2, 0.8, 0.5]])
P_OLD = np.array([[0.1, 0.3, 0.9], [0.1, 0.8, 0.2], [0.6, 0.5, 0.5], [0.4, 0.72727273, 0.5]])
ADV = np.array([1.0, -1.0, 0.5, -2.0])


def _grad(cfg, adv=ADV, sampler=None):
  lp, old = jnp.log(jnp.asarray(P)), jnp.log(jnp.asarray(P_OLD))
  f = lambda x: rl.grpo_objective(x, old, None, jnp.asarray(adv), jnp.asarray(MASK), cfg,
                                    sampler)
  (loss, m), g = jax.value_and_grad(f, has_aux=True)(lp)
  return float(loss), np.asarray(g), m


def _seq_mean(x):
  return np.mean([(x[i] * MASK[i]).sum() / MASK[i].sum() for i in range(len(x))])


def test_dual_clip_only_acts_on_negative_advantages():
  c = 3.0
  r = P / P_OLD
  obj, d = np.zeros_like(r), np.zeros_like(r)  # per-token objective and dJ/dlogp
  for i in range(4):
    for t in range(3):
      a, x = ADV[i], r[i, t]
      unclipped, clipped = x * a, np.clip(x, 0.8, 1.2) * a
      obj[i, t], d[i, t] = (unclipped, x * a) if unclipped <= clipped else (clipped, 0.0)
      if a < 0 and obj[i, t] < c * a:  # the dual clip: flat at c * A
        obj[i, t], d[i, t] = c * a, 0.0
  loss, g, m = _grad(rl.RLConfig(beta=0.0, policy_loss="dual_clip", dual_clip_c=c))
  np.testing.assert_allclose(loss, -_seq_mean(obj), rtol=1e-6)
  want = -d * MASK / MASK.sum(1, keepdims=True) / 4
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
  # Row 1 token 0 (r = 5, A = -1): PPO gives -5 with gradient; dual-clip gives -3, none.
  assert g[1, 0] == 0.0
  # Row 0 token 0 (r = 5, A = +1) is PPO-clipped at 1.2 either way: dual-clip leaves A > 0 alone.
  loss_ppo, g_ppo, _ = _grad(rl.RLConfig(beta=0.0))
  np.testing.assert_allclose(g[[0, 2]], g_ppo[[0, 2]], atol=1e-8)
  assert not np.allclose(g[1], g_ppo[1])
  np.testing.assert_allclose(float(m["dual_clip_frac"]), 1 / 8, atol=1e-7)  # 1 of 8 tokens


@pytest.mark.parametrize("kind", ["gspo", "gspo_token"])
def test_gspo_sequence_ratio(kind):
  eps_lo, eps_hi = 0.2, 0.3
  logr = np.log(P / P_OLD) * MASK
  s = np.exp(logr.sum(1) / MASK.sum(1))  # exp(mean log ratio) per sequence
  # Hand check of one: row 3 has ratios 0.5 and 1.1 -> s = sqrt(0.55) = 0.7416.
  np.testing.assert_allclose(s[3], np.sqrt(0.55), rtol=1e-6)
  obj = np.minimum(s * ADV, np.clip(s, 1 - eps_lo, 1 + eps_hi) * ADV)
  active = s * ADV <= np.clip(s, 1 - eps_lo, 1 + eps_hi) * ADV  # gradient flows
  loss, g, m = _grad(rl.RLConfig(beta=0.0, policy_loss=kind, epsilon=eps_lo,
                                     epsilon_high=eps_hi))
  np.testing.assert_allclose(loss, -obj.mean(), rtol=1e-6)
  # d s_i / d logp_it = s_i / |o_i| on valid tokens; the objective is a mean over sequences.
  want = -(active * ADV * s / MASK.sum(1))[:, None] * MASK / 4
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(m["seq_ratio_mean"]),
                             (s[:, None] * MASK).sum() / MASK.sum(), rtol=1e-6)


def test_gspo_token_with_token_advantages():
  adv = np.array([[1.0, -1.0, 0.0], [0.5, 0.5, 0.5], [2.0, 0, 0], [-1.0, 1.0, 0]], np.float32)
  s = np.exp((np.log(P / P_OLD) * MASK).sum(1) / MASK.sum(1))[:, None]
  active = s * adv <= np.clip(s, 0.8, 1.2) * adv
  obj = np.minimum(s * adv, np.clip(s, 0.8, 1.2) * adv)
  loss, g, _ = _grad(rl.RLConfig(beta=0.0, policy_loss="gspo_token",
                                     loss_aggregation="token-mean"), adv)
  np.testing.assert_allclose(loss, -(obj * MASK).sum() / MASK.sum(), rtol=1e-6)
  # s_it = sg(s_i) p_it / sg(p_it): d s_it / d logp_it = s_i, this token only.
  np.testing.assert_allclose(g, -(active * adv * s) * MASK / MASK.sum(), rtol=1e-5, atol=1e-7)


def test_cispo_gradient_is_clipped_weight_times_advantage():
  r = P / P_OLD
  w = np.clip(r, 0.8, 1.28)
  loss, g, m = _grad(rl.RLConfig(beta=0.0, policy_loss="cispo", epsilon_high=0.28,
                                     loss_aggregation="token-mean"))
  np.testing.assert_allclose(g, -(w * ADV[:, None]) * MASK / MASK.sum(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(loss, -(w * ADV[:, None] * MASK).sum() / MASK.sum(), rtol=1e-6)
  # Unlike PPO's clip, the clipped tokens (r = 5, 0.5) keep a gradient.
  assert g[0, 0] != 0 and g[1, 0] != 0 and g[3, 0] != 0
  np.testing.assert_allclose(float(m["clip_frac"]), 5 / 8, atol=1e-7)  # r=5, 5, .5, .5, .5


def test_tis_weights_hand_numbers():
  old = jnp.log(jnp.asarray([[0.5, 0.3, 0.9]]))
  sampler = jnp.log(jnp.asarray([[0.25, 0.6, 0.1]]))
  mask = jnp.asarray([[1.0, 1.0, 0.0]])
  # Ratios 2 (capped at 1.5), 0.5; the padded token is weight 1 (log weight 0).
  np.testing.assert_allclose(np.asarray(pl.tis_weights(old, sampler, mask, "token", 1.5)),
                             [[1.5, 0.5, 1.0]], rtol=1e-6)
  # Sequence: 2 * 0.5 = 1 (under the cap); with cap 0.8 -> 0.8.
  np.testing.assert_allclose(np.asarray(pl.tis_weights(old, sampler, mask, "sequence", 1.5)),
                             [[1.0]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(pl.tis_weights(old, sampler, mask, "sequence", 0.8)),
                             [[0.8]], rtol=1e-6)


def test_tis_scales_the_policy_gradient():
  sampler = np.log(P_OLD) - np.log(np.array([[2.0, 0.5, 1], [1, 1, 1], [3, 1, 1], [1, 1, 1]]))
  w = np.minimum(np.exp(np.log(P_OLD) - sampler), 2.5)  # (2, 0.5, 1, ...), 3 -> 2.5
  _, g0, _ = _grad(rl.RLConfig(beta=0.0))
  _, g1, m = _grad(rl.RLConfig(beta=0.0, tis="token", tis_cap=2.5),
                   sampler=jnp.asarray(sampler, jnp.float32))
  np.testing.assert_allclose(g1, g0 * w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(m["tis_weight_mean"]), (w * MASK).sum() / MASK.sum(),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="sampler"):
    _grad(rl.RLConfig(beta=0.0, tis="token"))


def test_mismatch_metrics_hand_numbers():
  trainer = jnp.log(jnp.asarray([[0.5, 0.2, 0.7]]))
  sampler = jnp.log(jnp.asarray([[0.4, 0.2, 0.1]]))
  m = pl.mismatch_metrics(trainer, sampler, jnp.asarray([[1.0, 1.0, 0.0]]))
  d = np.log(0.5 / 0.4)  # 0.22314; the other valid token matches exactly
  np.testing.assert_allclose(float(m["mismatch/abs_diff_mean"]), d / 2, rtol=1e-5)
  np.testing.assert_allclose(float(m["mismatch/abs_diff_max"]), d, rtol=1e-5)
  np.testing.assert_allclose(float(m["mismatch/k3"]), (1.25 - d - 1) / 2, rtol=1e-4)


@pytest.mark.parametrize("kw,match", [
    (dict(policy_loss="gspo", loss_aggregation="token-mean"), "gspo.*token-mean"),
    (dict(policy_loss="gspo", algorithm="ppo"), "gspo.*ppo"),
    (dict(policy_loss="ppo2"), "policy_loss='ppo2'"),
    (dict(policy_loss="dual_clip", dual_clip_c=0.5), "dual_clip_c"),
    (dict(tis="tok"), "tis='tok'"),
])
def test_bad_combinations_are_named(kw, match):
  with pytest.raises(ValueError, match=match):
    rl.RLConfig(**kw)
