"""DeepSeek-V3 in our one transformer: multi-head latent attention and sigmoid/bias/group
routing against transformers' DeepseekV3ForCausalLM (import, export), the routing against a
naive per-token loop, the latent KV cache against the full forward, the aux-loss-free bias
update, the presets and the config checks."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_batches import random_batch
from hf_oracle import check_greedy_decode, hf_logits
from r1jax.model import PRESETS, ModelConfig, forward, init_cache, param_shapes
from r1jax.model import hf as hf_lib
from r1jax.model import hf_layout
from r1jax.model.checkpoint_io import load_hf_dir, save_hf_dir
from r1jax.model.moe import moe_mlp, router_summary, update_router_bias

VOCAB, T = 211, 20
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
        "beta_fast": 32, "beta_slow": 1, "mscale": 0.9, "mscale_all_dim": 0.7, "rope_theta": 1e4}


def make_hf_deepseek(seed: int = 0, **over):
  """A small random DeepseekV3ForCausalLM (float32): layer 0 dense, then 8 sigmoid-routed
  experts in 2 groups (1 chosen), 2 per token, one shared expert; random norms, router and
  e_score_correction_bias, so that every mapping and the bias's role are exercised."""
  import torch
  import transformers
  torch.manual_seed(seed)
  kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=24,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
            n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
            routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1,
            kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=12,
            v_head_dim=20, max_position_embeddings=256, rms_norm_eps=1e-5,
            tie_word_embeddings=False, rope_interleave=True)
  kw.update(over)
  model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**kw))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("mlp.gate.weight"):
        p.copy_(torch.randn_like(p))
      elif "norm" in name:
        p.copy_(torch.randn_like(p) * 0.1 + 1.0)
    for layer in model.model.layers[kw["first_k_dense_replace"]:]:
      layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(kw["n_routed_experts"]) * 0.3)
  return model.float().eval()


CASES = {"q_lora": {}, "direct_q_yarn": dict(q_lora_rank=None, rope_parameters=YARN)}


@pytest.fixture(scope="module", params=sorted(CASES))
def dsv3(request, tmp_path_factory):
  """(HF model, its save_pretrained dir, tokens, HF logits, our cfg, our params)."""
  model = make_hf_deepseek(**CASES[request.param])
  d = str(tmp_path_factory.mktemp(request.param) / "hf")
  model.save_pretrained(d)
  cfg, params = load_hf_dir(d)
  tokens = np.random.RandomState(0).randint(0, VOCAB, (2, T))
  return model, d, tokens, hf_logits(model, tokens), cfg, params


def _logits(params, cfg, tokens):
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  return np.asarray(jax.jit(lambda p, t, q: forward(p, cfg, t, q)[0])(params, tokens, pos))


# ----------------------------------------------------------------------------- vs transformers


def test_import_matches_hf(dsv3):
  model, _, tokens, ref, cfg, params = dsv3
  hc = model.config
  assert cfg.is_mla and cfg.scoring_func == "sigmoid" and cfg.moe_layers == (1, 2)
  assert (cfg.q_lora_rank, cfg.kv_lora_rank, cfg.v_head_dim) == (hc.q_lora_rank, 16, 20)
  assert (cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor) == (2, 1, 2.5)
  assert ("q_a" in params["layers"][0]) == (hc.q_lora_rank is not None)
  np.testing.assert_array_equal(  # the bias is imported, not left at its init
      np.asarray(params["layers"][2]["router_bias"]),
      model.model.layers[2].mlp.gate.e_score_correction_bias.numpy())
  ours = _logits(params, cfg, tokens)
  np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)


def test_export_roundtrip_through_transformers(dsv3, tmp_path):
  import transformers
  _, _, tokens, ref, cfg, params = dsv3
  out = str(tmp_path / "export")
  save_hf_dir(params, cfg, out)
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="float32").eval()
  assert type(back).__name__ == "DeepseekV3ForCausalLM"
  np.testing.assert_allclose(hf_logits(back, tokens), ref, atol=2e-4, rtol=1e-4)
  cfg2, params2 = load_hf_dir(out)
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_latent_cache_decoding_equals_full_forward(dsv3):
  """Prefill then one token at a time through the cache (absorbed attention over the
  latent) gives the full forward's logits; the cache holds Rkv + Dr numbers per token.
  (The other model's cache runs in test_sampler_decoding_equals_forward.)"""
  _, _, tokens, _, cfg, params = dsv3
  if cfg.q_lora_rank is None:
    pytest.skip("one model is enough")
  full = _logits(params, cfg, tokens)
  b = tokens.shape[0]
  cache = init_cache(cfg, b, T)
  assert cache.k[0].shape == (b, T, 1, cfg.qk_rope_head_dim)
  assert cache.v[0].shape == (b, T, 1, cfg.kv_lora_rank)
  step = jax.jit(lambda p, t, q, c: forward(p, cfg, t, q, cache=c))
  pos = np.broadcast_to(np.arange(T), tokens.shape)
  got, cache = step(params, tokens[:, :8], pos[:, :8], cache)
  got = [np.asarray(got)]
  for i in range(8, T):
    lg, cache = step(params, tokens[:, i:i + 1], pos[:, i:i + 1], cache)
    got.append(np.asarray(lg))
  np.testing.assert_allclose(np.concatenate(got, 1), full, atol=2e-5, rtol=1e-5)


