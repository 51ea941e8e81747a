"""Model configuration: one decoder-only transformer family, differences are fields."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Llama 3.x / Qwen2 / Qwen2.5 / SmolLM2 decoder-only transformer.

  Field names follow HF `config.json` meanings. `dtype` is the compute dtype,
  `param_dtype` the storage dtype of the parameters.
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
  # Rematerialise each block in the backward pass: False/"" off, True/"full" recompute all,
  # or a jax.checkpoint_policies name ("dots_saveable", ...; r1jax.memory.REMAT_POLICIES).
  remat: bool | str = False

  @property
  def hd(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

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
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                 "intermediate_size"):
      v = getattr(self, name)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.remat not in (False, True, ""):
      from r1jax.memory import remat_policy
      remat_policy(self.remat)  # raises naming the bad value
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"ModelConfig.{name} must be float32|bfloat16|float16, "
                         f"got {getattr(self, name)!r}")


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
}
