"""Builds small random-weight HF transformers models locally (torch CPU) as parity oracles,
and checks the sampler's cached decoding against the uncached forward."""

from __future__ import annotations

import numpy as np


def make_hf_model(kind: str, seed: int = 0, **over):
  import torch
  import transformers
  torch.manual_seed(seed)
  common = dict(vocab_size=211, hidden_size=64, intermediate_size=96,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-5)
  common.update(over)
  if kind != "qwen3_moe":
    common.setdefault("num_hidden_layers", 2)
  if kind == "llama3":
    cfg = transformers.LlamaConfig(**common, tie_word_embeddings=False, rope_theta=500000.0,
                                   rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 32})
    model = transformers.LlamaForCausalLM(cfg)
  elif kind == "smollm2":
    cfg = transformers.LlamaConfig(**common, tie_word_embeddings=True, rope_theta=100000.0)
    model = transformers.LlamaForCausalLM(cfg)
  elif kind == "qwen2":
    cfg = transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1e6)
    model = transformers.Qwen2ForCausalLM(cfg)
  elif kind == "qwen3":  # explicit head_dim != hidden / heads, as Qwen3's configs have
    cfg = transformers.Qwen3Config(**common, head_dim=32, tie_word_embeddings=True,
                                   rope_theta=1e6)
    model = transformers.Qwen3ForCausalLM(cfg)
  elif kind == "qwen3_moe":  # layer 0 dense (mlp_only_layers), the others 4 experts, top 2
    common.setdefault("num_hidden_layers", 3)
    kw = dict(head_dim=32, tie_word_embeddings=False, rope_theta=1e6, num_experts=4,
              num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
              mlp_only_layers=[0], decoder_sparse_step=1, router_aux_loss_coef=0.01)
    kw.update({k: common.pop(k) for k in list(common) if k in kw})
    cfg = transformers.Qwen3MoeConfig(**common, **kw)
    model = transformers.Qwen3MoeForCausalLM(cfg)
  else:
    raise ValueError(kind)
  # Norm weights start at 1 in HF: randomise them so the mapping is really tested (and the
  # MoE router, which HF may start at zero, so that routing is really exercised).
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("mlp.gate.weight"):
        p.copy_(torch.randn_like(p))
      elif "norm" in name or name.endswith("bias"):
        p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
  return model.eval()


def hf_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
  import torch
  with torch.no_grad():
    t = torch.tensor(np.asarray(tokens), dtype=torch.long)
    am = None if attention_mask is None else torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    return model(input_ids=t, attention_mask=am).logits.float().numpy()


def check_greedy_decode(params, cfg, prompts, n: int = 8, **scfg_kw) -> None:
  """The sampler's cached greedy decoding (prefill + KV-cache decode step) against the
  uncached forward: teacher-forced over prompt + completion, every token the sampler chose
  is the forward's argmax and its log-prob is the forward's."""
  import jax
  import jax.numpy as jnp
  from r1jax.model import forward
  from r1jax.sampling import SamplingConfig, generate, pad_prompts
  toks, mask = pad_prompts(prompts, 0, max(map(len, prompts)))
  out = generate(params, cfg, jnp.asarray(toks), jnp.asarray(mask), jax.random.key(0),
                 SamplingConfig(max_new_tokens=n, temperature=0.0, **scfg_kw))
  picked = np.asarray(out.tokens)
  # One right-padded batch of prompt + completion (causal: padding after a row is unseen).
  length = max(map(len, prompts)) + n
  seqs = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    seqs[i, :len(p) + n] = p + picked[i].tolist()
  logits = np.asarray(jax.jit(lambda p, t: forward(p, cfg, t, jnp.arange(length)[None])[0])(
      params, jnp.asarray(seqs)))
  for i, p in enumerate(prompts):
    lg = logits[i, len(p) - 1:len(p) - 1 + n]  # the logits that chose each completion token
    np.testing.assert_array_equal(picked[i], lg.argmax(-1), err_msg=f"prompt {i}")
    lsm = np.asarray(jax.nn.log_softmax(lg, axis=-1))
    np.testing.assert_allclose(np.asarray(out.logprobs[i]), lsm[np.arange(n), picked[i]],
                               atol=2e-5)
