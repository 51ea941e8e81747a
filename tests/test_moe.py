"""Qwen3-MoE: softmax top-k routing against a naive per-token loop (no token dropped), logits,
load-balancing loss and export against transformers' Qwen3MoeForCausalLM, router statistics,
cached decoding, and the config checks."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_batches import random_batch
from hf_oracle import check_greedy_decode, hf_logits, make_hf_model
from r1jax.model import PRESETS, ModelConfig, forward, init_params, positions_from_mask
from r1jax.model import hf as hf_lib
from r1jax.model import hf_layout
from r1jax.model.checkpoint_io import load_hf_dir, model_config_from_dict, save_hf_dir
from r1jax.model.transformer import moe_mlp, param_axes

VOCAB, T = 211, 24


@pytest.fixture(scope="module")
def tokens():
  return np.random.RandomState(0).randint(0, VOCAB, (2, T))


@pytest.fixture(scope="module")
def moe(tmp_path_factory, tokens):
  """(HF model, its save_pretrained dir, HF logits, our cfg, our params)."""
  model = make_hf_model("qwen3_moe")
  d = str(tmp_path_factory.mktemp("qwen3_moe") / "hf")
  model.save_pretrained(d)
  cfg, params = load_hf_dir(d)
  return model, d, hf_logits(model, tokens), cfg, params


# ----------------------------------------------------------------------------- routing


def _naive_moe(x, layer, k, norm_topk):
  """Per token: softmax router, its k most probable experts, the weighted sum of their
  SwiGLU outputs. Returns (y [N, D], chosen expert ids [N, k] in descending probability)."""
  x = np.asarray(x, np.float64)
  w = {n: np.asarray(a, np.float64) for n, a in layer.items()}
  ys, chosen = [], []
  for tok in x:
    logits = tok @ w["router"]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p, kind="stable")[:k]
    weights = p[top] / (p[top].sum() if norm_topk else 1.0)
    y = np.zeros_like(tok)
    for e, we in zip(top, weights):
      g, u = tok @ w["experts_gate"][e], tok @ w["experts_up"][e]
      y += we * ((g / (1 + np.exp(-g)) * u) @ w["experts_down"][e])
    ys.append(y)
    chosen.append(top)
  return np.stack(ys), np.stack(chosen)


def _layer(cfg, seed, skew=0.0):
  rs = np.random.RandomState(seed)
  d, e, f = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
  router = rs.normal(size=(d, e)) / np.sqrt(d)
  router[:, 1] += skew  # with skew (and x >= 0), every token wants expert 1
  return {"router": router.astype(np.float32),
          "experts_gate": (rs.normal(size=(e, d, f)) / np.sqrt(d)).astype(np.float32),
          "experts_up": (rs.normal(size=(e, d, f)) / np.sqrt(d)).astype(np.float32),
          "experts_down": (rs.normal(size=(e, f, d)) / np.sqrt(f)).astype(np.float32)}


@pytest.mark.parametrize("impl", ["ragged", "blocks"])
@pytest.mark.parametrize("norm_topk,k,skew", [(True, 2, 0.0), (False, 3, 0.0), (True, 2, 0.15)])
def test_routing_matches_naive_loop(norm_topk, k, skew, impl):
  cfg = PRESETS["tiny_moe"].replace(num_experts=6, num_experts_per_tok=k,
                                    norm_topk_prob=norm_topk)
  layer = _layer(cfg, 0, skew)
  x = np.random.RandomState(1).normal(size=(50, cfg.hidden_size)).astype(np.float32)
  x = np.abs(x) if skew else x
  y, probs, experts = jax.jit(lambda x, l: moe_mlp(x, l, cfg, lambda a: a, impl))(x, layer)
  want, chosen = _naive_moe(x, layer, k, norm_topk)
  np.testing.assert_array_equal(np.asarray(experts), chosen)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-6)
  # Every token gets all k of its experts' outputs, however unbalanced the load.
  np.testing.assert_allclose(np.asarray(y), want, atol=2e-5, rtol=1e-4)
  if skew:
    assert (chosen == 1).any(-1).all()  # one expert takes every token: nothing dropped


def test_stacked_expert_layout_slices_per_expert():
  """A device shard of a stacked expert param (any block of [E, ...]) is read expert by
  expert from the per-expert HF tensors, as load_hf_dir's callback does."""
  cfg = PRESETS["tiny_moe"].replace(hidden_size=16, moe_intermediate_size=12, num_heads=2,
                                    num_kv_heads=1, intermediate_size=8)
  rs = np.random.RandomState(0)
  stacked = [t for t in hf_layout.param_layout(cfg) if t.experts]
  assert len(stacked) == 3 * len(cfg.moe_layers)
  for t in stacked:
    assert t.hf_names[3] == t.hf_name.format(e=3) and ".mlp.experts.3." in t.hf_names[3]
    hf_w = rs.normal(size=(t.experts, *t.hf_shape)).astype(np.float32)
    ours = t.to_ours(hf_w)
    assert ours.shape == t.shape
    np.testing.assert_array_equal(t.to_hf(ours), hf_w)
    for index in ((slice(1, 3), slice(0, 8), slice(6, 12)), (slice(0, 4), slice(8, 16))):
      inner = t.expert_layout
      block = np.stack([inner.hf_slice(index[1:])[1](hf_w[e][inner.hf_slice(index[1:])[0]])
                        for e in range(index[0].start, index[0].stop)])
      np.testing.assert_array_equal(block, ours[index])


