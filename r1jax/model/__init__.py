"""Decoder-only transformer family, presets, and checkpoint import/export."""

from r1jax.model.config import PRESETS, ModelConfig
from r1jax.model.transformer import (KVCache, forward, init_cache, init_params, param_axes,
                                     param_shapes, positions_from_mask, unembed_matrix)

__all__ = ["PRESETS", "ModelConfig", "KVCache", "forward", "init_cache", "init_params",
           "param_axes", "param_shapes", "positions_from_mask", "unembed_matrix"]
