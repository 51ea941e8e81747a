"""HF transformers tensors <-> our params: the per-tensor layout, and whole-checkpoint conversion.

HF Linear weights are [out, in]; ours are [in, ...heads...]. Every HF -> ours transform is
"transpose a 2-D tensor (or not), then reshape", described once per tensor by a
`TensorLayout`. Because of that, any rectangular slice of one of our params maps back to a
rectangular slice of the HF tensor (`TensorLayout.hf_slice`), so a loader can build each
device shard of a sharded param by reading only the rows/columns it needs.

The functions here work on numpy arrays one tensor at a time, so loaders can stream shards.
config.json fields are mapped in `r1jax.model.hf`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from r1jax.model.config import ModelConfig
from r1jax.model.mla import mla_hf_layout


def _split_groups(shape: Sequence[int], t_shape: Sequence[int]) -> list[int]:
  """Number of our axes in each axis of the transposed HF tensor (products must match)."""
  groups, i = [], 0
  for t in t_shape:
    n, prod = 0, 1
    while i + n < len(shape) and (prod < t or n == 0):
      prod *= shape[i + n]
      n += 1
    if prod != t:
      raise ValueError(f"shape {tuple(shape)} does not split {tuple(t_shape)}")
    groups.append(n)
    i += n
  if i < len(shape):  # trailing size-1 axes go with the last group
    if math.prod(shape[i:]) != 1:
      raise ValueError(f"shape {tuple(shape)} does not split {tuple(t_shape)}")
    groups[-1] += len(shape) - i
  return groups


def transpose2d(a: np.ndarray, block: int = 256) -> np.ndarray:
  """Contiguous a.T; tiled for large arrays (2-3x faster than numpy's strided copy)."""
  a = np.asarray(a)
  if a.ndim != 2 or a.size < (1 << 16):
    return np.ascontiguousarray(a.T)
  r, c = a.shape
  out = np.empty((c, r), a.dtype)
  for i in range(0, r, block):
    for j in range(0, c, block):
      out[j:j + block, i:i + block] = a[i:i + block, j:j + block].T
  return out


@dataclasses.dataclass(frozen=True)
class TensorLayout:
  """One param: ours = (hf.T if transpose else hf).reshape(shape).

  With `experts` = E > 0 the param stacks E HF tensors (one per expert, as HF checkpoints
  store MoE weights): `hf_name` holds an "{e}" and `hf_shape` is one expert's; ours[e] is
  expert e's tensor transformed as above, and to_ours / to_hf take / give the [E, ...] stack.
  """
  path: tuple
  hf_name: str
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  transpose: bool = False
  experts: int = 0

  @property
  def hf_names(self) -> list[str]:
    """The HF tensors this param is made of (one unless stacked)."""
    if not self.experts:
      return [self.hf_name]
    return [self.hf_name.format(e=e) for e in range(self.experts)]

  @property
  def expert_layout(self) -> "TensorLayout":
    """The layout of one expert's slice of a stacked param."""
    return dataclasses.replace(self, shape=self.shape[1:], experts=0)

  def to_ours(self, w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if self.experts:
      return np.stack([self.expert_layout.to_ours(x) for x in w])
    if w.shape != self.hf_shape:
      raise ValueError(f"{self.hf_name}: expected shape {self.hf_shape}, got {w.shape}")
    return (transpose2d(w) if self.transpose else w).reshape(self.shape)

  def to_hf(self, w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if self.experts:
      return np.stack([self.expert_layout.to_hf(x) for x in w])
    if w.shape != self.shape:
      raise ValueError(f"{self.path}: expected shape {self.shape}, got {w.shape}")
    t = w.reshape(self.hf_shape[::-1] if self.transpose else self.hf_shape)
    return transpose2d(t) if self.transpose else t

  def hf_slice(self, index: Sequence[slice]) -> tuple[tuple[slice, ...], Callable[[np.ndarray], np.ndarray]]:
    """Map a slice of our param to (slice of the HF tensor, fn turning that block into ours).

    Each axis of the (transposed) HF tensor is split into a group of our axes; the slice of
    the group's outermost axis selects a contiguous range of it. Slices of inner axes of a group
    (never produced by the default rules) are applied after reading full inner extents.
    """
    if self.experts:
      raise ValueError(f"{self.path}: slice a stacked param per expert (expert_layout)")
    index = tuple(index) + (slice(None),) * (len(self.shape) - len(index))
    bounds = [s.indices(n)[:2] for s, n in zip(index, self.shape)]
    for s in index:
      if s.step not in (None, 1):
        raise ValueError(f"strided slice {s} is not supported")
    t_shape = self.hf_shape[::-1] if self.transpose else self.hf_shape
    groups = _split_groups(self.shape, t_shape)
    t_index, block_shape, post = [], [], []
    ax = 0
    for n in groups:
      (lo, hi), inner = bounds[ax], self.shape[ax + 1: ax + n]
      m = math.prod(inner)
      t_index.append(slice(lo * m, hi * m))
      block_shape += [hi - lo, *inner]
      post += [slice(None)] + [slice(*b) for b in bounds[ax + 1: ax + n]]
      ax += n
    hf_index = tuple(t_index[::-1] if self.transpose else t_index)
    needs_post = any(p != slice(None) for p in post)

    def finish(block: np.ndarray) -> np.ndarray:
      out = (transpose2d(block) if self.transpose else block).reshape(block_shape)
      return out[tuple(post)] if needs_post else out

    return hf_index, finish


def param_layout(cfg: ModelConfig) -> list[TensorLayout]:
  """Every param of `cfg`, in HF checkpoint order."""
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  out = [TensorLayout(("embed",), "model.embed_tokens.weight", (v, d), (v, d))]
  for i in range(cfg.num_layers):
    p = f"model.layers.{i}."
    L = lambda leaf, name, hf_shape, shape, tr=False: TensorLayout(
        ("layers", i, leaf), p + name, tuple(hf_shape), tuple(shape), tr)
    out.append(L("attn_norm", "input_layernorm.weight", (d,), (d,)))
    if cfg.is_mla:
      out += mla_hf_layout(cfg, L)
    else:
      out += _gqa_layout(cfg, L)
    out.append(L("mlp_norm", "post_attention_layernorm.weight", (d,), (d,)))
    if cfg.is_moe_layer(i):
      e, fe = cfg.num_experts, cfg.moe_intermediate_size
      X = lambda leaf, name, hf_shape, shape: TensorLayout(
          ("layers", i, leaf), p + "mlp.experts.{e}." + name, hf_shape, (e, *shape), True, e)
      out += [
          L("router", "mlp.gate.weight", (e, d), (d, e), True),
          X("experts_gate", "gate_proj.weight", (fe, d), (d, fe)),
          X("experts_up", "up_proj.weight", (fe, d), (d, fe)),
          X("experts_down", "down_proj.weight", (d, fe), (fe, d)),
      ]
      if cfg.scoring_func == "sigmoid":
        out.append(L("router_bias", "mlp.gate.e_score_correction_bias", (e,), (e,)))
      if cfg.n_shared_experts:
        out += _mlp_layout(L, "shared_", "mlp.shared_experts.", d, fe * cfg.n_shared_experts)
    else:
      out += _mlp_layout(L, "", "mlp.", d, f)
  out.append(TensorLayout(("final_norm",), "model.norm.weight", (d,), (d,)))
  if not cfg.tie_embeddings:
    out.append(TensorLayout(("lm_head",), "lm_head.weight", (v, d), (d, v), True))
  return out


def _mlp_layout(L: Callable, leaf: str, name: str, d: int, f: int) -> list[TensorLayout]:
  return [L(leaf + "gate", name + "gate_proj.weight", (f, d), (d, f), True),
          L(leaf + "up", name + "up_proj.weight", (f, d), (d, f), True),
          L(leaf + "down", name + "down_proj.weight", (d, f), (f, d), True)]


def _gqa_layout(cfg: ModelConfig, L: Callable) -> list[TensorLayout]:
  d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.hd
  out = [L("q", "self_attn.q_proj.weight", (h * hd, d), (d, h, hd), True),
         L("k", "self_attn.k_proj.weight", (kv * hd, d), (d, kv, hd), True),
         L("v", "self_attn.v_proj.weight", (kv * hd, d), (d, kv, hd), True)]
  if cfg.qkv_bias:
    out += [L("q_bias", "self_attn.q_proj.bias", (h * hd,), (h, hd)),
            L("k_bias", "self_attn.k_proj.bias", (kv * hd,), (kv, hd)),
            L("v_bias", "self_attn.v_proj.bias", (kv * hd,), (kv, hd))]
  out.append(L("o", "self_attn.o_proj.weight", (d, h * hd), (h, hd, d), True))
  if cfg.qk_norm:
    out += [L("q_norm", "self_attn.q_norm.weight", (hd,), (hd,)),
            L("k_norm", "self_attn.k_norm.weight", (hd,), (hd,))]
  return out


def param_name_map(cfg: ModelConfig) -> Iterator[tuple[tuple, str, Callable, Callable]]:
  """Yield (our path tuple, hf name, hf->ours, ours->hf) for every parameter."""
  for t in param_layout(cfg):
    yield t.path, t.hf_name, t.to_ours, t.to_hf


def set_path(tree: dict, path: tuple, value: Any) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def get_path(tree: Mapping, path: tuple) -> Any:
  for p in path:
    tree = tree[p]
  return tree


def params_from_hf(cfg: ModelConfig, get_tensor: Callable[[str], np.ndarray],
                   names: set[str] | None = None, dtype: Any = None,
                   place: Callable[[tuple, np.ndarray], Any] | None = None) -> dict:
  """Build our params by pulling HF tensors one by one with `get_tensor(name)`.

  `place(path, array)` turns each converted numpy tensor into the stored leaf (e.g. a
  sharded device array); by default the numpy array itself is kept. For loading straight
  into shards without materialising whole tensors see `r1jax.model.checkpoint_io`.
  """
  dtype = jnp.dtype(dtype or cfg.param_dtype)  # ml_dtypes covers bfloat16 in numpy
  layout = param_layout(cfg)
  if names is not None:
    missing = [n for t in layout for n in t.hf_names if n not in names]
    if missing:
      raise ValueError(f"checkpoint is missing {len(missing)} tensors: {missing[:8]}")
  out: dict = {}
  for t in layout:
    hf_w = np.stack([get_tensor(n) for n in t.hf_names]) if t.experts else get_tensor(t.hf_name)
    w = t.to_ours(np.asarray(hf_w)).astype(dtype)
    set_path(out, t.path, place(t.path, w) if place else w)
  return out


def params_to_hf(params: Mapping, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  """Yield (hf name, numpy tensor) for every HF tensor, in the params' dtype."""
  for t in param_layout(cfg):
    w = t.to_hf(np.asarray(get_path(params, t.path)))
    for name, x in zip(t.hf_names, w if t.experts else [w]):
      yield name, np.ascontiguousarray(x)
