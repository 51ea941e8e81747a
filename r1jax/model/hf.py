"""HF transformers config.json <-> our ModelConfig: supported architectures and fields.

`check_supported` names whatever in a config.json this implementation cannot run;
`config_from_hf` / `config_to_hf` convert (transformers 4.x and 5.x layouts). The
per-tensor layout of the weights is in `r1jax.model.hf_layout`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import jax.numpy as jnp

from r1jax.model.config import ModelConfig

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM",
                           "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "DeepseekV3ForCausalLM")
MODEL_TYPES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
               "MistralForCausalLM": "mistral", "Qwen3ForCausalLM": "qwen3",
               "Qwen3MoeForCausalLM": "qwen3_moe", "DeepseekV3ForCausalLM": "deepseek_v3"}
SUPPORTED_ROPE_TYPES = ("default", "llama3", "yarn")
ROPE_KEYS = {"llama3": ("factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings"),
             "yarn": ("factor", "original_max_position_embeddings")}
YARN_OPTIONAL = ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor",
                 "truncate")
# DeepSeek-V3 fields copied both ways between config.json and ModelConfig (same names).
DEEPSEEK_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                   "v_head_dim", "n_group", "topk_group", "routed_scaling_factor",
                   "n_shared_experts", "first_k_dense_replace", "norm_topk_prob",
                   "rope_interleave", "num_experts_per_tok", "moe_intermediate_size")
# Fields that are written to config.json and copied from a base config on export.
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _rope_fields(hf: Mapping[str, Any]) -> tuple[float, dict | None]:
  """(rope_theta, llama3 rope_scaling dict or None) from old or transformers-5 style fields."""
  rp = dict(hf.get("rope_parameters") or {})  # transformers >= 5 nests theta + scaling here
  rs = dict(hf.get("rope_scaling") or {})      # transformers < 5 (and Llama-3 checkpoints)
  theta = hf.get("rope_theta", rp.get("rope_theta", rs.get("rope_theta", 10000.0)))
  scaling = rs or rp
  rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise ValueError(f"unsupported rope scaling type {rope_type!r} in config.json "
                     f"(rope_scaling/rope_parameters = {scaling}); supported: {SUPPORTED_ROPE_TYPES}")
  if rope_type == "default":
    return float(theta), None
  keys = ROPE_KEYS[rope_type]
  missing = [k for k in keys if k not in scaling]
  if missing:
    raise ValueError(f"{rope_type} rope scaling in config.json lacks {missing}: {scaling}")
  optional = YARN_OPTIONAL if rope_type == "yarn" else ()
  out = {k: scaling[k] for k in keys + optional if scaling.get(k) is not None}
  out["rope_type"] = rope_type
  return float(theta), out


def _model_type(hf: Mapping[str, Any]) -> str:
  """The family of a config.json: its architecture's model type, else model_type, else llama."""
  archs = [a for a in hf.get("architectures") or [] if a in MODEL_TYPES]
  return MODEL_TYPES[archs[0]] if archs else hf.get("model_type") or "llama"