def test_grouped_matmul_impls_have_the_same_gradients():
  cfg = PRESETS["tiny_moe"].replace(num_experts=6, num_experts_per_tok=2)
  layer = _layer(cfg, 5)
  x = np.random.RandomState(6).normal(size=(37, cfg.hidden_size)).astype(np.float32)
  grads = [jax.jit(jax.grad(lambda l, x: jnp.sum(jnp.sin(moe_mlp(x, l, cfg, lambda a: a, impl)[0])),
                            argnums=(0, 1)))(layer, x) for impl in ("ragged", "blocks")]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  with pytest.raises(ValueError, match="moe impl='dense'"):
    moe_mlp(x, layer, cfg, lambda a: a, "dense")


# ----------------------------------------------------------------------------- vs transformers


def test_import_matches_hf(moe, tokens):
  model, _, ref, cfg, params = moe
  assert cfg.num_experts == 4 and cfg.num_experts_per_tok == 2 and cfg.norm_topk_prob
  assert cfg.moe_layers == (1, 2) and cfg.mlp_only_layers == (0,) and cfg.qk_norm
  assert cfg.router_aux_loss_coef == 0.01 and not cfg.tie_embeddings
  assert "gate" in params["layers"][0] and "router" not in params["layers"][0]
  assert params["layers"][1]["experts_gate"].shape == (4, 64, 32)
  np.testing.assert_array_equal(  # HF [E, 2F, D] gate_up: gate is the first F rows
      np.asarray(params["layers"][2]["experts_up"][3]),
      model.model.layers[2].mlp.experts.gate_up_proj[3, 32:].detach().numpy().T)
  assert param_axes(cfg)["layers"][1]["experts_down"] == ("expert", "mlp", "embed")
  pos = np.broadcast_to(np.arange(T), tokens.shape)
  ours = np.asarray(jax.jit(lambda p, t, q: forward(p, cfg, t, q)[0])(params, tokens, pos))
  err = np.abs(ours - ref).max()
  assert err <= 1e-4, err


def test_padded_batch_logits_aux_loss_and_load_match_hf(moe, tokens):
  """A left-padded batch: logits at real tokens, and the load-balancing loss over real
  tokens only, as transformers computes them (it is given the same positions)."""
  import torch
  model, _, _, cfg, params = moe
  pad = 5
  mask = np.ones(tokens.shape, bool)
  mask[1, :pad] = False
  pos = np.asarray(positions_from_mask(mask))
  logits, _, stats = jax.jit(lambda p, t, q, m: forward(p, cfg, t, q, m,
                                                         return_router_stats=True))(
      params, tokens, pos, mask)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(int)),
                position_ids=torch.tensor(pos), output_router_logits=True)
  real = mask[..., None]
  np.testing.assert_allclose(np.where(real, np.asarray(logits), 0),
                             np.where(real, out.logits.numpy(), 0), atol=1e-4, rtol=0)
  np.testing.assert_allclose(float(stats["aux_loss"]), float(out.aux_loss), rtol=1e-5)
  # expert_load: each MoE layer's share of routed (real token, slot) pairs, from HF's router.
  load = np.asarray(stats["expert_load"])
  assert load.shape == (2, 4)
  flat = mask.reshape(-1)
  assert len(out.router_logits) == 2  # the MoE layers' (layer 0 is dense)
  for row, router_logits in zip(load, out.router_logits):
    top = torch.topk(router_logits, 2, dim=-1).indices.numpy()[flat]
    np.testing.assert_allclose(row, np.bincount(top.reshape(-1), minlength=4) / top.size,
                               atol=1e-6)