def test_sampler_decoding_equals_forward(dsv3):
  """The sampler's own decode step (head-major latent cache): static batch for one model,
  continuous slots for the other."""
  *_, cfg, params = dsv3
  prompts = [[5, 9, 3, 1, 7, 2], [11, 4], [8, 8, 6, 1]]
  kw = dict(mode="continuous", num_slots=2, fuse_weights=False) if cfg.q_lora_rank is None else {}
  check_greedy_decode(params, cfg, prompts, n=6, **kw)


def test_bf16_latent_cache_decoding_is_close(dsv3):
  """decode_dtype=bfloat16 (bf16 decode weights and latent cache): the log-probs of the
  tokens it picks are the float32 forward's within bf16 rounding."""
  from r1jax.sampling import SamplingConfig, generate, pad_prompts
  *_, cfg, params = dsv3
  if cfg.q_lora_rank is None:
    pytest.skip("one model is enough")
  toks, mask = pad_prompts([[5, 9, 3, 1, 7, 2], [11, 4]], 0, 6)
  out = generate(params, cfg, jnp.asarray(toks), jnp.asarray(mask), jax.random.key(0),
                 SamplingConfig(max_new_tokens=5, temperature=0.0, decode_dtype="bfloat16"))
  seqs = np.concatenate([toks, np.asarray(out.tokens)], 1)
  m = np.concatenate([mask, np.ones_like(out.tokens)], 1).astype(bool)
  pos = np.asarray(jnp.maximum(jnp.cumsum(m, -1) - 1, 0))
  lg = np.asarray(jax.jit(lambda p, t, q, mm: forward(p, cfg, t, q, mm)[0])(params, seqs, pos, m))
  lsm = np.asarray(jax.nn.log_softmax(lg[:, 5:-1], -1))
  want = np.take_along_axis(lsm, np.asarray(out.tokens)[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(out.logprobs), want, atol=0.1)


def test_aot_decode_program_has_the_latent_cache():
  """r1jax.aot's sampler programs lay the decode cache out as cfg.cache_dims says."""
  from r1jax import mesh as mesh_lib, programs
  from r1jax.sampling import SamplingConfig
  cfg = PRESETS["tiny_mla"]
  mesh = mesh_lib.make_mesh((1, 1, 1))
  with mesh_lib.use_mesh(mesh):
    params = programs.abstract_params(cfg, mesh)
    progs = {p.name: p for p in programs.sampler_programs(params, cfg, mesh, 2, 8,
                                                          SamplingConfig(max_new_tokens=4))}
    decode = progs["decode_step"]
    cache = decode.args[-1]
    assert cache.k[0].shape == (2, 1, cfg.qk_rope_head_dim, 12)  # float32: K transposed
    assert cache.v[0].shape == (2, 1, 12, cfg.kv_lora_rank)
    decode.fn.lower(*decode.args)


# ----------------------------------------------------------------------------- routing


def _naive_routing(x, layer, cfg):
  """Per token: sigmoid scores, the topk_group groups with the best sum of their two best
  biased scores, the k best biased scores inside them, weights = unbiased scores,
  renormalised, times the scaling factor; y = weighted sum of SwiGLU expert outputs."""
  x = np.asarray(x, np.float64)
  w = {n: np.asarray(a, np.float64) for n, a in layer.items()}
  per_group = cfg.num_experts // cfg.n_group
  ys, chosen = [], []
  for tok in x:
    s = 1 / (1 + np.exp(-(tok @ w["router"])))
    biased = s + w["router_bias"]
    groups = [sorted(biased[g * per_group:(g + 1) * per_group])[-2:] for g in range(cfg.n_group)]
    best = np.argsort([-sum(g) for g in groups], kind="stable")[:cfg.topk_group]
    allowed = [e for e in range(cfg.num_experts) if e // per_group in best]
    top = sorted(allowed, key=lambda e: -biased[e])[:cfg.num_experts_per_tok]
    wt = s[top] / s[top].sum() * cfg.routed_scaling_factor
    y = np.zeros_like(tok)
    for e, we in zip(top, wt):
      g, u = tok @ w["experts_gate"][e], tok @ w["experts_up"][e]
      y += we * ((g / (1 + np.exp(-g)) * u) @ w["experts_down"][e])
    ys.append(y)
    chosen.append(sorted(top))
  return np.stack(ys), np.array(chosen)


@pytest.mark.parametrize("n_group,topk_group,k,impl", [(2, 1, 2, "ragged"), (4, 2, 3, "blocks"),
                                                      (1, 1, 2, "blocks")])
def test_sigmoid_group_routing_matches_naive_loop(n_group, topk_group, k, impl):
  cfg = PRESETS["tiny_mla"].replace(n_group=n_group, topk_group=topk_group,
                                    num_experts_per_tok=k)
  rs = np.random.RandomState(n_group)
  d, e, f = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
  layer = {"router": rs.normal(size=(d, e)) / np.sqrt(d), "router_bias": rs.normal(size=e) * 0.3,
           "experts_gate": rs.normal(size=(e, d, f)) / np.sqrt(d),
           "experts_up": rs.normal(size=(e, d, f)) / np.sqrt(d),
           "experts_down": rs.normal(size=(e, f, d)) / np.sqrt(f)}
  layer = {n: a.astype(np.float32) for n, a in layer.items()}
  x = rs.normal(size=(40, d)).astype(np.float32)
  run = jax.jit(lambda x, l: moe_mlp(x, l, cfg, lambda a: a, impl))
  y, probs, experts = run(x, layer)
  want, chosen = _naive_routing(x, layer, cfg)
  np.testing.assert_array_equal(np.sort(np.asarray(experts), -1), chosen)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(y), want, atol=5e-5, rtol=1e-4)
  # The bias only chooses: without it other experts win, and the weights never include it.
  _, _, experts0 = run(x, {**layer, "router_bias": 0 * layer["router_bias"]})
  assert (np.sort(np.asarray(experts0), -1) != chosen).any()


def test_bias_update_rule(dsv3):
  """bias += speed * sign(mean load - load) per MoE layer, from a batch's router counts; the
  bias gets no gradient (it only chooses experts)."""
  _, _, tokens, _, cfg, params = dsv3
  if cfg.q_lora_rank is None:
    pytest.skip("one model is enough")
  cfg = cfg.replace(router_bias_update_speed=0.001)
  pos = np.broadcast_to(np.arange(T), tokens.shape)
  summary = jax.jit(lambda p: forward(p, cfg, tokens, pos, return_router_stats=True)[2])(params)
  new = update_router_bias(params, summary, cfg)
  for row, i in enumerate(cfg.moe_layers):
    counts = np.asarray(summary["counts"][row])
    assert counts.sum() == tokens.size * cfg.num_experts_per_tok
    want = np.where(counts < counts.mean(), 1.0, np.where(counts > counts.mean(), -1.0, 0.0))
    np.testing.assert_allclose(np.asarray(new["layers"][i]["router_bias"]),
                               np.asarray(params["layers"][i]["router_bias"]) + 0.001 * want,
                               rtol=1e-6)
  assert new["layers"][0] is params["layers"][0] and new["embed"] is params["embed"]
  assert router_summary(summary, cfg)["aux_loss"] > 0
  layer = params["layers"][1]
  x = np.random.RandomState(1).normal(size=(16, cfg.hidden_size)).astype(np.float32)
  g = jax.jit(jax.grad(lambda l: jnp.sum(moe_mlp(x, l, cfg, lambda a: a)[0] ** 2)))(layer)
  assert float(jnp.abs(g["router_bias"]).max()) == 0.0
  assert float(jnp.abs(g["router"]).max()) > 0.0


def test_bias_balancing_in_the_train_step(dsv3):
  """Wired into the GRPO train step (moe.balancing_update, moe.decay_mask_for): after one
  AdamW step with weight decay every router bias moved by exactly speed * sign(mean load -
  load) of that step's batch (counts from the old params' forward over prompts once and
  completions, hand rule), not by decay; with speed 0 the biases stay put while the other
  weights move."""
  from r1jax import memory, rl, steps
  from r1jax.model import moe
  _, _, _, _, cfg, params = dsv3
  if cfg.q_lora_rank is None:
    pytest.skip("one model is enough")
  batch = random_batch(cfg.vocab_size, 2, 2, 5, 6, seed=3, pad_prompt=(0, 2),
                       cut_completion=(1, 4))
  gcfg = rl.RLConfig(beta=0.0, router_aux_coef=0.0)
  ocfg = steps.OptimConfig(learning_rate=1e-2, weight_decay=0.5, total_steps=10)

  def one_step(mcfg):
    tx = steps.make_optimizer(ocfg, moe.decay_mask_for(mcfg))
    step = steps.make_train_step(functools.partial(rl.grpo_loss, cfg=gcfg, model_cfg=mcfg),
                                 tx, n_micro=2, micro_weight=rl.micro_batch_weight(gcfg),
                                 post_update=moe.balancing_update(mcfg))
    return jax.jit(step)(memory.init_state(params, tx), batch)

  speed = 0.001
  fast = cfg.replace(router_bias_update_speed=speed)
  _, _, stats = jax.jit(lambda prm: rl.completion_logprobs(
      prm, fast, batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens,
      batch.completion_mask, 1.0, "xla", return_entropy=True, router_stats=True))(params)
  state, metrics = one_step(fast)
  assert "router_counts" not in metrics and float(metrics["router_bias_absmax"]) > 0
  for row, i in enumerate(cfg.moe_layers):
    counts = np.asarray(stats["counts"][row])
    want = np.where(counts < counts.mean(), 1.0, np.where(counts > counts.mean(), -1.0, 0.0))
    np.testing.assert_allclose(np.asarray(state.params["layers"][i]["router_bias"]),
                               np.asarray(params["layers"][i]["router_bias"]) + speed * want,
                               rtol=0, atol=1e-7)
  still = cfg.replace(router_bias_update_speed=0.0)
  assert moe.balancing_update(still) is None
  state, metrics = one_step(still)
  assert "router_bias_absmax" not in metrics
  for i in cfg.moe_layers:
    np.testing.assert_array_equal(np.asarray(state.params["layers"][i]["router_bias"]),
                                  np.asarray(params["layers"][i]["router_bias"]))
  assert not np.allclose(np.asarray(state.params["layers"][1]["router"]),
                         np.asarray(params["layers"][1]["router"]))
  assert moe.decay_mask_for(PRESETS["tiny_moe"]) is None  # softmax routing: no bias


# ----------------------------------------------------------------------------- presets, config


def test_presets():
  cfg = PRESETS["deepseek-v3"]
  n = sum(math.prod(t.shape) for t in hf_layout.param_layout(cfg))
  assert abs(n / 671e9 - 1) < 0.01, n  # 671B without the multi-token-prediction module
  assert cfg.moe_layers == tuple(range(3, 61))
  hf = hf_lib.config_to_hf(cfg)
  assert hf["architectures"] == ["DeepseekV3ForCausalLM"] and hf["n_routed_experts"] == 256
  # The bias update speed is a training setting, not part of HF's config.json.
  assert hf_lib.config_from_hf(hf) == cfg.replace(router_bias_update_speed=0.0)
  with pytest.raises(ValueError, match="quantized checkpoint"):  # FP8 blocks need dequantizing
    hf_lib.config_from_hf(dict(hf, quantization_config={"quant_method": "fp8"}))
  tiny = PRESETS["tiny_mla"].replace(router_bias_update_speed=0.0)
  assert tiny.is_mla and hf_lib.config_from_hf(hf_lib.config_to_hf(tiny)) == tiny
  shapes = param_shapes(tiny)  # our params are exactly the HF tensors' (stacked) shapes
  assert {t.path: t.shape for t in hf_layout.param_layout(tiny)} == {
      (k, *rest): tuple(x.shape) for k, rest, x in _flat(shapes)}


def _flat(tree):
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
    yield keys[0], keys[1:], x


@pytest.mark.parametrize("kw,match", [
    (dict(kv_lora_rank=0), "q_lora_rank=32 needs kv_lora_rank"),
    (dict(qk_rope_head_dim=7), "qk_rope_head_dim must be even"),
    (dict(v_head_dim=0), "v_head_dim must be a positive int"),
    (dict(q_lora_rank=-1), "q_lora_rank must be None or a positive int"),
    (dict(scoring_func="tanh"), "scoring_func='tanh'"),
    (dict(n_group=3), "n_group=3"),
    (dict(topk_group=3), r"topk_group=3 must be in \[1, n_group=2\]"),
    (dict(num_experts_per_tok=5), "num_experts_per_tok=5 exceeds"),
    (dict(first_k_dense_replace=-1), "first_k_dense_replace must be an int >= 0"),
    (dict(routed_scaling_factor=0.0), "routed_scaling_factor must be > 0"),
    (dict(scoring_func="softmax"), "router_bias_update_speed=0.001"),
    (dict(qk_norm=True), "qk_norm=True is not supported with MLA"),
])
def test_bad_configs_are_named(kw, match):
  with pytest.raises(ValueError, match=match):
    PRESETS["tiny_mla"].replace(**kw)


def test_dense_config_rejects_deepseek_fields():
  with pytest.raises(ValueError, match="n_shared_experts=1 needs num_experts > 0"):
    PRESETS["tiny"].replace(n_shared_experts=1)
  with pytest.raises(ValueError, match="kv_lora_rank"):
    ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
                intermediate_size=8, v_head_dim=4)
  with pytest.raises(ValueError, match="yarn is implemented for MLA"):
    PRESETS["tiny"].replace(rope_scaling={"rope_type": "yarn", "factor": 2.0,
                                          "original_max_position_embeddings": 8})
