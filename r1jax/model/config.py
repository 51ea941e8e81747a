"""Model configuration: one decoder-only transformer family, differences are fields."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Llama 3.x / Qwen2 / Qwen2.5 / SmolLM2 / Qwen3 / Qwen3-MoE decoder-only transformer.

  Field names follow HF `config.json` meanings. `dtype` is the compute dtype,
  `param_dtype` the storage dtype of the parameters. With `num_experts` > 0 the MLP of
  every layer `is_moe_layer` picks is a softmax top-k mixture of experts (Qwen3-MoE).
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
  # Rematerialise each block in the backward pass: False/"" off, True/"full" recompute all,
  # or a jax.checkpoint_policies name ("dots_saveable", ...; r1jax.memory.REMAT_POLICIES).
  remat: bool | str = False

  @property
  def hd(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  def is_moe_layer(self, i: int) -> bool:
    return (self.num_experts > 0 and i not in self.mlp_only_layers
            and (i + 1) % self.decoder_sparse_step == 0)

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
                            ("mlp_only_layers", ()), ("router_aux_loss_coef", 0.0)):
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
}
