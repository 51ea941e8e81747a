"""Reward models inside GRPO: RM score = an offline forward of the checkpoint; routing by source."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from r1jax import reward_head as RH
from r1jax import rm_reward
from r1jax.model import PRESETS, forward, init_params


def test_rm_text_scopes():
  p = "Q? <think>"
  assert rm_reward.rm_text(p, " r </think> Final: 5", "<think>", "full") == p + " r </think> Final: 5"
  assert rm_reward.rm_text(p, " r </think> Final: 5", "<think>", "summary") == p + " Final: 5"
  assert rm_reward.rm_text(p, " never closed", "<think>", "summary") == p
  cs = "|special_token|"
  assert rm_reward.rm_text("Q?", " why " + cs + " 5.", cs, "summary") == "Q? 5."


def test_row_weights_route_by_task():
  w = rm_reward.row_weights(["math", "chat", "other"], {"accuracy": 1.0, "reward_model": 0.0},
                            {"chat": {"reward_model": 2.0}, "math": {"accuracy": 1.0,
                                                                     "format": 0.5}})
  np.testing.assert_array_equal(w["accuracy"], [1, 0, 1])
  np.testing.assert_array_equal(w["format"], [0.5, 0, 0])
  np.testing.assert_array_equal(w["reward_model"], [0, 2, 0])
  total = rm_reward.combine({"accuracy": np.asarray([1, 1, 0.0]), "format": np.asarray([1, 0, 1.0]),
                             "reward_model": np.asarray([3, -1.5, 7.0])}, w)
  np.testing.assert_allclose(total, [1.5, -3.0, 0.0])


def test_unknown_routed_reward_is_named():
  from configs import r1_zero
  c = r1_zero.get_config("tiny")
  c.rewards.routing = {"math": {"acuracy": 1.0}}
  with pytest.raises(ValueError, match="routing.math has unknown reward 'acuracy'"):
    rm_reward.from_config(c, None)


MAX_LEN = 512


@pytest.fixture(scope="module")
def rm_checkpoint(tmp_path_factory):
  """A RM workdir as r1jax.reward_model writes it, with seed-123 weights and a random head."""
  from r1jax.checkpoint import Checkpointer
  from r1jax.mesh import make_mesh
  from r1jax.steps import TrainState
  cfg = PRESETS["tiny"]
  head = {"w": jnp.asarray(np.random.default_rng(0).normal(size=cfg.hidden_size), jnp.float32),
          "b": jnp.asarray(0.25, jnp.float32)}
  params = RH.with_head(init_params(cfg, 123), cfg, make_mesh((1, 1, 1)), head)
  d = tmp_path_factory.mktemp("rm")
  ck = Checkpointer(str(d / "checkpoints"))
  ck.save(1, TrainState(jnp.ones((), jnp.int32), params, {"count": jnp.zeros(())}),
          jax.random.key(0), {"step": 1})
  ck.close()
  (d / "config.json").write_text(json.dumps({
      "seed": 0, "model": {"source": "preset", "preset": "tiny"}, "data": {"max_len": MAX_LEN}}))
  return str(d)


def _offline_scores(workdir, texts, pool="last"):
  """Orbax params -> forward (causal, no mask: the right padding after a text cannot reach
  its last position) -> hidden at the text's last position (or the mean of its positions)
  . w + b in numpy."""
  from r1jax.tokenizer import Tokenizer
  cfg = PRESETS["tiny"]
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  params = mngr.restore(1)["state"]["params"]
  mngr.close()
  params["layers"] = {int(k): v for k, v in params["layers"].items()}  # JSON keys come back str
  ids = [Tokenizer.byte_level().encode(t)[-MAX_LEN:] for t in texts]
  toks = np.zeros((len(ids), MAX_LEN), np.int32)
  for i, x in enumerate(ids):
    toks[i, :len(x)] = x
  hidden, _ = jax.jit(lambda p, t: forward(p, cfg, t, jnp.arange(MAX_LEN)[None].repeat(
      len(ids), 0), return_hidden=True))(params, jnp.asarray(toks))
  h = np.asarray(hidden)
  last = (h[np.arange(len(ids)), [len(x) - 1 for x in ids]] if pool == "last" else
          np.stack([h[i, :len(x)].mean(0) for i, x in enumerate(ids)]))
  return last @ np.asarray(params["value_head"]["w"]) + float(params["value_head"]["b"])


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_load_scorer_reads_the_checkpoints_head_pool(rm_checkpoint, tmp_path, pool):
  import shutil
  from r1jax import rm_reward
  from r1jax.mesh import make_mesh
  d = tmp_path / "rm"
  shutil.copytree(rm_checkpoint, d)
  cfg = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps(dict(cfg, head={"pool": pool})))
  prompts, completions = ["Q: 1+2?", "say hi", "x"], [" 3", " hello there", " y z"]
  got = rm_reward.load_scorer(str(d), make_mesh((1, 1, 1)), "full", batch_size=2)(
      prompts, completions)
  want = _offline_scores(str(d), [p + t for p, t in zip(prompts, completions)], pool)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_rm_reward_in_grpo_equals_offline_forward_and_routes(rm_checkpoint, tmp_path):
  from configs import r1_zero
  from r1jax import train
  c = r1_zero.get_config("tiny")
  small = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)
  c.data.source = dict(kind="mixture", seed=0, weights=[1.0, 1.0], sources=[
      dict(kind="reasoning_gym", task="basic_arithmetic", size=16, seed=0, config=small),
      dict(kind="reasoning_gym", task="chain_sum", size=16, seed=0,
           config=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1))])
  c.train.prompts_per_step = 4
  c.train.micro_batch_size = 16
  c.rl.beta = 0.0  # no reference forward: not what this test is about
  c.rewards.reward_model = dict(checkpoint=rm_checkpoint, weight=0.0, scope="full",
                                max_len=MAX_LEN, batch_size=8)
  c.rewards.routing = {"chain_sum": {"reward_model": 1.0}}
  c.train.update(num_steps=1, eval_every=0, checkpoint_every=0, sample_every=1,
                 num_logged_samples=16)
  train.train(c, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "samples.jsonl")]
  assert len(rows) == 16 and {r["task"] for r in rows} == {"basic_arithmetic", "chain_sum"}
  prefill = "<think>"
  want = _offline_scores(rm_checkpoint, [r["prompt"] + r["completion"][len(prefill):]
                                         for r in rows])
  np.testing.assert_allclose([r["reward/reward_model"] for r in rows], want, rtol=1e-4,
                             atol=1e-4)
  assert np.ptp(want) > 0  # the scores differ: a wrong row order would show
  for r, s in zip(rows, want):
    if r["task"] == "chain_sum":
      assert r["reward"] == pytest.approx(s, rel=1e-4, abs=1e-4)
    else:  # the default weights: accuracy 1, format 0.2
      assert r["reward"] == pytest.approx(r["reward/accuracy"] + 0.2 * r["reward/format"])


def test_rejection_sampler_judges_unverifiable_with_the_reward_model(rm_checkpoint, tmp_path):
  """References that do not parse: each sample is kept iff the offline score of its text
  reaches reward_model.threshold (0)."""
  from configs import rejection_sample as cfg_mod
  from r1jax import rejection_sample as rs
  data = tmp_path / "open.jsonl"
  data.write_text("".join(json.dumps({"question": f"Write a line about {w}.", "answer": ""})
                          + "\n" for w in ("rain", "sun")))
  c = cfg_mod.get_config("tiny")
  c.data.source = dict(kind="jsonl", path=str(data), task="open")
  c.filters.update(drop_truncated=False, min_language=0.0, max_paragraph_chars=0,
                   drop_code_in_cot=False, max_repeat_fraction=0.0, dedup=False,
                   max_per_prompt=0)
  c.reward_model.update(checkpoint=rm_checkpoint, scope="full")
  out = str(tmp_path / "sft.jsonl")
  rs.run(c, None, out)
  logs = [json.loads(l) for l in open(out + ".prompts.jsonl")]
  prompt = {l["id"]: l["prompt"] for l in logs}
  dropped = [(l["prompt"], d["completion"], d["drop_reason"]) for l in logs for d in l["dropped"]]
  kept = [(prompt[r["prompt_id"]], r["messages"][-1]["content"], None)
          for r in map(json.loads, open(out))]
  assert len(dropped) + len(kept) == 2 * c.sampling.num_samples
  scores = _offline_scores(rm_checkpoint, [p + t[len("<think>"):] for p, t, _ in dropped + kept])
  want = [None if s >= c.reward_model.threshold else "incorrect" for s in scores]
  assert [why for _, _, why in dropped + kept] == want
  assert None in want and "incorrect" in want  # both verdicts occur
