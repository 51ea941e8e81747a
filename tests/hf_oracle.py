"""Builds small random-weight HF transformers models locally (torch CPU) as parity oracles."""

from __future__ import annotations

import numpy as np


def make_hf_model(kind: str, seed: int = 0, **over):
  import torch
  import transformers
  torch.manual_seed(seed)
  common = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-5)
  common.update(over)
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
  else:
    raise ValueError(kind)
  # Norm weights start at 1 in HF: randomise them so the mapping is really tested.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
  return model.eval()


def hf_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
  import torch
  with torch.no_grad():
    t = torch.tensor(np.asarray(tokens), dtype=torch.long)
    am = None if attention_mask is None else torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    return model(input_ids=t, attention_mask=am).logits.float().numpy()
