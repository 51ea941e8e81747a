"""Accelerator chips and topologies for ahead-of-time compilation (`r1jax.aot`).

`CHIPS` holds each generation's per-chip HBM, peak dense bf16 FLOP/s and HBM bandwidth,
with where each figure comes from; `topology_devices(name)` returns the compile-only
devices of a TPU topology ("v5p:2x2x2", "v5e:2x4", "v6e:1x1", ...) built by libtpu on any
host, no TPU needed (`jax.experimental.topologies`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  platform: str          # "tpu" | "gpu"
  hbm_bytes: int         # per chip
  peak_flops: float      # dense bf16 FLOP/s per chip
  hbm_bw: float          # bytes/s per chip
  source: str            # where the three figures come from
  devices_per_chip: int = 1
  chips_per_host: tuple[int, int, int] = (2, 2, 1)


CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", "tpu", 32 * GiB, 275e12, 1228e9,
               "cloud.google.com/tpu/docs/v4 (32 GiB HBM2, 275 TFLOP/s bf16, 1228 GB/s)"),
    "v5e": Chip("TPU v5e", "tpu", 16 * GiB, 197e12, 819e9,
                "cloud.google.com/tpu/docs/v5e (16 GiB HBM2, 197 TFLOP/s bf16, 819 GB/s)"),
    "v5p": Chip("TPU v5p", "tpu", 95 * GiB, 459e12, 2765e9,
                "cloud.google.com/tpu/docs/v5p (95 GiB HBM2e, 459 TFLOP/s bf16, 2765 GB/s)"),
    "v6e": Chip("TPU v6e (Trillium)", "tpu", 32 * GiB, 918e12, 1640e9,
                "cloud.google.com/tpu/docs/v6e (32 GiB HBM, 918 TFLOP/s bf16, 1640 GB/s)"),
    "h100": Chip("NVIDIA H100 SXM", "gpu", 80 * 10**9, 989e12, 3.35e12,
                 "nvidia.com H100 datasheet (80 GB HBM3, 989 TFLOP/s dense bf16, 3.35 TB/s)",
                 chips_per_host=(8, 1, 1)),
    "h200": Chip("NVIDIA H200 SXM", "gpu", 141 * 10**9, 989e12, 4.8e12,
                 "nvidia.com H200 datasheet (141 GB HBM3e, 989 TFLOP/s dense bf16, 4.8 TB/s)",
                 chips_per_host=(8, 1, 1)),
}

_NAME = re.compile(r"^([a-z0-9]+):(\d+(?:x\d+){0,2})$")


def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
  """"v5p:2x2x2" -> (CHIPS["v5p"], (2, 2, 2)); one clear error for anything else."""
  m = _NAME.match(name.strip().lower())
  if not m or m.group(1) not in CHIPS:
    raise ValueError(f"--topology={name!r}: want GENERATION:AxB[xC] with GENERATION one of "
                     f"{sorted(CHIPS)}, e.g. v5p:2x2x2, v5e:2x4, v6e:1x1, h100:8")
  dims = tuple(int(x) for x in m.group(2).split("x"))
  if any(d < 1 for d in dims):
    raise ValueError(f"--topology={name!r}: every dimension must be >= 1")
  return CHIPS[m.group(1)], dims


def num_chips(dims: tuple[int, ...]) -> int:
  out = 1
  for d in dims:
    out *= d
  return out


def _load_tpu_plugin() -> None:
  """Load libtpu for compile-only use, with its noise about the missing TPU silenced."""
  import os
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no chip to guard
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_WORKER_ID", "0")


def gpu_devices(name: str, chip: Chip, n: int) -> list[Any]:
  """The first `n` local GPUs, for "h100:N" / "h200:N": JAX 0.10 cannot compile for CUDA
  without a GPU, so a GPU plan is compiled on the GPU host itself."""
  import jax
  try:
    devs = jax.devices("gpu")
  except RuntimeError:
    devs = []
  if not devs:
    raise ValueError(f"--topology={name!r} is a GPU: JAX 0.10 cannot compile for CUDA without "
                     "a GPU, so run it on a GPU host (the GPU kernels are lowered for CUDA here: "
                     "tests/test_kernels.py)")
  if len(devs) < n:
    raise ValueError(f"--topology={name!r} wants {n} GPUs; this host has {len(devs)}")
  kind = devs[0].device_kind
  if chip.name.split()[1].lower() not in kind.lower():
    print(f"r1jax.aot: note: --topology={name!r} but the local GPU is {kind!r}; the roofline "
          f"uses {chip.name}'s figures")
  return devs[:n]


def topology_devices(name: str) -> tuple[Chip, list[Any]]:
  """(chip, devices to compile for): compile-only devices of a TPU topology, from libtpu on
  this host; for a GPU topology, the local GPUs."""
  chip, dims = parse_topology(name)
  _load_tpu_plugin()  # also before a GPU backend starts: jax[tpu] loads libtpu with it
  if chip.platform == "gpu":
    return chip, gpu_devices(name, chip, num_chips(dims))
  from jax.experimental import topologies
  gen = name.split(":")[0].strip().lower()
  dims3 = (dims + (1, 1))[:3]
  kw: dict[str, Any] = {}
  if gen == "v4":
    kw["chip_config_name"] = "megacore"  # one device per chip, as jax.devices() on a v4 host
  single_host = gen in ("v5e", "v6e") and num_chips(dims) <= 8  # v5litepod-8 / v6e-8: 1 host
  if single_host or any(d % h for d, h in zip(dims3, chip.chips_per_host)) or num_chips(dims) < 4:
    kw["chips_per_host_bounds"] = dims3 if single_host else tuple(
        min(d, h) for d, h in zip(dims3, chip.chips_per_host))
  try:
    desc = topologies.get_topology_desc(topology_name=f"{gen}:{'x'.join(map(str, dims))}",
                                        platform="tpu", **kw)
  except Exception as e:  # libtpu's own words name the problem
    raise ValueError(f"--topology={name!r}: libtpu refused it: {str(e).splitlines()[0]}") from e
  return chip, list(desc.devices)
