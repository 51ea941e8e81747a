"""Qwen3 dense (q/k RMSNorm, explicit head_dim) against transformers' Qwen3ForCausalLM: import,
left-padded batches, export back into transformers, presets, and cached decoding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from hf_oracle import check_greedy_decode, hf_logits, make_hf_model
from r1jax.model import PRESETS, forward, positions_from_mask
from r1jax.model import hf as hf_lib
from r1jax.model.checkpoint_io import load_hf_dir, save_hf_dir

VOCAB, T = 211, 24


@pytest.fixture(scope="module")
def tokens():
  return np.random.RandomState(0).randint(0, VOCAB, (2, T))


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory, tokens):
  """(HF model, its save_pretrained dir, HF logits, our cfg, our params)."""
  model = make_hf_model("qwen3")
  d = str(tmp_path_factory.mktemp("qwen3") / "hf")
  model.save_pretrained(d)
  cfg, params = load_hf_dir(d)
  return model, d, hf_logits(model, tokens), cfg, params


def _logits(params, cfg, tokens, mask=None):
  pos = (np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape) if mask is None
         else positions_from_mask(mask))
  return np.asarray(jax.jit(lambda p, t, q, m: forward(p, cfg, t, q, m)[0])(
      params, tokens, pos, mask))


def test_import_matches_hf(qwen3, tokens):
  model, _, ref, cfg, params = qwen3
  assert cfg.qk_norm and not cfg.qkv_bias and cfg.num_experts == 0
  assert cfg.hd == 32 != cfg.hidden_size // cfg.num_heads  # explicit head_dim
  assert cfg.tie_embeddings and "lm_head" not in params
  assert params["layers"][0]["q_norm"].shape == (32,)
  np.testing.assert_array_equal(np.asarray(params["layers"][1]["k_norm"]),
                                model.model.layers[1].self_attn.k_norm.weight.detach().numpy())
  err = np.abs(_logits(params, cfg, tokens) - ref).max()
  assert err <= 1e-4, err


def test_left_padded_batch_matches_unpadded_hf(qwen3, tokens):
  model, _, ref, cfg, params = qwen3
  pad = 7
  toks = tokens.copy()
  toks[1, :pad] = 0
  mask = np.ones_like(toks, dtype=bool)
  mask[1, :pad] = False
  ours = _logits(params, cfg, toks, mask)
  np.testing.assert_allclose(ours[0], ref[0], atol=1e-4, rtol=0)
  alone = hf_logits(model, tokens[1:, pad:])[0]  # the real tokens of row 1, unpadded
  np.testing.assert_allclose(ours[1, pad:], alone, atol=1e-4, rtol=0)


def test_export_roundtrip_through_transformers(qwen3, tokens, tmp_path):
  import transformers
  model, d, ref, cfg, params = qwen3
  out = str(tmp_path / "out")
  save_hf_dir(params, cfg, out, tokenizer_dir=d)
  back = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert type(back).__name__ == "Qwen3ForCausalLM"
  assert back.config.head_dim == 32 and back.config.tie_word_embeddings
  err = np.abs(hf_logits(back, tokens) - ref).max()
  assert err <= 1e-5, err
  cfg2, params2 = load_hf_dir(out)
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cached_decoding_equals_forward(qwen3):
  *_, cfg, params = qwen3
  rs = np.random.RandomState(1)
  prompts = [rs.randint(1, VOCAB, n).tolist() for n in (5, 11, 8)]
  for kw in (dict(), dict(fuse_weights=False, prefill_chunk=4)):
    check_greedy_decode(params, cfg, prompts, **kw)


# Qwen/Qwen3-0.6B's config.json (transformers 4.51 layout).
QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936}


def test_preset_and_config_json():
  cfg = hf_lib.config_from_hf(QWEN3_06B)
  assert cfg == PRESETS["qwen3-0.6b"] and cfg.hd == 128
  for name in ("qwen3-0.6b", "qwen3-1.7b"):
    out = hf_lib.config_to_hf(PRESETS[name])
    assert out["architectures"] == ["Qwen3ForCausalLM"] and out["model_type"] == "qwen3"
    assert hf_lib.config_from_hf(out) == PRESETS[name]


@pytest.mark.parametrize("patch,match", [
    ({"attention_bias": True}, "o_proj"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding_attention"),
    ({"use_sliding_window": True}, "sliding"),
])
def test_unsupported_qwen3_configs_are_named(patch, match):
  with pytest.raises(ValueError, match=match):
    hf_lib.config_from_hf({**QWEN3_06B, **patch})


def test_export_architecture_must_express_qk_norm():
  with pytest.raises(ValueError, match="lacks q/k norm"):
    hf_lib.config_to_hf(PRESETS["qwen3-0.6b"], "LlamaForCausalLM")
  with pytest.raises(ValueError, match="needs q/k norm"):
    hf_lib.config_to_hf(PRESETS["tiny"], "Qwen3ForCausalLM")


# Qwen3 keeps Qwen2.5's ChatML and adds thinking: a template of the constructs Qwen3's own
# uses (a namespace set in a reversed loop, string methods, split on </think>, the
# enable_thinking switch). Qwen3 directories ship theirs in tokenizer_config.json, which
# Tokenizer.from_hf_dir reads; what matters is that it renders as transformers renders it.
QWEN3_STYLE_TEMPLATE = """
{%- set ns = namespace(last_user=messages|length - 1) %}
{%- for message in messages[::-1] %}
  {%- if message.role == "user" and ns.last_user == messages|length - 1 %}
    {%- set ns.last_user = (messages|length - 1) - loop.index0 %}
  {%- endif %}
{%- endfor %}
{%- for message in messages %}
  {%- if message.role == "assistant" %}
    {%- set content = message.content %}
    {%- set reasoning = '' %}
    {%- if '</think>' in content %}
      {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
      {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
    {%- endif %}
    {%- if loop.index0 > ns.last_user and reasoning %}
      {{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') + '<|im_end|>\\n' }}
    {%- else %}
      {{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}
    {%- endif %}
  {%- else %}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
  {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
  {{- '<|im_start|>assistant\\n' }}
  {%- if enable_thinking is defined and enable_thinking is false %}
    {{- '<think>\\n\\n</think>\\n\\n' }}
  {%- endif %}
{%- endif %}"""


def test_qwen3_style_chat_template_renders_as_transformers():
  from transformers.utils.chat_template_utils import render_jinja_template
  from r1jax.tokenizer import Tokenizer
  tok = Tokenizer.byte_level()
  tok.chat_template = QWEN3_STYLE_TEMPLATE
  chats = [
      [{"role": "user", "content": "What is 2+3?"}],
      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
       {"role": "assistant", "content": "<think>\nsay hi\n</think>\n\nHello"},
       {"role": "user", "content": "again"},
       {"role": "assistant", "content": "<think>\nagain\n</think>\n\nHi again"}],
  ]
  for msgs in chats:
    for kw in ({}, {"enable_thinking": False}):
      want = render_jinja_template([msgs], chat_template=QWEN3_STYLE_TEMPLATE,
                                   add_generation_prompt=True, **kw)
      want = want[0] if isinstance(want, tuple) else want
      want = want[0] if isinstance(want, list) else want
      assert tok.apply_chat_template(msgs, **kw) == want
  text = tok.apply_chat_template(chats[1], enable_thinking=False)
  assert "<think>\nagain\n</think>" in text and "say hi" not in text  # older turn stripped
  assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