def test_export_roundtrip_through_transformers(moe, tokens, tmp_path):
  import transformers
  model, d, ref, cfg, params = moe
  out = str(tmp_path / "out")
  files = save_hf_dir(params, cfg, out, max_shard_bytes=60_000)
  assert sum(f.endswith(".safetensors") for f in files) > 1
  back = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert type(back).__name__ == "Qwen3MoeForCausalLM"
  assert back.config.mlp_only_layers == [0] and back.config.num_experts == 4
  err = np.abs(hf_logits(back, tokens) - ref).max()
  assert err <= 1e-5, err
  cfg2, params2 = load_hf_dir(out)
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cached_decoding_equals_forward(moe):
  *_, cfg, params = moe
  rs = np.random.RandomState(2)
  prompts = [rs.randint(1, VOCAB, n).tolist() for n in (6, 10, 3)]
  check_greedy_decode(params, cfg, prompts, prefill_chunk=4)


# ----------------------------------------------------------------------------- training side


def test_aux_loss_trains_the_router_and_remat_agrees():
  cfg = PRESETS["tiny_moe"]
  params = init_params(cfg, 0)
  toks = np.random.RandomState(3).randint(0, cfg.vocab_size, (2, 16))
  pos = np.broadcast_to(np.arange(16), toks.shape)

  def loss(p, w_lm, cfg):
    logits, _, stats = forward(p, cfg, toks, pos, return_router_stats=True)
    lm = -jnp.mean(jax.nn.log_softmax(logits)[..., 0])
    return w_lm * lm + cfg.router_aux_loss_coef * stats["aux_loss"], stats

  step = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
  (l1, s1), g1 = step(params, 1.0, cfg)
  (l2, _), g2 = step(params, 1.0, cfg.replace(remat=True))
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(np.asarray(s1["expert_load"]).sum(-1), 1.0, atol=1e-6)
  assert float(s1["aux_loss"]) >= 1.0 - 1e-6  # E * sum f*P >= 1, equal when balanced
  # The aux term alone reaches every router (through the mean probabilities P).
  _, g_aux = step(params, 0.0, cfg)
  for i in cfg.moe_layers:
    assert np.abs(np.asarray(g_aux["layers"][i]["router"])).max() > 0
    assert np.abs(np.asarray(g1["layers"][i]["experts_down"])).max() > 0


def test_dense_models_are_unchanged_by_the_stats_flag():
  cfg = PRESETS["tiny"]
  params = init_params(cfg, 0)
  toks = np.arange(8)[None]
  out = forward(params, cfg, toks, toks)
  assert len(out) == 2
  logits, _, stats = forward(params, cfg, toks, toks, return_router_stats=True)
  np.testing.assert_array_equal(logits, out[0])
  assert float(stats["aux_loss"]) == 0.0 and stats["expert_load"].shape == (0, 0)


# ----------------------------------------------------------------------------- configs


# Qwen/Qwen3-30B-A3B's config.json (the fields that matter).
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "decoder_sparse_step": 1,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 6144,
    "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [],
    "model_type": "qwen3_moe", "moe_intermediate_size": 768, "norm_topk_prob": True,
    "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001, "sliding_window": None, "tie_word_embeddings": False,
    "use_sliding_window": False, "vocab_size": 151936}


def test_preset_and_config_json():
  cfg = hf_lib.config_from_hf(QWEN3_30B_A3B)
  assert cfg == PRESETS["qwen3-30b-a3b"] and len(cfg.moe_layers) == 48
  for c in (cfg, PRESETS["tiny_moe"]):
    assert hf_lib.config_from_hf(hf_lib.config_to_hf(c)) == c
  # transformers 5 writes num_local_experts; decoder_sparse_step picks every 2nd layer.
  alt = {k: v for k, v in QWEN3_30B_A3B.items() if k != "num_experts"}
  alt.update(num_local_experts=16, decoder_sparse_step=2, mlp_only_layers=[3])
  c2 = hf_lib.config_from_hf(alt)
  assert c2.num_experts == 16 and c2.moe_layers == tuple(range(1, 48, 2))[:1] + tuple(
      range(5, 48, 2))
  # model_config.json (JSON turns mlp_only_layers into a list) round-trips.
  assert model_config_from_dict(json.loads(json.dumps(dataclasses.asdict(c2)))) == c2
  with pytest.raises(ValueError, match="Qwen3MoeForCausalLM"):
    hf_lib.config_to_hf(cfg, "Qwen3ForCausalLM")
  with pytest.raises(ValueError, match="shared"):
    hf_lib.config_from_hf({**QWEN3_30B_A3B, "shared_expert_intermediate_size": 64})


