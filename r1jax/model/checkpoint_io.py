"""HF checkpoint directories (config.json + *.safetensors) <-> our sharded params.

`load_hf_dir` builds every param straight into its target sharding with
`jax.make_array_from_callback`: the callback for one device shard reads only the rows of the
HF tensor that shard needs (a `pread` of the byte range; nothing is memory-mapped), so host
memory holds the sharded model plus at most about one HF tensor at a time, never a whole
shard file. `save_hf_dir` streams the other way: the safetensors header of each output shard
is computed from the config, then params are fetched and written one at a time.

safetensors files are read and written here directly (an 8-byte header length, a JSON header,
raw little-endian data): the `safetensors` numpy backend cannot represent bfloat16, and its
writer wants every tensor of a file in memory at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import struct
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from r1jax import mesh as mesh_lib
from r1jax.model import hf as hf_lib
from r1jax.model import hf_layout
from r1jax.model.config import ModelConfig
from r1jax.model.transformer import param_axes, param_shapes

_ST_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
# Tensors a checkpoint may carry that the model does not need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ----------------------------------------------------------------------------- safetensors


@dataclasses.dataclass(frozen=True)
class _Entry:
  file: str
  dtype: np.dtype
  shape: tuple[int, ...]
  start: int  # absolute byte offset in the file


def _read_header(path: str) -> tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw)
    if n > 100_000_000:
      raise ValueError(f"{path}: not a safetensors file (header length {n})")
    header = json.loads(f.read(n))
  return header, 8 + n


class SafetensorsDir:
  """Lazy, slice-wise reader over the *.safetensors files of a HF directory."""

  def __init__(self, path: str):
    self.path = path
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
      raise FileNotFoundError(f"no *.safetensors files in {path}")
    self.entries: dict[str, _Entry] = {}
    for name in files:
      fp = os.path.join(path, name)
      if not os.path.exists(fp):
        raise FileNotFoundError(f"{fp} is listed in model.safetensors.index.json but missing")
      header, data_start = _read_header(fp)
      for tname, info in header.items():
        if tname == "__metadata__":
          continue
        if tname in self.entries:
          raise ValueError(f"tensor {tname} appears in both {self.entries[tname].file} and {fp}")
        if info["dtype"] not in _ST_DTYPES:
          raise ValueError(f"{fp}: tensor {tname} has unsupported dtype {info['dtype']}")
        self.entries[tname] = _Entry(fp, _ST_DTYPES[info["dtype"]], tuple(info["shape"]),
                                     data_start + info["data_offsets"][0])
    self._fds: dict[str, int] = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    for fd in self._fds.values():
      os.close(fd)
    self._fds.clear()

  def names(self) -> set[str]:
    return set(self.entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return self.entries[name].shape

  def _fd(self, file: str) -> int:
    if file not in self._fds:
      self._fds[file] = os.open(file, os.O_RDONLY)
    return self._fds[file]

  def read(self, name: str, index: Sequence[slice] | None = None) -> np.ndarray:
    """tensor[index] for a tuple of unit-stride slices, reading the covering rows only."""
    e = self.entries[name]
    shape = e.shape
    index = tuple(index or ()) + (slice(None),) * (len(shape) - len(index or ()))
    if not shape:  # scalar
      lo, hi, rest = 0, 1, ()
    else:
      lo, hi = index[0].indices(shape[0])[:2]
      rest = index[1:]
    row = int(np.prod(shape[1:], dtype=np.int64)) * e.dtype.itemsize
    nbytes = (hi - lo) * row
    buf = np.empty(nbytes, np.uint8)  # not zero-filled, unlike bytearray
    view, fd, off, got = memoryview(buf).cast("B"), self._fd(e.file), e.start + lo * row, 0
    while got < nbytes:
      n = os.preadv(fd, [view[got:]], off + got)
      if n <= 0:
        raise IOError(f"{e.file}: unexpected end of file reading {name}")
      got += n
    block = buf.view(e.dtype).reshape((hi - lo,) + shape[1:])
    if any(s != slice(None) for s in rest):
      block = np.ascontiguousarray(block[(slice(None),) + rest])
    return block


def _st_header(entries: Sequence[tuple[str, np.dtype, tuple[int, ...]]]) -> tuple[bytes, list[int]]:
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offsets, pos = [], 0
  for name, dtype, shape in entries:
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    header[name] = {"dtype": _ST_NAMES[np.dtype(dtype)], "shape": list(shape),
                    "data_offsets": [pos, pos + n]}
    offsets.append(pos)
    pos += n
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  return struct.pack("<Q", len(raw)) + raw, offsets


def write_safetensors_dir(path: str, entries: Sequence[tuple[str, Any, tuple[int, ...]]],
                          get_tensor: Callable[[str], np.ndarray],
                          max_shard_bytes: float = 2e9) -> list[str]:
  """Write tensors (name, dtype, shape) into model.safetensors or numbered shards + index.

  Tensors are requested with `get_tensor(name)` one at a time, in order, and written straight
  to disk; memory use is one tensor. Returns the file names written.
  """
  entries = [(n, np.dtype(d), tuple(int(x) for x in s)) for n, d, s in entries]
  shards: list[list] = [[]]
  size = 0
  for e in entries:
    n = int(np.prod(e[2], dtype=np.int64)) * e[1].itemsize
    if shards[-1] and size + n > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += n
  names = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  # Weights of an earlier save into the same directory would otherwise be read as well.
  for old in os.listdir(path):
    if old == "model.safetensors.index.json" or (old.startswith("model") and
                                                 old.endswith(".safetensors")):
      os.remove(os.path.join(path, old))
  weight_map, total = {}, 0
  for fname, shard in zip(names, shards):
    header, _ = _st_header(shard)
    tmp = os.path.join(path, fname + ".tmp")
    with open(tmp, "wb") as f:
      f.write(header)
      for name, dtype, shape in shard:
        w = np.asarray(get_tensor(name))
        if w.shape != shape:
          raise ValueError(f"{name}: expected shape {shape}, got {w.shape}")
        w = np.ascontiguousarray(w.astype(dtype, copy=False))
        f.write(memoryview(w.reshape(-1).view(np.uint8)))
        total += w.nbytes
        weight_map[name] = fname
        del w
    os.replace(tmp, os.path.join(path, fname))
  if len(shards) > 1:
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return names


# ----------------------------------------------------------------------------- config files


def read_hf_config(path: str) -> dict:
  fp = os.path.join(path, "config.json")
  if not os.path.exists(fp):
    raise FileNotFoundError(f"{path} has no config.json (not a HF model directory?)")
  with open(fp) as f:
    return json.load(f)


def model_config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
  """ModelConfig from `dataclasses.asdict(cfg)` (e.g. a trainer's model_config.json)."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(d) - fields)
  if unknown:
    logging.warning("ignoring unknown ModelConfig fields %s", unknown)
  kw = {k: v for k, v in d.items() if k in fields}
  rs = kw.get("rope_scaling")
  if rs is not None and not isinstance(rs, Mapping):
    kw["rope_scaling"] = {k: v for k, v in rs}  # JSON turned the tuple of pairs into lists
  return ModelConfig(**kw)


def save_model_config(cfg: ModelConfig, path: str) -> None:
  with open(path, "w") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2)