def check_supported(hf: Mapping[str, Any]) -> None:
  """Raise ValueError naming whatever in a HF config.json this implementation cannot run."""
  archs = hf.get("architectures") or []
  model_type = hf.get("model_type")
  if archs and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
    raise ValueError(f"unsupported architecture {archs} (model_type={model_type!r}); "
                     f"supported: {SUPPORTED_ARCHITECTURES}")
  if not archs and model_type not in (None, *MODEL_TYPES.values()):
    raise ValueError(f"unsupported model_type {model_type!r}; supported: "
                     f"{', '.join(MODEL_TYPES.values())}")
  act = hf.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise ValueError(f"unsupported hidden_act {act!r} (only silu/SwiGLU MLPs are implemented)")
  if hf.get("mlp_bias"):
    raise ValueError("unsupported: mlp_bias=true (MLP projections with bias)")
  family = _model_type(hf)
  if hf.get("attention_bias") and family != "qwen2":
    # HF Llama's and Qwen3's attention_bias also puts a bias on o_proj, which we do not have.
    raise ValueError(f"unsupported: attention_bias=true for a {family} model (o_proj bias)")
  layer_types = set(hf.get("layer_types") or ())
  if layer_types - {"full_attention"}:
    raise ValueError(f"unsupported layer_types {sorted(layer_types)} (only full_attention)")
  if family == "deepseek_v3" and hf.get("num_nextn_predict_layers"):
    logging.warning("DeepSeek-V3 multi-token prediction layers (num_nextn_predict_layers=%s) "
                    "are not implemented; their weights are ignored",
                    hf["num_nextn_predict_layers"])
  if family == "qwen3_moe" and hf.get("shared_expert_intermediate_size"):
    raise ValueError("unsupported: shared_expert_intermediate_size (shared experts)")
  if hf.get("quantization_config"):  # e.g. DeepSeek-V3's FP8 blocks with weight_scale_inv
    raise ValueError(f"unsupported: a quantized checkpoint (quantization_config="
                     f"{hf['quantization_config']}); dequantize it to bf16 first")
  if hf.get("use_sliding_window"):
    raise ValueError("unsupported: use_sliding_window=true (sliding-window attention)")
  if model_type == "mistral" and hf.get("sliding_window"):
    logging.warning("Mistral sliding_window=%s is ignored: attention is full causal, which is "
                    "exact only for sequences up to the window", hf["sliding_window"])
  _rope_fields(hf)


def config_from_hf(hf: Mapping[str, Any], **overrides) -> ModelConfig:
  """ModelConfig from a HF `config.json` dict (transformers 4.x or 5.x layout).

  `overrides` replace fields afterwards (e.g. dtype="bfloat16", remat=True).
  """
  check_supported(hf)
  family = _model_type(hf)
  missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size") if k not in hf]
  if missing:
    raise ValueError(f"config.json lacks required fields {missing}")
  heads = hf["num_attention_heads"]
  rope_theta, rope_scaling = _rope_fields(hf)
  head_dim = hf.get("head_dim")
  kw = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      intermediate_size=hf["intermediate_size"],
      head_dim=head_dim if head_dim not in (None, hf["hidden_size"] // heads) else None,
      rope_theta=rope_theta, rope_scaling=rope_scaling,
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      # Every supported HF config class defaults to untied embeddings.
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=family == "qwen2",  # Qwen2 always has q/k/v biases; others' are rejected
      qk_norm=family in ("qwen3", "qwen3_moe"),
      max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
  )
  if family == "qwen3_moe":
    experts = hf.get("num_experts", hf.get("num_local_experts"))
    moe_missing = [k for k in ("num_experts_per_tok", "moe_intermediate_size") if k not in hf]
    if experts is None or moe_missing:
      raise ValueError(f"qwen3_moe config.json lacks {moe_missing or ['num_experts']}")
    kw.update(num_experts=int(experts), num_experts_per_tok=int(hf["num_experts_per_tok"]),
              moe_intermediate_size=int(hf["moe_intermediate_size"]),
              norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
              decoder_sparse_step=int(hf.get("decoder_sparse_step", 1)),
              mlp_only_layers=tuple(hf.get("mlp_only_layers") or ()),
              router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)))
  if family == "deepseek_v3":  # MLA, and sigmoid-routed experts after the first k layers
    kw.update({k: hf[k] for k in DEEPSEEK_FIELDS if hf.get(k) is not None},  # None: default
              scoring_func="sigmoid",
              num_experts=int(hf.get("n_routed_experts", hf.get("num_local_experts", 256))),
              num_kv_heads=heads, head_dim=None)
  kw.update(overrides)
  for k in ("dtype", "param_dtype"):  # accept jnp.bfloat16, np.dtype, "bfloat16"
    if k in kw and kw[k] is not None:
      kw[k] = jnp.dtype(kw[k]).name
  return ModelConfig(**kw)


