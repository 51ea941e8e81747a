"""Model configuration: one decoder-only transformer family, differences are fields."""

from __future__ import annotations

import dataclasses
from typing import Any

SCORING_NAMES = ("sigmoid", "softmax")  # router scores (r1jax.model.moe.SCORING_FUNCS)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Llama 3.x / Qwen2 / Qwen2.5 / SmolLM2 / Qwen3 / Qwen3-MoE / DeepSeek-V3 decoder-only
  transformer.

  Field names follow HF `config.json` meanings. `dtype` is the compute dtype,
  `param_dtype` the storage dtype of the parameters. With `num_experts` > 0 the MLP of
  every layer `is_moe_layer` picks is a top-k mixture of experts (softmax scores as
  Qwen3-MoE, or sigmoid with DeepSeek-V3's bias and expert groups). With `kv_lora_rank` > 0
  attention is DeepSeek's multi-head latent attention (r1jax.model.mla).
  """

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  intermediate_size: int
  head_dim: int | None = None  # None: hidden_size // num_heads
  rope_theta: float = 10000.0
  # Llama-3 style: {"rope_type": "llama3", "factor", "low_freq_factor",
  # "high_freq_factor", "original_max_position_embeddings"}; None for plain RoPE.
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  rms_norm_eps: float = 1e-5
  tie_embeddings: bool = True
  qkv_bias: bool = False
  max_position_embeddings: int = 8192
  dtype: str = "float32"
  param_dtype: str = "float32"
  qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k, before RoPE
  # Mixture of experts (Qwen3-MoE meanings); num_experts=0 is a dense model and then the
  # other MoE fields must keep their defaults.
  num_experts: int = 0
  num_experts_per_tok: int = 0
  moe_intermediate_size: int = 0
  norm_topk_prob: bool = False  # renormalise the top-k router probabilities to sum to 1
  decoder_sparse_step: int = 1  # layer i is MoE when (i + 1) % step == 0 ...
  mlp_only_layers: tuple[int, ...] = ()  # ... and i is not listed here
  router_aux_loss_coef: float = 0.0  # weight of the Switch load-balancing loss (trainers)
  # DeepSeek-V3 routing (HF DeepseekV3Config names); the defaults are Qwen3-MoE's.
  scoring_func: str = "softmax"  # "softmax" | "sigmoid" (r1jax.model.moe.SCORING_FUNCS);
  # sigmoid layers carry a router_bias (e_score_correction_bias) used only to choose experts
  n_group: int = 1  # experts form n_group groups; a token picks among its topk_group best
  topk_group: int = 1
  routed_scaling_factor: float = 1.0  # multiplies the routed experts' weights
  n_shared_experts: int = 0  # an always-on SwiGLU of n_shared * moe_intermediate_size
  first_k_dense_replace: int = 0  # the first k layers keep a dense MLP
  # aux-loss-free balancing: router_bias += speed * sign(mean load - load) per train step
  # (r1jax.model.moe.update_router_bias); 0 disables. DeepSeek-V3 used 0.001.
  router_bias_update_speed: float = 0.0
  # Multi-head latent attention (DeepSeek-V2/V3); kv_lora_rank=0 is ordinary attention and
  # the other MLA fields must then keep their defaults.
  q_lora_rank: int | None = None  # None: q is one [D, H, Dn + Dr] projection
  kv_lora_rank: int = 0
  qk_nope_head_dim: int = 0
  qk_rope_head_dim: int = 0
  v_head_dim: int = 0
  rope_interleave: bool = True  # the rotary dims are interleaved pairs (DeepSeek checkpoints)
  # Rematerialise each block in the backward pass: False/"" off, True/"full" recompute all,
  # or a jax.checkpoint_policies name ("dots_saveable", ...; r1jax.memory.REMAT_POLICIES).
  remat: bool | str = False
  # Attention without a cache (the train step, log-probs) in blocks of this many queries,
  # each block's [H, chunk, T] scores rebuilt in the backward: memory grows with T * chunk
  # instead of T^2 (long completions). 0: all queries at once.
  attention_chunk: int = 0

  @property
  def hd(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def is_mla(self) -> bool:
    return self.kv_lora_rank > 0

  @property
  def rope_dim(self) -> int:
    """Rotary dims per head: qk_rope_head_dim under MLA, the whole head otherwise."""
    return self.qk_rope_head_dim if self.is_mla else self.hd

  @property
  def cache_dims(self) -> tuple[int, int, int]:
    """(heads, K dim, V dim) of a layer's KV cache per token: MLA caches its rotary key
    (1, qk_rope_head_dim) and latent (kv_lora_rank) instead of per-head K and V."""
    if self.is_mla:
      return 1, self.qk_rope_head_dim, self.kv_lora_rank
    return self.num_kv_heads, self.hd, self.hd

  def is_moe_layer(self, i: int) -> bool:
    return (self.num_experts > 0 and i not in self.mlp_only_layers
            and i >= self.first_k_dense_replace and (i + 1) % self.decoder_sparse_step == 0)

  @property
  def moe_layers(self) -> tuple[int, ...]:
    return tuple(i for i in range(self.num_layers) if self.is_moe_layer(i))

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  def replace(self, **kw) -> "ModelConfig":
    if isinstance(kw.get("rope_scaling"), dict):
      kw["rope_scaling"] = tuple(sorted(kw["rope_scaling"].items()))
    return dataclasses.replace(self, **kw)

  def __post_init__(self):
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
    if not isinstance(self.mlp_only_layers, tuple):  # a list from JSON / HF config.json
      object.__setattr__(self, "mlp_only_layers", tuple(int(i) for i in self.mlp_only_layers))
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                 "intermediate_size"):
      v = getattr(self, name)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    self._check_moe()
    self._check_mla()
    if not isinstance(self.attention_chunk, int) or self.attention_chunk < 0:
      raise ValueError(f"ModelConfig.attention_chunk must be an int >= 0 (queries per block; "
                       f"0: all at once), got {self.attention_chunk!r}")
    if self.remat not in (False, True, ""):
      from r1jax.memory import remat_policy
      remat_policy(self.remat)  # raises naming the bad value
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"ModelConfig.{name} must be float32|bfloat16|float16, "
                         f"got {getattr(self, name)!r}")


  def _check_moe(self):
    if self.num_experts < 0:
      raise ValueError(f"ModelConfig.num_experts must be >= 0, got {self.num_experts!r}")
    if self.num_experts == 0:
      for name, default in (("num_experts_per_tok", 0), ("moe_intermediate_size", 0),
                            ("norm_topk_prob", False), ("decoder_sparse_step", 1),
                            ("mlp_only_layers", ()), ("router_aux_loss_coef", 0.0),
                            ("scoring_func", "softmax"), ("n_group", 1), ("topk_group", 1),
                            ("routed_scaling_factor", 1.0), ("n_shared_experts", 0),
                            ("first_k_dense_replace", 0), ("router_bias_update_speed", 0.0)):
        if getattr(self, name) != default:
          raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} needs num_experts > 0 "
                           "(a dense model ignores it)")
      return
    if not 1 <= self.num_experts_per_tok <= self.num_experts:
      raise ValueError(f"ModelConfig.num_experts_per_tok={self.num_experts_per_tok!r} must be "
                       f"in [1, num_experts={self.num_experts}]")
    if not isinstance(self.moe_intermediate_size, int) or self.moe_intermediate_size <= 0:
      raise ValueError(f"ModelConfig.moe_intermediate_size must be a positive int, got "
                       f"{self.moe_intermediate_size!r}")
    if not isinstance(self.decoder_sparse_step, int) or self.decoder_sparse_step <= 0:
      raise ValueError(f"ModelConfig.decoder_sparse_step must be a positive int, got "
                       f"{self.decoder_sparse_step!r}")
    bad = [i for i in self.mlp_only_layers if not 0 <= i < self.num_layers]
    if bad:
      raise ValueError(f"ModelConfig.mlp_only_layers={self.mlp_only_layers!r} has layers "
                       f"outside [0, num_layers={self.num_layers})")
    if self.router_aux_loss_coef < 0:
      raise ValueError(f"ModelConfig.router_aux_loss_coef must be >= 0, got "
                       f"{self.router_aux_loss_coef!r}")
    if self.scoring_func not in SCORING_NAMES:
      raise ValueError(f"ModelConfig.scoring_func={self.scoring_func!r}; choose from "
                       f"{sorted(SCORING_NAMES)}")
    e, g = self.num_experts, self.n_group
    if not isinstance(g, int) or g < 1 or e % g or (g > 1 and e // g < 2):
      raise ValueError(f"ModelConfig.n_group={g!r} must be a positive int dividing "
                       f"num_experts={e} into groups of at least 2")
    if not isinstance(self.topk_group, int) or not 1 <= self.topk_group <= g:
      raise ValueError(f"ModelConfig.topk_group={self.topk_group!r} must be in [1, n_group={g}]")
    if self.num_experts_per_tok > self.topk_group * (e // g):
      raise ValueError(f"ModelConfig.num_experts_per_tok={self.num_experts_per_tok} exceeds "
                       f"the {self.topk_group * (e // g)} experts of topk_group={self.topk_group} groups")
    if not isinstance(self.n_shared_experts, int) or self.n_shared_experts < 0:
      raise ValueError(f"ModelConfig.n_shared_experts must be an int >= 0, got "
                       f"{self.n_shared_experts!r}")
    fk = self.first_k_dense_replace  # >= num_layers: every layer dense (a cut-down depth)
    if not isinstance(fk, int) or fk < 0:
      raise ValueError(f"ModelConfig.first_k_dense_replace must be an int >= 0, got {fk!r}")
    if not self.routed_scaling_factor > 0:
      raise ValueError(f"ModelConfig.routed_scaling_factor must be > 0, got "
                       f"{self.routed_scaling_factor!r}")
    if self.router_bias_update_speed < 0 or (self.router_bias_update_speed
                                             and self.scoring_func != "sigmoid"):
      raise ValueError(f"ModelConfig.router_bias_update_speed={self.router_bias_update_speed!r} "
                       "must be >= 0, and > 0 only with scoring_func='sigmoid' (the biased router)")

  def _check_mla(self):
    rs = self.rope_scaling_dict or {}
    if rs.get("rope_type", rs.get("type")) == "yarn" and not self.is_mla:
      raise ValueError(f"ModelConfig.rope_scaling={rs!r}: yarn is implemented for MLA models "
                       "(kv_lora_rank > 0) only")
    names = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    if not self.is_mla:
      for name, default in zip(names, (None, 0, 0, 0, 0)):
        if getattr(self, name) != default or self.kv_lora_rank < 0:
          raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} needs kv_lora_rank > 0 "
                           "(multi-head latent attention)")
      return
    for name in names[1:]:
      v = getattr(self, name)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int under MLA, got {v!r}")
    if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int)
                                         or self.q_lora_rank <= 0):
      raise ValueError(f"ModelConfig.q_lora_rank must be None or a positive int, got "
                       f"{self.q_lora_rank!r}")
    if self.qk_rope_head_dim % 2:
      raise ValueError(f"ModelConfig.qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")
    for name in ("qkv_bias", "qk_norm"):
      if getattr(self, name):
        raise ValueError(f"ModelConfig.{name}=True is not supported with MLA (kv_lora_rank > 0)")


# Presets by name (architecture only; weights come from files).
PRESETS: dict[str, ModelConfig] = {
  "tiny": ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, intermediate_size=128, rope_theta=10000.0,
                      tie_embeddings=True, max_position_embeddings=1024),
  "smollm2-135m": ModelConfig(vocab_size=49152, hidden_size=576, num_layers=30,
                              num_heads=9, num_kv_heads=3, intermediate_size=1536,
                              rope_theta=100000.0, rms_norm_eps=1e-5,
                              tie_embeddings=True, max_position_embeddings=8192),
  "qwen2.5-0.5b": ModelConfig(vocab_size=151936, hidden_size=896, num_layers=24,
                              num_heads=14, num_kv_heads=2, intermediate_size=4864,
                              rope_theta=1000000.0, rms_norm_eps=1e-6,
                              tie_embeddings=True, qkv_bias=True,
                              max_position_embeddings=32768),
  "qwen2.5-1.5b": ModelConfig(vocab_size=151936, hidden_size=1536, num_layers=28,
                              num_heads=12, num_kv_heads=2, intermediate_size=8960,
                              rope_theta=1000000.0, rms_norm_eps=1e-6,
                              tie_embeddings=True, qkv_bias=True,
                              max_position_embeddings=32768),
  "qwen2.5-7b": ModelConfig(vocab_size=152064, hidden_size=3584, num_layers=28,
                            num_heads=28, num_kv_heads=4, intermediate_size=18944,
                            rope_theta=1000000.0, rms_norm_eps=1e-6,
                            tie_embeddings=False, qkv_bias=True,
                            max_position_embeddings=32768),
  "qwen2.5-32b": ModelConfig(vocab_size=152064, hidden_size=5120, num_layers=64,
                             num_heads=40, num_kv_heads=8, intermediate_size=27648,
                             rope_theta=1000000.0, rms_norm_eps=1e-6,
                             tie_embeddings=False, qkv_bias=True,
                             max_position_embeddings=32768),
  "llama3.2-1b": ModelConfig(vocab_size=128256, hidden_size=2048, num_layers=16,
                             num_heads=32, num_kv_heads=8, intermediate_size=8192,
                             rope_theta=500000.0, rms_norm_eps=1e-5,
                             tie_embeddings=True, max_position_embeddings=131072,
                             rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                           "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 8192}),
  "qwen3-0.6b": ModelConfig(vocab_size=151936, hidden_size=1024, num_layers=28, num_heads=16,
                            num_kv_heads=8, intermediate_size=3072, head_dim=128,
                            rope_theta=1000000.0, rms_norm_eps=1e-6, tie_embeddings=True,
                            qk_norm=True, max_position_embeddings=40960),
  "qwen3-1.7b": ModelConfig(vocab_size=151936, hidden_size=2048, num_layers=28, num_heads=16,
                            num_kv_heads=8, intermediate_size=6144,  # head_dim 128
                            rope_theta=1000000.0, rms_norm_eps=1e-6, tie_embeddings=True,
                            qk_norm=True, max_position_embeddings=40960),
  "qwen3-30b-a3b": ModelConfig(vocab_size=151936, hidden_size=2048, num_layers=48,
                               num_heads=32, num_kv_heads=4, intermediate_size=6144,
                               head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-6,
                               tie_embeddings=False, qk_norm=True,
                               max_position_embeddings=40960, num_experts=128,
                               num_experts_per_tok=8, moe_intermediate_size=768,
                               norm_topk_prob=True, router_aux_loss_coef=0.001),
  # Tests and smoke runs: the `tiny` shapes with q/k norm and 4 experts, 2 per token.
  "tiny_moe": ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, intermediate_size=128, rope_theta=10000.0,
                          tie_embeddings=True, max_position_embeddings=1024, qk_norm=True,
                          num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                          norm_topk_prob=True, router_aux_loss_coef=0.001),
  # Tests and smoke runs: DeepSeek-V3's architecture in miniature (MLA with a low-rank q,
  # layer 0 dense, then 8 sigmoid-routed experts in 2 groups, 2 per token, one shared).
  "tiny_mla": ModelConfig(vocab_size=256, hidden_size=64, num_layers=3, num_heads=4,
                          num_kv_heads=4, intermediate_size=128, rope_theta=10000.0,
                          tie_embeddings=False, max_position_embeddings=1024, rms_norm_eps=1e-6,
                          q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
                          qk_rope_head_dim=8, v_head_dim=16, num_experts=8,
                          num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                          scoring_func="sigmoid", n_group=2, topk_group=1,
                          routed_scaling_factor=2.5, n_shared_experts=1, first_k_dense_replace=1,
                          router_bias_update_speed=0.001),
  # DeepSeek-V3 / R1 (671B total, 37B active), for memory and compute planning; multi-token
  # prediction (the 62nd layer) is not implemented.
  "deepseek-v3": ModelConfig(vocab_size=129280, hidden_size=7168, num_layers=61, num_heads=128,
                             num_kv_heads=128, intermediate_size=18432, rope_theta=10000.0,
                             rms_norm_eps=1e-6, tie_embeddings=False,
                             max_position_embeddings=163840,
                             rope_scaling={"rope_type": "yarn", "factor": 40.0,
                                           "original_max_position_embeddings": 4096,
                                           "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                                           "mscale_all_dim": 1.0},
                             q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                             qk_rope_head_dim=64, v_head_dim=128, num_experts=256,
                             num_experts_per_tok=8, moe_intermediate_size=2048,
                             norm_topk_prob=True, scoring_func="sigmoid", n_group=8, topk_group=4,
                             routed_scaling_factor=2.5, n_shared_experts=1,
                             first_k_dense_replace=3, router_bias_update_speed=0.001),
}


# Model-spec keys that set how a model runs, not what it is: a config's `model` section
# (and a teacher's, critic's or stage's spec) applies them to any architecture it loads.
RUNTIME_DEFAULTS = dict(dtype="float32", param_dtype="float32", remat=False, attention_chunk=0)


def runtime_fields(spec, defaults: bool = False) -> dict:
  """The RUNTIME_DEFAULTS keys a model spec sets (with `defaults`: every key, defaulted)."""
  got = {k: spec[k] for k in RUNTIME_DEFAULTS if k in spec}
  return {**RUNTIME_DEFAULTS, **got} if defaults else got
