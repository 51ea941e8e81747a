"""The padding-free RL step (r1jax/packing.py, r1jax/packed_rl.py) against the padded one.

References: a hand-built packing, today's padded step (`rl.grpo_loss`, `ppo.critic_loss`,
`steps.make_train_step`) on the same batch, and a per-sequence numpy GAE.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import memory, rl, packed_rl, packing, ppo, steps
from r1jax.model import PRESETS, init_params

CFG = PRESETS["tiny"]


def _batch(seed=0, b=3, g=2, p=6, n=7, short_prompt=False):
  """Padded batch: left-padded prompts, completions of uneven length (one empty)."""
  rng = np.random.RandomState(seed)
  prompt = rng.randint(3, CFG.vocab_size, (b, p)).astype(np.int32)
  pmask = np.ones((b, p), np.int32)
  pmask[1, :2] = 0
  pmask[2, :p - 1 if short_prompt else 3] = 0  # a 1-token prompt: segments touch
  prompt[pmask == 0] = 0
  comp = rng.randint(3, CFG.vocab_size, (b * g, n)).astype(np.int32)
  lens = np.resize([n, 3, 1, 5, 2, 0], b * g)
  cmask = (np.arange(n)[None] < lens[:, None]).astype(np.int32)
  comp[cmask == 0] = 0
  adv = rng.normal(size=b * g).astype(np.float32)
  return rl.Batch(prompt, pmask, comp, cmask, adv, None, None)


def _with_logps(batch, params):
  """Old / reference / sampler log-probs from perturbed params (ratios away from 1)."""
  lp = lambda s: np.asarray(rl.batch_logprobs(_perturb(params, s), batch, CFG, impl="xla"))
  m = batch.completion_mask
  old = lp(1) * m
  noise = np.random.RandomState(3).normal(scale=0.05, size=old.shape).astype(np.float32)
  return batch._replace(old_logp=old, ref_logp=lp(2) * m, sampler_logp=(old + noise) * m)


def _perturb(params, seed, scale=0.05):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                   for x, k in zip(leaves, keys)])


def _rel_close(a, b, rtol):
  fa, fb = jax.tree.leaves(a), jax.tree.leaves(b)
  num = np.sqrt(sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2)) for x, y in zip(fa, fb)))
  den = np.sqrt(sum(float(np.sum(np.asarray(x) ** 2)) for x in fa))
  assert num <= rtol * den, (num, den)


def test_pack_hand_built():
  # Prompts [5 6] and [7] (left-padded to 3), G = 2; completions of 3, 1, 2 and 0 tokens.
  prompt = np.array([[0, 5, 6], [0, 0, 7]], np.int32)
  comp = np.array([[10, 11, 12], [13, 0, 0], [14, 15, 0], [0, 0, 0]], np.int32)
  cmask = (comp > 0).astype(np.int32)
  adv = np.array([1.0, -1.0, 0.5, 2.0], np.float32)
  batch = rl.Batch(prompt, (prompt > 0).astype(np.int32), comp, cmask, adv, None, None,
                     sampler_logp=-comp / 10.0)
  pb, layout = packing.pack_batch(batch, row_len=4)
  # Row 0: sample 0 alone (2 + 3 - 1 = 4 inputs). Row 1: samples 1 ([5 6] -> 13) and 2.
  np.testing.assert_array_equal(pb.tokens, [[5, 6, 10, 11], [5, 6, 7, 14]])
  np.testing.assert_array_equal(pb.targets, [[6, 10, 11, 12], [6, 13, 14, 15]])
  np.testing.assert_array_equal(pb.positions, [[0, 1, 2, 3], [0, 1, 0, 1]])
  np.testing.assert_array_equal(pb.segment_ids, [[1, 1, 1, 1], [1, 1, 2, 2]])
  np.testing.assert_array_equal(pb.loss_mask, [[0, 1, 1, 1], [0, 1, 1, 1]])
  np.testing.assert_allclose(pb.advantages, [[0, 1, 1, 1], [0, -1, .5, .5]])
  np.testing.assert_allclose(pb.sampler_logp, [[0, -1, -1.1, -1.2], [0, -1.3, -1.4, -1.5]])
  # seq-mean-token-mean over the 4 samples: 1 / (|o_i| * 4).
  np.testing.assert_allclose(pb.weights, [[0, 1 / 12, 1 / 12, 1 / 12], [0, 1 / 4, 1 / 8, 1 / 8]])
  assert pb.old_logp is None and pb.ref_logp is None
  np.testing.assert_array_equal(packing.unpack(pb.targets, layout), comp)
  # Rows are bucketed: 2 needed, multiples of 4 -> 4 rows (at most one per sample).
  pb4, _ = packing.pack_batch(batch, row_len=4, multiple=4)
  assert pb4.tokens.shape == (4, 4) and not pb4.segment_ids[2:].any()
  assert packing.row_bucket(3, 2, 16) == 4 and packing.row_bucket(9, 1, 6) == 6
  assert [packing.row_bucket(k, 1, 64) for k in (5, 9, 11, 17, 33, 50)] == [5, 10, 12, 20,
                                                                          40, 56]
  with pytest.raises(ValueError, match="train.pack_row_len=3"):
    packing.pack_batch(batch, row_len=3)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, 0)


@pytest.mark.parametrize("how,kind,tis,beta", [
    ("seq-mean-token-mean", "ppo_clip", "none", 0.04),
    ("token-mean", "ppo_clip", "token", 0.04),
    ("seq-mean-token-sum-norm", "dual_clip", "none", 0.0),
    ("seq-mean-token-mean", "gspo", "sequence", 0.1),
    ("token-mean", "cispo", "none", 0.1),
])
def test_packed_loss_and_grads_equal_padded(params, how, kind, tis, beta):
  cfg = rl.RLConfig(loss_aggregation=how, policy_loss=kind, tis=tis, beta=beta,
                        max_completion_len=9, temperature=0.8, logprob_impl="xla",
                        epsilon=0.02)  # a small clip range, so some tokens clip
  batch = _with_logps(_batch(), params)
  pb, _ = packing.pack_batch(batch, 16, 1, how, cfg.max_completion_len)
  (l1, m1), g1 = jax.value_and_grad(rl.grpo_loss, has_aux=True)(params, batch, cfg, CFG)
  (l2, m2), g2 = jax.value_and_grad(packed_rl.loss, has_aux=True)(params, pb, cfg, CFG)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
  _rel_close(g1, g2, 1e-5)
  for k in ("kl", "clip_frac", "entropy", "mismatch/k3"):
    np.testing.assert_allclose(float(m2[k]), float(m1[k]), rtol=1e-5, atol=1e-7)
  if beta:
    assert float(m1["kl"]) > 0
  assert float(m1["clip_frac"]) > 0


def test_packed_logprobs_equal_padded(params):
  batch = _batch(short_prompt=True)
  pb, layout = packing.pack_batch(batch, 12)
  want = np.asarray(rl.batch_logprobs(params, batch, CFG, 0.7, "xla"))
  got = packing.unpack(np.asarray(packed_rl.batch_logprobs(params, pb, CFG, 0.7, "xla")), layout)
  m = batch.completion_mask == 1
  np.testing.assert_allclose(got[m], want[m], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["seq-mean-token-mean", "token-mean"])
def test_micro_batched_packed_update_equals_padded(params, how):
  # Two micro-batches each way: the padded step's weighting vs the packed step's exact shares.
  cfg = rl.RLConfig(loss_aggregation=how, beta=0.04, max_completion_len=9,
                        logprob_impl="xla")
  batch = _with_logps(_batch(b=4, g=2), params)
  pb, _ = packing.pack_batch(batch, 16, 2, how, cfg.max_completion_len)
  tx = optax.sgd(1.0)  # the update is the gradient (Adam's first step is ~sign(gradient))
  padded = steps.make_train_step(functools.partial(rl.grpo_loss, cfg=cfg, model_cfg=CFG), tx,
                                 2, rl.micro_batch_weight(cfg))
  pack = steps.make_train_step(functools.partial(packed_rl.loss, cfg=cfg, model_cfg=CFG,
                                                 n_micro=2), tx, 2)
  s1, m1 = jax.jit(padded)(memory.init_state(params, tx), batch)
  s2, m2 = jax.jit(pack)(memory.init_state(params, tx), pb)
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
  _rel_close(jax.tree.map(lambda a, b: a - b, s1.params, params),
             jax.tree.map(lambda a, b: a - b, s2.params, params), 1e-5)


def _naive_gae(scores, values, mask, kl, beta, gamma, lam):
  """Per sequence, in numpy: rewards at the last token, GAE without bootstrapping past it."""
  adv = np.zeros_like(values)
  for i in range(values.shape[0]):
    n = int(mask[i].sum())
    r = -beta * kl[i, :n]
    if n:
      r[n - 1] += scores[i]
    a = 0.0
    for t in reversed(range(n)):
      nv = values[i, t + 1] if t + 1 < n else 0.0
      a = r[t] + gamma * nv - values[i, t] + gamma * lam * a
      adv[i, t] = a
  ret = adv + values * mask
  valid = mask == 1
  mean, std = adv[valid].mean(), adv[valid].std()
  return (adv - mean) / np.sqrt(std ** 2 + 1e-8) * mask, ret


def test_packed_gae_stops_at_segment_ends():
  # 1-token prompt: sample 4's first loss position follows sample 3's last in the same row.
  batch = _batch(short_prompt=True)
  pb, layout = packing.pack_batch(batch, 40)
  assert pb.tokens.shape[0] == 1  # everything in one row: boundaries inside the row
  rng = np.random.RandomState(5)
  m = batch.completion_mask.astype(np.float32)
  values = rng.normal(size=m.shape).astype(np.float32) * m
  old, ref = rng.normal(size=m.shape) * m, rng.normal(size=m.shape) * m
  scores = rng.normal(size=m.shape[0]).astype(np.float32)
  pcfg = ppo.PPOConfig(gamma=0.9, lam=0.8)
  adv, ret = ppo.ppo_advantages(jnp.asarray(packing.place(scores, layout)),
                                jnp.asarray(packing.place(values, layout)), pb.loss_mask,
                                jnp.asarray(packing.place(old, layout)),
                                jnp.asarray(packing.place(ref, layout)), 0.1, pcfg,
                                jnp.asarray(pb.segment_ids))
  want_adv, want_ret = _naive_gae(scores, values, m, old - ref, 0.1, 0.9, 0.8)
  np.testing.assert_allclose(packing.unpack(np.asarray(adv), layout), want_adv, atol=1e-5)
  np.testing.assert_allclose(packing.unpack(np.asarray(ret), layout), want_ret, atol=1e-5)
  # The padded path gives the same numbers.
  pad_adv, _ = ppo.ppo_advantages(scores, values, m, old, ref, 0.1, pcfg)
  np.testing.assert_allclose(np.asarray(pad_adv), want_adv, atol=1e-5)


def test_packed_critic_loss_and_grads_equal_padded(params):
  batch = _batch()
  pb, layout = packing.pack_batch(batch, 16)
  critic = ppo.init_critic_params(params, CFG)
  critic["head"] = {"w": jnp.linspace(-1, 1, CFG.hidden_size), "b": jnp.float32(0.1)}
  rng = np.random.RandomState(7)
  m = batch.completion_mask.astype(np.float32)
  ret, old_v = rng.normal(size=m.shape) * m, rng.normal(size=m.shape) * 0.1 * m
  pcfg = ppo.PPOConfig(value_clip=0.05)
  cb = ppo.CriticBatch(batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens,
                       batch.completion_mask, ret.astype(np.float32), old_v.astype(np.float32))
  pcb = packed_rl.CriticBatch(pb.tokens, pb.positions, pb.segment_ids, pb.loss_mask,
                              packing.place(ret, layout), packing.place(old_v, layout))
  (l1, m1), g1 = jax.value_and_grad(ppo.critic_loss, has_aux=True)(critic, cb, pcfg, CFG)
  (l2, m2), g2 = jax.value_and_grad(ppo.critic_loss, has_aux=True)(critic, pcb, pcfg, CFG)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
  np.testing.assert_allclose(float(m2["value_clip_frac"]), float(m1["value_clip_frac"]))
  _rel_close(g1, g2, 1e-5)


def test_packing_config_is_checked():
  from configs import r1_zero
  c = r1_zero.get_config("tiny")
  assert packing.from_config(c) is None
  c.train.pack_row_len = 64
  with pytest.raises(ValueError, match="train.pack_row_len=64 is set but train.packing=False"):
    packing.from_config(c)
  c.train.packing = True
  assert packing.from_config(c) == 64
  c.train.pack_row_len = 8  # < max_new_tokens = 16
  with pytest.raises(ValueError, match="train.pack_row_len=8"):
    packing.from_config(c)


def _tiny(**knobs):
  from configs import r1_zero
  c = r1_zero.get_config("tiny")  # continuous sampling (the config's default mode)
  c.unlock()
  c.train.update(num_steps=2, eval_every=0, checkpoint_every=1, sample_every=1)
  c.sampling.max_new_tokens = 48  # room for some EOS: uneven lengths
  c.rewards.weights.cosine = 1.0  # length-shaped scores: non-zero advantages
  for k, v in knobs.items():  # loop knobs in train, algorithm knobs in rl
    (c.train if k in c.train else c.rl)[k] = v
  return c


def _jsonl(path):
  import json
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_tiny_packed_run_equals_padded_and_resumes(tmp_path):
  from r1jax import train as train_lib
  c = _tiny()
  assert c.sampling.mode == "continuous"
  padded = train_lib.train(c, str(tmp_path / "padded"))
  c = _tiny(packing=True, pack_row_len=1024)
  train_lib.validate(c)
  c.train.num_steps = 1
  first = train_lib.train(c, str(tmp_path / "packed"))
  c.train.num_steps = 2
  second = train_lib.train(c, str(tmp_path / "packed"))  # resumes from step 1
  assert [r["step"] for r in first + second] == [1, 2]
  for a, b in zip(padded, first + second):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4)
    np.testing.assert_allclose(b["kl"], a["kl"], rtol=1e-3, atol=1e-7)
    assert 0 < b["packed/fill"] <= 1 and b["packed/rows"] >= 1
  s_pad, s_pack = _jsonl(tmp_path / "padded" / "samples.jsonl"), _jsonl(
      tmp_path / "packed" / "samples.jsonl")
  assert [s["completion"] for s in s_pad] == [s["completion"] for s in s_pack]


def test_tiny_packed_ppo_run(tmp_path):
  from r1jax import train as train_lib
  c = _tiny(packing=True, algorithm="ppo")
  c.ppo.critic_learning_rate = 1e-3
  rows = train_lib.train(c, str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2]
  assert rows[1]["critic/value_mean"] != 0.0 and np.isfinite(rows[1]["loss"])


def test_aot_adds_the_packed_train_step():
  from r1jax import programs
  from r1jax.mesh import make_mesh
  c = _tiny(packing=True)
  progs = {p.name: p for p in programs.rl_programs(c, make_mesh((1, 1, 1)), 16)}
  assert {"train_step", "packed_train_step", "packed_micro_grad"} <= set(progs)
  p = progs["packed_train_step"]
  assert p.args[1].tokens.shape == (8, 64)  # one row per sample, 16 + 48 - 1 -> 64 tokens
  p.fn.lower(*p.args).compile()


def test_packed_moe_loss_equals_padded_without_the_balance_loss():
  # Routing is per token (no token dropped), so the policy loss is the same; the balance
  # loss is not (packed rows route each prompt once per sample), hence coefficient 0 here.
  cfg = PRESETS["tiny_moe"]
  params = init_params(cfg, 0)
  gcfg = rl.RLConfig(router_aux_coef=0.0, beta=0.0, logprob_impl="xla")
  batch = _batch()
  pb, _ = packing.pack_batch(batch, 16, 1, gcfg.loss_aggregation)
  grad = lambda f: jax.jit(jax.value_and_grad(functools.partial(f, cfg=gcfg, model_cfg=cfg),
                                               has_aux=True))
  (l1, m1), g1 = grad(rl.grpo_loss)(params, batch)
  (l2, m2), g2 = grad(packed_rl.loss)(params, pb)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
  _rel_close(g1, g2, 1e-5)
  assert "router_aux_loss" in m2


@pytest.mark.parametrize("how", ["seq-mean-token-mean", "token-mean"])
def test_tool_replies_are_context_not_trained(params, how):
  # A multi-turn rollout's tool replies (Batch.loss_mask 0) are attended but not trained.
  cfg = rl.RLConfig(loss_aggregation=how, beta=0.04, logprob_impl="xla")
  batch = _with_logps(_batch(), params)
  trained = batch.completion_mask.copy()
  trained[0, 2:5] = 0  # a reply inside sample 0's completion
  trained[3, 1:3] = 0
  batch = batch._replace(loss_mask=trained)
  pb, _ = packing.pack_batch(batch, 16, 1, how)
  assert pb.loss_mask.sum() == trained.sum() and (pb.segment_ids > 0).sum() == sum(
      batch.prompt_mask[i // 2].sum() + batch.completion_mask[i].sum() - 1
      for i in range(6) if batch.completion_mask[i].any())
  (l1, _), g1 = jax.value_and_grad(rl.grpo_loss, has_aux=True)(params, batch, cfg, CFG)
  (l2, _), g2 = jax.value_and_grad(packed_rl.loss, has_aux=True)(params, pb, cfg, CFG)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
  _rel_close(g1, g2, 1e-5)