def config_to_hf(cfg: ModelConfig, architecture: str | None = None,
                 dtype: str | None = None) -> dict[str, Any]:
  """HF config.json dict; readable by transformers 4.x and 5.x.

  qkv_bias models are written as Qwen2 (HF Llama's attention_bias would add an o_proj bias),
  qk_norm models as Qwen3, mixtures of experts as Qwen3-MoE.
  """
  arch = architecture or ("DeepseekV3ForCausalLM" if cfg.is_mla else
                          "Qwen3MoeForCausalLM" if cfg.num_experts else
                          "Qwen3ForCausalLM" if cfg.qk_norm else
                          "Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"unsupported architecture {arch!r}; supported: {SUPPORTED_ARCHITECTURES}")
  if cfg.qkv_bias and not arch.startswith("Qwen2"):
    raise ValueError(f"{arch} cannot express q/k/v-only biases; use Qwen2ForCausalLM")
  if cfg.qk_norm != arch.startswith("Qwen3"):
    raise ValueError(f"{arch} {'lacks' if cfg.qk_norm else 'needs'} q/k norm (qk_norm="
                     f"{cfg.qk_norm}); q/k-normed models are Qwen3ForCausalLM/Qwen3MoeForCausalLM")
  if bool(cfg.num_experts) != (arch == "Qwen3MoeForCausalLM") and not cfg.is_mla:
    raise ValueError(f"num_experts={cfg.num_experts} cannot be written as {arch}; mixtures "
                     "of experts are Qwen3MoeForCausalLM")
  if cfg.is_mla != (arch == "DeepseekV3ForCausalLM") or (cfg.is_mla and (
      cfg.num_experts == 0 or cfg.scoring_func != "sigmoid" or not cfg.n_shared_experts
      or cfg.decoder_sparse_step != 1 or cfg.mlp_only_layers)):
    raise ValueError(f"{arch} cannot express this model: DeepseekV3ForCausalLM is MLA with "
                     "sigmoid-routed experts and shared experts after first_k_dense_replace "
                     f"dense layers (kv_lora_rank={cfg.kv_lora_rank}, num_experts="
                     f"{cfg.num_experts}, scoring_func={cfg.scoring_func!r}, n_shared_experts="
                     f"{cfg.n_shared_experts})")
  model_type = MODEL_TYPES[arch]
  dtype = dtype or cfg.param_dtype
  out: dict[str, Any] = {
      "architectures": [arch], "model_type": model_type,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "intermediate_size": cfg.intermediate_size,
      "head_dim": cfg.hd, "rms_norm_eps": cfg.rms_norm_eps,
      "tie_word_embeddings": cfg.tie_embeddings,
      "max_position_embeddings": cfg.max_position_embeddings,
      "hidden_act": "silu", "torch_dtype": dtype, "dtype": dtype,
  }
  # transformers 5 nests theta (+ scaling) under rope_parameters; 4.x reads rope_theta and
  # rope_scaling. Write both, consistently.
  rope = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
  out["rope_theta"] = cfg.rope_theta
  if cfg.rope_scaling:
    scaling = dict(cfg.rope_scaling)
    out["rope_scaling"] = scaling
    rope.update(scaling)
  out["rope_parameters"] = rope
  if model_type in ("qwen2", "qwen3", "qwen3_moe"):
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
  if model_type in ("qwen3", "qwen3_moe"):
    out["attention_bias"] = False
  if model_type == "qwen3_moe":
    out.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
               moe_intermediate_size=cfg.moe_intermediate_size,
               norm_topk_prob=cfg.norm_topk_prob, decoder_sparse_step=cfg.decoder_sparse_step,
               mlp_only_layers=list(cfg.mlp_only_layers),
               router_aux_loss_coef=cfg.router_aux_loss_coef)
  if model_type == "deepseek_v3":
    out.update({k: getattr(cfg, k) for k in DEEPSEEK_FIELDS}, n_routed_experts=cfg.num_experts,
               scoring_func="sigmoid", topk_method="noaux_tc", attention_bias=False,
               num_nextn_predict_layers=0, head_dim=cfg.qk_rope_head_dim)
  if model_type in ("llama", "mistral"):
    out.update(attention_bias=False, mlp_bias=False)
  if model_type == "mistral":
    out["sliding_window"] = None
  return out