def load_model_config(path: str) -> ModelConfig:
  with open(path) as f:
    return model_config_from_dict(json.load(f))


# ----------------------------------------------------------------------------- load


def _resolve_names(layout, available: set[str]) -> dict[str, str]:
  """our hf name -> name in the checkpoint (also accepts a bare-model 'layers.0...' layout)."""
  out = {}
  for t in layout:
    for n0 in t.hf_names:
      n = n0
      if n not in available and n.startswith("model.") and n[len("model."):] in available:
        n = n[len("model."):]
      out[n0] = n
  return out


def load_hf_dir(path: str, *, mesh: jax.sharding.Mesh | None = None, rules=None,
                param_dtype: Any = None, strict: bool = True,
                **overrides) -> tuple[ModelConfig, dict]:
  """Load a HF Llama / Qwen2 / Mistral / SmolLM2 / Qwen3 / Qwen3-MoE directory into sharded
  params.

  Args:
    path: directory with config.json and model.safetensors (or shards + index json).
    mesh: target mesh (default: a 1-device mesh on the first device).
    rules: logical -> mesh axis rules (default `mesh.DEFAULT_RULES`).
    param_dtype: storage dtype of the params (default: the config's, float32).
    strict: fail on checkpoint tensors the model would not use.
    **overrides: ModelConfig fields to replace (dtype="bfloat16", remat=True, ...).
  Returns:
    (cfg, params) with params a nested dict of jax.Arrays laid out as `init_params(cfg)`,
    each sharded as `named_sharding(mesh, param_axes(cfg)[path], shape, rules)`.
  """
  t0 = time.perf_counter()
  if param_dtype is not None:
    overrides["param_dtype"] = param_dtype
  cfg = hf_lib.config_from_hf(read_hf_config(path), **overrides)
  if mesh is None:
    mesh = mesh_lib.make_mesh((1, 1, 1), jax.devices()[:1])
  dtype = jnp.dtype(cfg.param_dtype)
  layout = hf_layout.param_layout(cfg)
  axes = param_axes(cfg)
  params: dict = {}
  with SafetensorsDir(path) as st:
    available = st.names()
    names = _resolve_names(layout, available)
    missing = [n for n, got in names.items() if got not in available]
    if missing:
      hint = (" (config.json has tie_word_embeddings=false; the checkpoint may tie them)"
              if missing == ["lm_head.weight"] else "")
      raise ValueError(f"{path}: checkpoint is missing {len(missing)} tensor(s) the config "
                       f"needs: {missing[:8]}{' ...' if len(missing) > 8 else ''}{hint}")
    bad = [f"{n}: checkpoint {st.shape(names[n])} vs config {t.hf_shape}"
           for t in layout for n in t.hf_names if st.shape(names[n]) != t.hf_shape]
    if bad:
      raise ValueError(f"{path}: tensor shapes do not match config.json: {bad[:8]}")
    used = set(names.values())
    unexpected = sorted(n for n in available - used if not n.endswith(_IGNORED_SUFFIXES)
                        and not (cfg.tie_embeddings and n == "lm_head.weight"))
    if unexpected:
      msg = f"{path}: checkpoint has {len(unexpected)} tensor(s) the model does not use: {unexpected[:8]}"
      if strict:
        raise ValueError(msg + " (pass strict=False to ignore them)")
      logging.warning(msg)

    for t in layout:
      sharding = mesh_lib.named_sharding(mesh, hf_layout.get_path(axes, t.path), t.shape, rules)
      rows: dict = {}  # (name, row range) -> rows read, shared by the device shards of a param

      def read(t, name, index, rows=rows):
        hf_index, finish = t.hf_slice(index)
        key = (name, hf_index[0].indices(t.hf_shape[0])[:2])
        if key not in rows:
          rows.clear()  # keep at most one block (<= one HF tensor) alive
          rows[key] = st.read(name, hf_index[:1])
        block = rows[key][(slice(None),) + tuple(hf_index[1:])]
        return np.ascontiguousarray(finish(block)).astype(dtype, copy=False)

      def cb(index, t=t):
        if not t.experts:
          return read(t, names[t.hf_name], index)
        # A stacked expert param: its shard's experts, one HF tensor each.
        index = tuple(index) + (slice(None),) * (len(t.shape) - len(index))
        lo, hi = index[0].indices(t.experts)[:2]
        return np.stack([read(t.expert_layout, names[t.hf_name.format(e=e)], index[1:])
                         for e in range(lo, hi)])

      arr = jax.make_array_from_callback(t.shape, sharding, cb)
      rows.clear()
      hf_layout.set_path(params, t.path, arr)
  jax.block_until_ready(params)
  logging.info("loaded %s (%d tensors) in %.1fs", path, len(layout), time.perf_counter() - t0)
  return cfg, params


