"""HF checkpoint import / export against transformers' own random models, and the export CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_oracle import hf_logits, make_hf_model
from r1jax.model import hf as hf_lib
from r1jax.model import hf_layout
from r1jax.model.checkpoint_io import (SafetensorsDir, load_hf_dir, model_config_from_dict,
                                       save_hf_dir, write_safetensors_dir)
from r1jax.model.config import ModelConfig
from r1jax.model.transformer import forward, init_params, param_shapes

KINDS = ("llama3", "qwen2", "smollm2")
VOCAB = 211  # hf_oracle's vocab
T = 40  # > original_max_position_embeddings=32 of the llama3 oracle, so rope scaling matters


@pytest.fixture(scope="module")
def tokens():
  return np.random.RandomState(0).randint(0, VOCAB, (2, T))


def _logits(params, cfg, tokens):
  pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  return np.asarray(jax.jit(lambda p, t, q: forward(p, cfg, t, q)[0])(params, tokens, pos))


@pytest.fixture(scope="module", params=KINDS)
def hf_model(request, tmp_path_factory, tokens):
  """(kind, HF model, its save_pretrained dir, HF logits)."""
  model = make_hf_model(request.param)
  d = str(tmp_path_factory.mktemp(request.param) / "hf")
  model.save_pretrained(d)
  return request.param, model, d, hf_logits(model, tokens)


def _assert_same_params(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------- import / export


def test_import_matches_hf(hf_model, tokens):
  kind, _, d, ref = hf_model
  cfg, params = load_hf_dir(d)
  assert cfg.tie_embeddings == (kind != "llama3")
  assert cfg.qkv_bias == (kind == "qwen2")
  assert ("lm_head" in params) == (kind == "llama3")
  if kind == "llama3":
    rs = cfg.rope_scaling_dict
    assert rs["rope_type"] == "llama3" and rs["factor"] == 8.0
    assert rs["original_max_position_embeddings"] == 32 and cfg.rope_theta == 500000.0
  else:
    assert cfg.rope_scaling is None
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(param_shapes(cfg))
  err = np.abs(_logits(params, cfg, tokens) - ref).max()
  assert err <= 1e-4, err


def test_export_roundtrip_through_transformers(hf_model, tokens, tmp_path):
  import transformers
  kind, model, d, ref = hf_model
  cfg, params = load_hf_dir(d)
  out = str(tmp_path / "out")
  files = save_hf_dir(params, cfg, out, tokenizer_dir=d, max_shard_bytes=1e9)
  assert files[:2] == ["config.json", "model.safetensors"] and "generation_config.json" in files
  back = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert type(back).__name__ == type(model).__name__
  assert back.config.tie_word_embeddings == model.config.tie_word_embeddings
  err = np.abs(hf_logits(back, tokens) - ref).max()
  assert err <= 1e-5, err
  # ... and our own loader reads our files back bit-exactly.
  cfg2, params2 = load_hf_dir(out)
  assert cfg2 == cfg
  _assert_same_params(params2, params)


def test_sharded_checkpoint_loads_like_single_file(hf_model, tmp_path):
  kind, model, d, _ = hf_model
  sharded = str(tmp_path / "sharded")
  model.save_pretrained(sharded, max_shard_size="50KB")
  shards = [f for f in os.listdir(sharded) if f.endswith(".safetensors")]
  assert len(shards) > 2 and os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  _assert_same_params(load_hf_dir(sharded)[1], load_hf_dir(d)[1])
  # Our writer's shards too (and transformers reads them).
  cfg, params = load_hf_dir(d)
  ours = str(tmp_path / "ours")
  files = save_hf_dir(params, cfg, ours, max_shard_bytes=60_000)
  assert sum(f.endswith(".safetensors") for f in files) > 2
  with open(os.path.join(ours, "model.safetensors.index.json")) as f:
    index = json.load(f)
  assert set(index["weight_map"]) == {t.hf_name for t in hf_layout.param_layout(cfg)}
  _assert_same_params(load_hf_dir(ours)[1], params)


def test_bf16_checkpoints_and_mixed_precision(tmp_path, tokens):
  import torch
  import transformers
  model = make_hf_model("qwen2")
  ref = hf_logits(model, tokens)
  d = str(tmp_path / "bf16")
  model.to(torch.bfloat16).save_pretrained(d)
  # A bf16 checkpoint loads into fp32 params exactly (bf16 -> fp32 is exact).
  cfg, params = load_hf_dir(d)
  assert params["embed"].dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(params["embed"]),
                                model.model.embed_tokens.weight.detach().float().numpy())
  # bf16 storage + bf16 compute: the forward honours both, logits stay float32 and close.
  cfg16, p16 = load_hf_dir(d, param_dtype="bfloat16", dtype="bfloat16")
  assert cfg16.param_dtype == cfg16.dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
  pos = np.broadcast_to(np.arange(T), tokens.shape)
  hidden, _ = forward(p16, cfg16, tokens, pos, return_hidden=True)
  assert hidden.dtype == jnp.bfloat16
  lg16 = _logits(p16, cfg16, tokens)
  assert lg16.dtype == np.float32
  lg32 = _logits(params, cfg, tokens)
  scale = np.abs(lg32).max()
  err16 = np.abs(lg16 - lg32).max()
  assert 0 < err16 <= 0.02 * scale, (err16, scale)   # really computed in bf16, and close
  assert np.abs(lg32 - ref).max() <= 0.05 * scale    # bf16-rounded weights vs the fp32 model
  # fp32 params + bf16 compute (the usual mixed-precision setting).
  cfg_mp = cfg.replace(dtype="bfloat16")
  err_mp = np.abs(_logits(params, cfg_mp, tokens) - lg32).max()
  assert 0 < err_mp <= 0.02 * scale, (err_mp, scale)
  # Export in bf16: transformers sees a bf16 model with the same weights.
  out = str(tmp_path / "out16")
  save_hf_dir(params, cfg, out, dtype="bfloat16")
  assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto")
  assert back.dtype == torch.bfloat16
  assert torch.equal(back.model.embed_tokens.weight, model.model.embed_tokens.weight)


# ----------------------------------------------------------------------------- config.json


def test_config_formats():
  # transformers 4.x layout (Llama 3.2 style: rope_theta + rope_scaling at top level) ...
  v4 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
        "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 8192, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
        "head_dim": 64, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False}
  # ... and the transformers 5.x layout (nested rope_parameters) give the same config.
  v5 = {k: v for k, v in v4.items() if k not in ("rope_theta", "rope_scaling")}
  v5["rope_parameters"] = dict(v4["rope_scaling"], rope_theta=500000.0)
  a, b = hf_lib.config_from_hf(v4), hf_lib.config_from_hf(v5)
  assert a == b
  from r1jax.model.config import PRESETS
  assert a == PRESETS["llama3.2-1b"]
  # Old "type" key; defaults ("default" rope, untied, Qwen2 biases).
  q = hf_lib.config_from_hf({"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
                             "num_hidden_layers": 1, "num_attention_heads": 4,
                             "intermediate_size": 64, "rope_scaling": {"type": "default"}})
  assert q.qkv_bias and not q.tie_embeddings and q.rope_scaling is None and q.num_kv_heads == 4
  # config_to_hf -> config_from_hf is the identity; overrides apply.
  for cfg in (a, q, PRESETS["qwen2.5-0.5b"]):
    assert hf_lib.config_from_hf(hf_lib.config_to_hf(cfg)) == cfg
  assert hf_lib.config_from_hf(v4, dtype=jnp.bfloat16, remat=True).dtype == "bfloat16"
  # model_config.json (dataclasses.asdict, through JSON) round-trips.
  assert model_config_from_dict(json.loads(json.dumps(dataclasses.asdict(a)))) == a


@pytest.mark.parametrize("patch,match", [
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "GPT2LMHeadModel"),
    ({"architectures": None, "model_type": "gemma"}, "gemma"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "yarn"),
    ({"hidden_act": "gelu"}, "gelu"),
    ({"attention_bias": True}, "o_proj"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True},
     "sliding"),
])
def test_unsupported_configs_are_named(patch, match):
  base = hf_lib.config_to_hf(ModelConfig(vocab_size=64, hidden_size=32, num_layers=1,
                                         num_heads=4, num_kv_heads=2, intermediate_size=64))
  with pytest.raises(ValueError, match=match):
    hf_lib.config_from_hf({**base, **patch})


# ----------------------------------------------------------------------------- errors


def _rewrite(src: str, dst: str, drop=(), add=None, config=None):
  """Copy a single-file HF dir, dropping / adding tensors or patching config.json."""
  os.makedirs(dst)
  cfg = json.load(open(os.path.join(src, "config.json")))
  cfg.update(config or {})
  json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
  with SafetensorsDir(src) as st:
    tensors = {n: st.read(n) for n in st.names() if n not in drop}
  tensors.update(add or {})
  entries = [(n, w.dtype, w.shape) for n, w in sorted(tensors.items())]
  write_safetensors_dir(dst, entries, tensors.__getitem__)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("llama") / "hf")
  make_hf_model("llama3").save_pretrained(d)
  return d


def test_missing_tensor_is_named(llama_dir, tmp_path):
  bad = str(tmp_path / "bad")
  _rewrite(llama_dir, bad, drop=("model.layers.1.mlp.up_proj.weight",))
  with pytest.raises(ValueError, match=r"missing 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
    load_hf_dir(bad)


def test_missing_lm_head_hints_at_tying(llama_dir, tmp_path):
  bad = str(tmp_path / "bad")
  _rewrite(llama_dir, bad, drop=("lm_head.weight",))
  with pytest.raises(ValueError, match="lm_head.weight.*tie_word_embeddings"):
    load_hf_dir(bad)
  cfg, params = load_hf_dir(bad, tie_embeddings=True)  # an override fixes it
  assert "lm_head" not in params


def test_shape_mismatch_and_unexpected_tensors(llama_dir, tmp_path):
  d1 = str(tmp_path / "shape")
  _rewrite(llama_dir, d1, config={"intermediate_size": 128})
  with pytest.raises(ValueError, match=r"gate_proj\.weight: checkpoint \(96, 64\) vs config \(128, 64\)"):
    load_hf_dir(d1)
  d2 = str(tmp_path / "extra")
  extra = {"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32),
           "model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros(8, np.float32)}
  _rewrite(llama_dir, d2, add=extra)
  with pytest.raises(ValueError, match=r"does not use: \['model\.layers\.0\.self_attn\.o_proj\.bias'\]"):
    load_hf_dir(d2)
  _assert_same_params(load_hf_dir(d2, strict=False)[1], load_hf_dir(llama_dir)[1])


def test_unsupported_architecture_dir_and_empty_dir(llama_dir, tmp_path):
  d = str(tmp_path / "arch")
  _rewrite(llama_dir, d, config={"architectures": ["PhiForCausalLM"], "model_type": "phi"})
  with pytest.raises(ValueError, match="PhiForCausalLM"):
    load_hf_dir(d)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_hf_dir(str(empty))
  (empty / "config.json").write_text(open(os.path.join(llama_dir, "config.json")).read())
  with pytest.raises(FileNotFoundError, match="safetensors"):
    load_hf_dir(str(empty))


# ----------------------------------------------------------------------------- slicing


def test_hf_slice_covers_every_shard_layout():
  """Any block of one of our params maps to a block of the HF tensor (incl. inner axes)."""
  cfg = ModelConfig(vocab_size=24, hidden_size=16, num_layers=1, num_heads=4, num_kv_heads=2,
                    intermediate_size=12, head_dim=6, tie_embeddings=False, qkv_bias=True)
  rng = np.random.RandomState(0)
  for t in hf_layout.param_layout(cfg):
    hf_w = rng.normal(size=t.hf_shape).astype(np.float32)
    ours = t.to_ours(hf_w)
    np.testing.assert_array_equal(t.to_hf(ours), hf_w)
    for _ in range(6):
      index = []
      for n in t.shape:
        k = rng.choice([1, 2, 3, n] if n % 6 == 0 else [1, n])
        k = k if n % k == 0 else 1
        i = rng.randint(k)
        index.append(slice(i * n // k, (i + 1) * n // k))
      hf_index, finish = t.hf_slice(tuple(index))
      np.testing.assert_array_equal(finish(hf_w[hf_index]), ours[tuple(index)],
                                    err_msg=f"{t.hf_name} {index}")


# ----------------------------------------------------------------------------- export CLI


def test_export_cli(tmp_path, llama_dir, tokens):
  import orbax.checkpoint as ocp
  import transformers
  cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=48, tie_embeddings=False, qkv_bias=True,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "model_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
  p1, p2 = init_params(cfg, 1), init_params(cfg, 2)
  mngr = ocp.CheckpointManager(str(workdir / "checkpoints"))
  for step, p in ((10, p1), (20, p2)):
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(p)))
  mngr.wait_until_finished()
  mngr.close()
  tok_dir = tmp_path / "tok"
  tok_dir.mkdir()
  (tok_dir / "tokenizer.json").write_text('{"fake": true}')
  (tok_dir / "tokenizer_config.json").write_text("{}")
  (tok_dir / "config.json").write_text(json.dumps({"bos_token_id": 5, "eos_token_id": 7}))
  out = tmp_path / "export"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "r1jax.export", f"--workdir={workdir}",
                      f"--out={out}", "--step=10", f"--tokenizer_dir={tok_dir}",
                      "--max_shard_bytes=40000"], env=env, capture_output=True, text=True,
                     timeout=240)
  assert r.returncode == 0, r.stderr[-4000:]
  names = set(os.listdir(out))
  assert {"config.json", "model.safetensors.index.json", "tokenizer.json",
          "tokenizer_config.json"} <= names, names
  hf_cfg = json.load(open(out / "config.json"))
  assert hf_cfg["architectures"] == ["Qwen2ForCausalLM"] and hf_cfg["eos_token_id"] == 7
  back = transformers.AutoModelForCausalLM.from_pretrained(str(out))
  err = np.abs(hf_logits(back, tokens) - _logits(p1, cfg, tokens)).max()
  assert err <= 1e-4, err
  # A missing step is named.
  r = subprocess.run([sys.executable, "-m", "r1jax.export", f"--workdir={workdir}",
                      f"--out={tmp_path / 'x'}", "--step=15"], env=env, capture_output=True,
                     text=True, timeout=240)
  assert r.returncode != 0 and "step 15" in r.stderr and "[10, 20]" in r.stderr
