"""Reward model: losses and gradients against naive numpy, last-token head, tiny run + resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import reward_head as RH
from r1jax.mesh import make_mesh
from r1jax.model import PRESETS, forward, init_params


def _np_bt(rc, rr, m, coef, w):
  d = rc - rr - m
  per = np.log1p(np.exp(-d)) + coef * (rc + rr) ** 2
  sig = 1 / (1 + np.exp(-d))
  # d/d rc and d/d rr of the weighted mean, by hand.
  g_rc = w * (-(1 - sig) + 2 * coef * (rc + rr)) / w.sum()
  g_rr = w * ((1 - sig) + 2 * coef * (rc + rr)) / w.sum()
  return (per * w).sum() / w.sum(), g_rc, g_rr


@pytest.mark.parametrize("coef", [0.0, 0.05])
def test_bt_loss_and_grad_vs_numpy(coef):
  rng = np.random.default_rng(0)
  rc, rr, m = rng.normal(size=6), rng.normal(size=6), rng.uniform(0, 1, size=6)
  w = np.asarray([1, 1, 1, 1, 0, 1.0])
  want, g_rc, g_rr = _np_bt(rc, rr, m, coef, w)
  f = lambda a, b: RH.bt_loss(a, b, jnp.asarray(m), coef, jnp.asarray(w))
  got = f(jnp.asarray(rc), jnp.asarray(rr))
  grc, grr = jax.grad(f, argnums=(0, 1))(jnp.asarray(rc), jnp.asarray(rr))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(grc, g_rc, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grr, g_rr, rtol=1e-5, atol=1e-7)


def test_orm_loss_vs_numpy():
  r, y = np.asarray([-2.0, 0.3, 1.5]), np.asarray([0.0, 1.0, 1.0])
  p = 1 / (1 + np.exp(-r))
  per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  np.testing.assert_allclose(RH.orm_loss(jnp.asarray(r), jnp.asarray(y)), per.mean(), rtol=1e-6)
  w = np.asarray([3.0, 0.5, 0.0])
  np.testing.assert_allclose(RH.orm_loss(jnp.asarray(r), jnp.asarray(y), jnp.asarray(w)),
                             (3 * per[0] + 0.5 * per[1]) / 3.5, rtol=1e-6)


def test_balanced_class_weights_by_hand():
  # 1 positive, 3 negatives: 4 / (2 * 1) and 4 / (2 * 3); each class then weighs 2 in all.
  np.testing.assert_allclose(RH.CLASS_WEIGHTS["balanced"](np.asarray([1, 0, 0, 0])),
                             [2, 2 / 3, 2 / 3, 2 / 3], rtol=1e-6)
  np.testing.assert_allclose(RH.CLASS_WEIGHTS["balanced"](np.asarray([1, 1])), [1, 1])
  np.testing.assert_allclose(RH.CLASS_WEIGHTS["none"](np.asarray([1, 0, 0])), [1, 1, 1])


def test_orm_batch_weighs_rows_by_class_and_padding():
  from r1jax.rm_objectives import balance, make_batch
  from r1jax.tokenizer import Tokenizer
  items = balance([("a", 1.0, 1.0, None), ("b", 0.0, 1.0, None), ("c", 0.0, 1.0, None)],
                  "orm", "balanced")
  b = make_batch(items, "orm", Tokenizer.byte_level(), 8, 4)
  np.testing.assert_allclose(b["weight"], [3 / 2, 3 / 4, 3 / 4, 0], rtol=1e-6)
  np.testing.assert_array_equal(b["label"], [1, 0, 0, 1])  # the padding row copies item 0


def test_hold_out_keeps_prompts_whole():
  from r1jax.rm_objectives import hold_out
  items = [(f"t{i}", i % 2, 1.0, f"p{i // 3}") for i in range(12)]  # 4 prompts x 3 rows
  held, train = hold_out(items, 4, seed=0)
  assert len(held) == 6 and len(train) == 6  # two whole prompts reach 4 rows
  assert not {x[3] for x in held} & {x[3] for x in train}
  loose = [(f"t{i}", 0, 1.0, None) for i in range(5)]  # no prompt ids: a row split
  held, train = hold_out(loose, 2, seed=0)
  assert len(held) == 2 and sorted(held + train) == sorted(loose)
  held, train = hold_out(items[:3], 2, seed=0)  # one prompt: holding it out leaves nothing
  assert held == [] and len(train) == 3


def test_head_reads_last_non_pad_token():
  cfg = PRESETS["tiny"]
  mesh = make_mesh((1, 1, 1))
  head = {"w": jnp.asarray(np.random.default_rng(1).normal(size=cfg.hidden_size), jnp.float32),
          "b": jnp.asarray(0.5)}
  params = RH.with_head(init_params(cfg, 0), cfg, mesh, head)
  seqs = [[5, 9, 33, 7, 100], [41, 42], [8, 8, 8, 250]]
  L = 8
  left, right = np.zeros((3, L), np.int32), np.zeros((3, L), np.int32)
  lm, rm = np.zeros((3, L), np.int32), np.zeros((3, L), np.int32)
  for i, s in enumerate(seqs):
    left[i, L - len(s):], lm[i, L - len(s):] = s, 1
    right[i, :len(s)], rm[i, :len(s)] = s, 1
  score = jax.jit(RH.scores, static_argnums=1)
  r_left = score(params, cfg, jnp.asarray(left), jnp.asarray(lm))
  r_right = score(params, cfg, jnp.asarray(right), jnp.asarray(rm))
  fwd = jax.jit(lambda p, t: forward(p, cfg, t, jnp.arange(t.shape[1])[None],
                                     return_hidden=True)[0])
  # Reference: each sequence alone, unpadded; the head on its final position, in numpy.
  want = []
  for s in seqs:
    t = jnp.asarray([s])
    h = fwd(params, t)
    want.append(float(np.asarray(h[0, -1]) @ np.asarray(head["w"]) + 0.5))
  np.testing.assert_allclose(r_left, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(r_right, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(RH.last_token_index(jnp.asarray(rm)), [4, 1, 3])
  # pool="mean": the mean of each sequence's hidden states alone, in numpy.
  mean = jax.jit(RH.scores, static_argnums=(1, 4))
  want = [float(np.asarray(fwd(params, jnp.asarray([s]))[0]).mean(0) @ np.asarray(head["w"]) + 0.5)
          for s in seqs]
  np.testing.assert_allclose(mean(params, cfg, jnp.asarray(left), jnp.asarray(lm), "mean"), want,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(mean(params, cfg, jnp.asarray(right), jnp.asarray(rm), "mean"), want,
                             rtol=1e-4, atol=1e-5)


ROWS = [
    {"prompt": "Q: 2+2? ", "chosen": "A: 4", "rejected": "A: 5", "margin": 0.5},
    {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
     "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go"}]},
    {"prompt": "say hi", "chosen": [{"role": "assistant", "content": "hi there"}],
     "rejected": [{"role": "assistant", "content": "no"}]},
    {"prompt": "x", "chosen": "", "rejected": "y"},  # empty: skipped
    {"prompt": "x", "chosen": "same", "rejected": " same "},  # identical: skipped
] + [{"prompt": f"Q{i}: ", "chosen": f"good answer {i}", "rejected": f"bad {i}"}
     for i in range(9)]


def _config(tmp_path, steps=4):
  from configs import reward_model as cfg_mod
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
  c = cfg_mod.get_config("tiny")
  c.data.train.path = str(path)
  c.train.num_steps = steps
  return c


def test_prepare_pairs_layouts():
  from r1jax.rm_objectives import prepare_pairs
  from r1jax.tokenizer import Tokenizer
  pairs, st = prepare_pairs(ROWS[:5], Tokenizer.byte_level())
  assert st == {"rows": 5, "skipped_empty": 1, "skipped_identical": 1}
  assert pairs[0] == ("Q: 2+2? A: 4", "Q: 2+2? A: 5", 0.5, None)
  assert pairs[1][0] == "user: hi\nassistant: hello!\n"
  assert pairs[2][0] == "user: say hi\nassistant: hi there\n" and pairs[2][2] == 0.0


ORM_ROWS = [{"prompt": f"Q{i}: ", "completion": f"{i % 7}", "correct": int(i % 4 == 0),
             "prompt_id": str(i // 2)} for i in range(24)]


def test_tiny_orm_run_reports_balanced_metrics(tmp_path):
  from configs import reward_model as cfg_mod
  from r1jax import reward_model
  path = tmp_path / "orm.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in ORM_ROWS))
  c = cfg_mod.get_config("tiny")
  c.objective, c.loss.class_balance, c.data.num_eval = "orm", "balanced", 6
  c.data.train.path = str(path)
  reward_model.train(c, str(tmp_path / "rm"))
  stats = json.load(open(tmp_path / "rm" / "data_stats.json"))
  evals = [json.loads(l) for l in open(tmp_path / "rm" / "eval.jsonl")]
  pos = stats["eval_positives"]
  assert stats["eval"] == 6 and stats["train_positives"] + pos == 6  # 24 rows, 1 in 4 correct
  for e in evals:
    assert (e["eval_positives"], e["eval_negatives"]) == (pos, 6 - pos)
    assert e["eval_majority_share"] == pytest.approx(max(pos, 6 - pos) / 6)
    assert 0 <= e["eval_balanced_accuracy"] <= 1 and 0 <= e["eval_accuracy"] <= 1
    assert ("eval_auc" in e) == (0 < pos < 6)


def test_class_balance_is_validated():
  from configs import reward_model as cfg_mod
  from r1jax.reward_model import validate
  c = cfg_mod.get_config("tiny")
  c.data.train.path = __file__
  c.loss.class_balance = "uniform"
  with pytest.raises(ValueError, match="loss.class_balance='uniform'"):
    validate(c)
  c.loss.class_balance = "balanced"  # objective "bt": weighs no labels
  with pytest.raises(ValueError, match="objective='bt'"):
    validate(c)
  c.loss.class_balance = "none"
  c.head.pool = "max"
  with pytest.raises(ValueError, match="head.pool='max'"):
    validate(c)


def _params(workdir):
  from r1jax.checkpoint import Checkpointer
  ck = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ck.latest_step()
  out = ck.manager.restore(step)
  ck.close()
  return step, out


def test_tiny_run_and_resume(tmp_path):
  from r1jax import reward_model
  full, part = str(tmp_path / "full"), str(tmp_path / "part")
  rows_full = reward_model.train(_config(tmp_path), full)
  # The interrupted run skips evaluation (it does not touch the training state).
  no_eval = lambda c: c.train.update(eval_every=0) or c
  reward_model.train(no_eval(_config(tmp_path, steps=2)), part)  # "killed" after step 2
  with open(os.path.join(part, "metrics.jsonl"), "a") as f:  # logged, then killed unsaved
    f.write(json.dumps({"step": 3, "loss": -1.0}) + "\n")
  rows_part = reward_model.train(no_eval(_config(tmp_path)), part)  # resumes at step 2
  assert [r["step"] for r in rows_part] == [3, 4]
  logged = [json.loads(l) for l in open(os.path.join(part, "metrics.jsonl"))]
  assert [r["step"] for r in logged] == [1, 2, 3, 4]  # the dead run's step 3 is rewound
  assert logged[2]["loss"] != -1.0
  assert all(r["step_time_s"] > 0 for r in rows_full + rows_part)  # the progress line's s/step
  for a, b in zip(rows_full[2:], rows_part):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
  stats = json.load(open(os.path.join(full, "data_stats.json")))
  assert stats["skipped_empty"] == 1 and stats["skipped_identical"] == 1
  assert stats["train"] + stats["eval"] == len(ROWS) - 2
  evals = [json.loads(l) for l in open(os.path.join(full, "eval.jsonl"))]
  assert [e["step"] for e in evals] == [0, 2, 4]
  assert all(0 <= e["eval_accuracy"] <= 1 for e in evals)
  (s1, a), (s2, b) = _params(full), _params(part)
  assert s1 == s2 == 4
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
               a["state"]["params"], b["state"]["params"])
  assert np.any(np.asarray(a["state"]["params"]["value_head"]["w"]) != 0)