# ----------------------------------------------------------------------------- save


def _fetch(x: jax.Array) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
  copied = []
  for name in TOKENIZER_FILES:
    fp = os.path.join(src, name)
    if os.path.isfile(fp):
      shutil.copyfile(fp, os.path.join(dst, name))
      copied.append(name)
  return copied


def save_hf_dir(params: Mapping, cfg: ModelConfig, path: str, *, tokenizer_dir: str | None = None,
                max_shard_bytes: float = 2e9, dtype: Any = "float32",
                architecture: str | None = None) -> list[str]:
  """Write params as a HF directory transformers' `from_pretrained` loads.

  config.json, model.safetensors (or model-0000k-of-0000n.safetensors shards +
  model.safetensors.index.json), and the tokenizer / generation_config files found in
  `tokenizer_dir`. If `tokenizer_dir` has a config.json, its bos/eos/pad token ids are kept.
  Params are fetched to host one at a time. Under multi-process JAX every process must call
  this (gathers are collective); only process 0 writes. Returns the files written.
  """
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.dtype("float32"), jnp.dtype("bfloat16"), jnp.dtype("float16")):
    raise ValueError(f"save dtype must be float32, bfloat16 or float16, got {dtype}")
  layout = hf_layout.param_layout(cfg)
  expected = jax.tree_util.tree_structure(param_shapes(cfg))
  got = jax.tree_util.tree_structure(params)
  if got != expected:
    raise ValueError(f"params do not match cfg: expected structure {expected}, got {got}")
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(path, exist_ok=True)
  by_name = {n: (t, e) for t in layout for e, n in enumerate(t.hf_names)}
  last: dict = {}  # the stacked expert param being written, fetched once for its E tensors

  def get_tensor(name):
    t, e = by_name[name]
    if not t.experts:
      return t.to_hf(_fetch(hf_layout.get_path(params, t.path)))
    if last.get("path") != t.path:
      last.clear()
      last.update(path=t.path, w=_fetch(hf_layout.get_path(params, t.path)))
    return t.expert_layout.to_hf(last["w"][e])

  files = []
  if writer:
    hf_cfg = hf_lib.config_to_hf(cfg, architecture, dtype=dtype.name)
    if tokenizer_dir and os.path.exists(os.path.join(tokenizer_dir, "config.json")):
      base = read_hf_config(tokenizer_dir)
      hf_cfg.update({k: base[k] for k in hf_lib.TOKEN_ID_FIELDS if k in base})
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump(hf_cfg, f, indent=2)
    files.append("config.json")
    entries = [(n, dtype, t.hf_shape) for t in layout for n in t.hf_names]
    files += write_safetensors_dir(path, entries, get_tensor, max_shard_bytes)
    if len(files) > 2:
      files.append("model.safetensors.index.json")
    if tokenizer_dir:
      files += copy_tokenizer_files(tokenizer_dir, path)
  else:  # join the collective gathers in the same order as process 0
    for t in layout:
      _fetch(hf_layout.get_path(params, t.path))
  return files