@pytest.mark.parametrize("kw,match", [
    (dict(num_experts_per_tok=2), "num_experts_per_tok=2 needs num_experts"),
    (dict(router_aux_loss_coef=0.1), "router_aux_loss_coef"),
    (dict(num_experts=4, num_experts_per_tok=5, moe_intermediate_size=8), r"\[1, num_experts=4\]"),
    (dict(num_experts=4, num_experts_per_tok=2), "moe_intermediate_size"),
    (dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8, mlp_only_layers=[2]),
     "mlp_only_layers"),
])
def test_bad_moe_configs_are_named(kw, match):
  with pytest.raises(ValueError, match=match):
    ModelConfig(vocab_size=8, hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=1,
                intermediate_size=8, **kw)


# ----------------------------------------------------------------------------- GRPO


def test_grpo_loss_adds_the_weighted_aux_loss():
  from r1jax import rl
  cfg = PRESETS["tiny_moe"]
  params = init_params(cfg, 1)
  batch = random_batch(cfg.vocab_size, 2, 2, 6, 5, seed=4, pad_prompt=(1, 2),
                       cut_completion=(0, 3))
  loss = jax.jit(rl.grpo_loss, static_argnums=(2, 3))
  l0, m0 = loss(params, batch, rl.RLConfig(beta=0.0, router_aux_coef=0.0), cfg)
  l1, m1 = loss(params, batch, rl.RLConfig(beta=0.0, router_aux_coef=0.5), cfg)
  np.testing.assert_allclose(float(l1) - float(l0), 0.5 * float(m0["router_aux_loss"]),
                             rtol=1e-5)
  assert float(m0["router_aux_loss"]) >= 1.0 - 1e-6
  assert float(m0["expert_load_min"]) <= 1 / cfg.num_experts <= float(m0["expert_load_max"])
  assert rl.RLConfig().aux_coef(cfg) == cfg.router_aux_loss_coef == 0.001
  with pytest.raises(ValueError, match="router_aux_coef=0.5 needs a mixture-of-experts"):
    rl.RLConfig(router_aux_coef=0.5).aux_coef(PRESETS["tiny"])


@pytest.mark.parametrize("router_replay", [False, True])
def test_tiny_moe_grpo_run_trains(tmp_path, router_replay):
  """2 steps, then resumed from its checkpoint for a 3rd; with router replay
  (tests/test_router_replay.py) and a bf16 sampler, the sampler/trainer log-prob gap is
  bf16 rounding only (no token changes experts)."""
  import os
  from configs import r1_zero
  from r1jax import train as train_lib
  c = r1_zero.get_config("tiny_moe")
  c.unlock()
  c.train.num_steps, c.train.eval_every, c.train.eval_at_start = 2, 0, False
  c.train.checkpoint_every, c.train.sample_every = 2, 0
  if router_replay:
    c.rl.router_replay, c.sampling.decode_dtype = True, "bfloat16"
  rows = train_lib.train(c, str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    assert np.isfinite(r["loss"]) and r["nonfinite_skipped"] == 0 and r["grad_norm"] > 0
    assert r["router_aux_loss"] >= 1.0 - 1e-6
    assert 0 < r["expert_load_min"] <= 0.25 <= r["expert_load_max"] < 1
    assert not router_replay or r["mismatch/abs_diff_max"] < 0.01
  with open(os.path.join(tmp_path, "model_config.json")) as f:
    assert json.load(f)["num_experts"] == 4
  c.train.num_steps = 3  # resumes at step 2 (params, optimizer, RNG, data) and runs one more
  rows = train_lib.train(c, str(tmp_path))
  assert [r["step"] for r in rows] == [3] and np.isfinite(rows[0]["loss"])
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
