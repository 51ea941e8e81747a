"""GGUF (llama.cpp) checkpoint import: metadata -> ModelConfig, tensors -> our params.

    cfg, params = load_gguf("model.gguf")            # dequantised, fp32 by default

The file is read with `gguf.GGUFReader` (memory-mapped) and each tensor is dequantised with
`gguf.quants.dequantize` (F32, F16, BF16, Q4_0/Q4_1/Q5_x/Q8_0, K-quants, ...) only when it
is needed, then renamed to its HF transformers name and converted by `hf_layout.params_from_hf`,
so the layout rules live in one place.

Two things differ from a HF checkpoint:
  * shapes: ggml lists dimensions fastest-first (`tensor.shape` is [in, out] for a Linear);
    the numpy array we build is row-major [out, in], i.e. the HF layout.
  * RoPE: llama.cpp's `llama` architecture uses interleaved (GPT-J) RoPE, so
    `convert_hf_to_gguf.py` permutes the rows of attn_q (with n_head) and attn_k (with
    n_head_kv) of each head from HF's rotate-half order [x0..x{d/2-1}, y0..y{d/2-1}] to
    [x0, y0, x1, y1, ...]. We undo that (`unpermute_qk`). `qwen2` files use NEOX RoPE and
    are stored unpermuted.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Union

import numpy as np

from r1jax.model import hf_layout
from r1jax.model.config import ModelConfig

SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2")

PathOrReader = Union[str, os.PathLike, "gguf.GGUFReader"]  # noqa: F821

# llama.cpp per-block tensor names -> HF transformers suffixes.
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def open_gguf(path: PathOrReader):
  """A `gguf.GGUFReader` for `path` (or `path` itself if it already is one)."""
  import gguf
  if isinstance(path, gguf.GGUFReader):
    return path
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file not found: {path}")
  return gguf.GGUFReader(path)


def gguf_metadata(reader, max_array_len: int = 64) -> dict[str, Any]:
  """Key/value metadata as Python values. Arrays longer than `max_array_len` (the token
  list, merges, ...) are left out; read those with `gguf_field(reader, key)`."""
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("GGUF."):
      continue
    if len(field.data) > max_array_len:
      continue
    out[key] = field.contents()
  return out


def gguf_field(reader, key: str, default: Any = None) -> Any:
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _f32(x: float) -> float:
  """A float32 metadata value as the shortest decimal that round-trips (1e-05, not 9.99e-06)."""
  return float(str(np.float32(x)))


def hf_name(gguf_name: str) -> str | None:
  """HF transformers tensor name for a llama.cpp tensor name (None: not a weight we map)."""
  if gguf_name in _TOP_NAMES:
    return _TOP_NAMES[gguf_name]
  m = _BLOCK_RE.match(gguf_name)
  if m and m.group(2) in _BLOCK_NAMES:
    return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}"
  return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of convert_hf_to_gguf's `permute(w, n_head, n_head)` on [out(, in)] arrays."""
  shape = w.shape
  hd = shape[0] // n_head
  return w.reshape(n_head, hd // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """convert_hf_to_gguf's permutation (HF rotate-half rows -> llama.cpp interleaved rows)."""
  shape = w.shape
  hd = shape[0] // n_head
  return w.reshape(n_head, 2, hd // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def dequantize_tensor(tensor) -> np.ndarray:
  """Dequantised float32 numpy array of a `ReaderTensor`, in row-major (HF) order."""
  from gguf.quants import dequantize
  arr = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
  shape = tuple(int(s) for s in reversed(tensor.shape.tolist()))  # ggml order is reversed
  return arr.reshape(shape)


def _llama3_rope_scaling(rope_factors: np.ndarray, theta: float, hd: int
                         ) -> dict[str, Any] | None:
  """Recover Llama-3 rope_scaling parameters from llama.cpp's `rope_freqs` tensor.

  convert_hf_to_gguf stores per-frequency divisors computed from (factor, low_freq_factor,
  high_freq_factor, original_max_position_embeddings). Llama 3.1/3.2 use 1, 4, 8192 and
  factor = max divisor; we try low/high = 1/4 with power-of-two original lengths and accept
  a guess only if it reproduces the tensor.
  """
  inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
  factor = float(np.max(rope_factors))
  if factor == 1.0:
    return None
  for lo, hi, old in [(1.0, 4.0, 8192)] + [(1.0, 4.0, 2 ** k) for k in range(4, 21)]:
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - lo) / (hi - lo)
    expect = np.where(wavelen < old / hi, 1.0,
                      np.where(wavelen > old / lo, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    if expect.shape == rope_factors.shape and np.allclose(expect, rope_factors, rtol=1e-4):
      return {"rope_type": "llama3", "factor": factor, "low_freq_factor": lo,
              "high_freq_factor": hi, "original_max_position_embeddings": old}
  raise NotImplementedError("GGUF rope_freqs tensor does not match Llama-3 rope scaling "
                            "with the usual parameters; load the HF safetensors instead")


def config_from_gguf(reader, dtype: str = "float32") -> ModelConfig:
  """ModelConfig from GGUF metadata (`general.architecture` and `<arch>.*` keys)."""
  arch = gguf_field(reader, "general.architecture")
  if arch not in SUPPORTED_GGUF_ARCHITECTURES:
    raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: "
                     f"{SUPPORTED_GGUF_ARCHITECTURES}")
  get = lambda key, default=None: gguf_field(reader, f"{arch}.{key}", default)
  tensors = {t.name: t for t in reader.tensors}
  if "token_embd.weight" not in tensors:
    raise ValueError("GGUF file has no token_embd.weight tensor")
  hidden = int(get("embedding_length"))
  heads = int(get("attention.head_count"))
  kv_heads = int(get("attention.head_count_kv", heads))
  hd = int(get("attention.key_length", hidden // heads))
  if int(get("attention.value_length", hd)) != hd:
    raise NotImplementedError("GGUF with attention.value_length != key_length is not supported")
  if int(get("rope.dimension_count", hd)) != hd:
    raise NotImplementedError(f"partial rotary embeddings (rope.dimension_count="
                              f"{get('rope.dimension_count')}, head_dim={hd}) are not supported")
  scaling_type = get("rope.scaling.type")
  if scaling_type not in (None, "none"):
    raise NotImplementedError(f"GGUF rope.scaling.type={scaling_type!r} is not supported")
  # Vocabulary size: rows of the embedding (the token list of a well-formed file matches it).
  embd_shape = [int(s) for s in tensors["token_embd.weight"].shape.tolist()]  # ggml: [D, V]
  vocab = embd_shape[1]
  if embd_shape[0] != hidden:
    raise ValueError(f"token_embd.weight has shape {embd_shape} (ggml order), expected "
                     f"[{hidden}, vocab]")
  theta = _f32(get("rope.freq_base", 10000.0))
  rope_scaling = None
  if "rope_freqs.weight" in tensors:
    rope_scaling = _llama3_rope_scaling(dequantize_tensor(tensors["rope_freqs.weight"])
                                        .astype(np.float64), theta, hd)
  return ModelConfig(
      vocab_size=vocab, hidden_size=hidden, num_layers=int(get("block_count")),
      num_heads=heads, num_kv_heads=kv_heads,
      intermediate_size=int(get("feed_forward_length")),
      head_dim=hd if hd != hidden // heads else None,
      rope_theta=theta, rope_scaling=rope_scaling,
      rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="output.weight" not in tensors,
      qkv_bias="blk.0.attn_q.bias" in tensors,
      max_position_embeddings=int(get("context_length", 8192)),
      dtype=dtype, param_dtype=dtype)


def hf_tensor_getter(reader, cfg: ModelConfig, unpermute: bool | None = None
                     ) -> tuple[Callable[[str], np.ndarray], set[str]]:
  """(get_tensor(hf_name) -> float32 numpy [out, in], set of HF names) for `reader`.

  Tensors are dequantised lazily, one per call. `unpermute` (default: True for the
  `llama` architecture) undoes llama.cpp's Q/K row permutation.
  """
  arch = gguf_field(reader, "general.architecture")
  if unpermute is None:
    unpermute = arch == "llama"
  by_hf: dict[str, Any] = {}
  for t in reader.tensors:
    name = hf_name(t.name)
    if name is None:
      if t.name == "rope_freqs.weight":  # folded into cfg.rope_scaling
        continue
      raise NotImplementedError(f"GGUF tensor {t.name!r} has no mapping (architecture {arch})")
    by_hf[name] = t

  def get_tensor(name: str) -> np.ndarray:
    w = dequantize_tensor(by_hf[name])
    if unpermute:
      if ".self_attn.q_proj." in name:
        w = unpermute_qk(w, cfg.num_heads)
      elif ".self_attn.k_proj." in name:
        w = unpermute_qk(w, cfg.num_kv_heads)
    return w

  return get_tensor, set(by_hf)


def load_gguf(path: PathOrReader, dtype: str = "float32", *, unpermute: bool | None = None,
              place: Callable[[tuple, np.ndarray], Any] | None = None
              ) -> tuple[ModelConfig, dict]:
  """Read a GGUF file into (ModelConfig, params).

  Every tensor is dequantised to float32 and then cast to `dtype`, which also becomes the
  config's `dtype` and `param_dtype`. `place(path, array)` decides where each leaf goes
  (default: `jnp.asarray`, i.e. the default device). `unpermute=False` keeps llama.cpp's
  Q/K row order (only useful to show that the un-permutation matters).
  """
  import jax.numpy as jnp
  reader = open_gguf(path)
  cfg = config_from_gguf(reader, dtype=dtype)
  get_tensor, names = hf_tensor_getter(reader, cfg, unpermute=unpermute)
  if place is None:
    place = lambda _, w: jnp.asarray(w)
  params = hf_layout.params_from_hf(cfg, get_tensor, names, dtype=dtype, place=place)
  return cfg, params
