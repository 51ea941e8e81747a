"""`token_logprobs`: log p(target) (and entropy) without materialising [N, V] logits.

One `jax.custom_vjp` serves every implementation. Its forward asks the chosen
implementation for per-row partial statistics over the (local) vocabulary,
merges them across a vocab-sharded mesh axis when `axis_name` is given, and
saves only (hidden, unembed, targets, two [N] vectors) for the backward, which
recomputes logits block by block. Called outside of differentiation it costs
only the forward pass.

Gradients under `shard_map` with vocab-sharded `unembed`:
  * with vma checking (the default), `hidden` is cast to varying on entry, so
    the backward returns this shard's partial d hidden and autodiff sums it over
    the axis (the transpose of that cast);
  * with `check_vma=False`, the incoming cotangent is summed over the axis in
    the backward, matching what autodiff through `psum` does in that mode.
Both match differentiating the same computation written with plain jnp and
collectives (see `naive_token_logprobs`).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from . import pallas_gpu, pallas_tpu, sharded, xla
from .common import combine, match_vma, sum_to_vma, vma_of
from .reference import naive_token_logprobs

# Per impl: {platform: (implementation, interpret)}; "default" covers the rest.
# The choice is made when lowering (lax.platform_dependent), not from the
# default backend, so e.g. exporting for TPU from a CPU host gets the kernel.
# "auto" on GPU is the chunked XLA path: on an H200 (jax 0.11.2, bf16, D=1536,
# V=151936) the Triton kernel took 223 ms forward+backward for 8192 tokens
# against XLA's 33 ms (README "On a GPU"); "pallas_gpu" still selects it.
_TPU, _GPU, _XLA = ("pallas_tpu", False), ("pallas_gpu", False), ("xla", False)
BRANCHES = {
    "auto": {"tpu": _TPU, "default": _XLA},
    "xla": {"default": _XLA},
    "pallas": {"tpu": _TPU, "cuda": _GPU, "rocm": _GPU, "default": ("pallas_tpu", True)},
    "pallas_tpu": {"tpu": _TPU, "default": ("pallas_tpu", True)},
    "pallas_gpu": {"cuda": _GPU, "rocm": _GPU, "default": ("pallas_gpu", True)},
}
IMPLS = ("naive", *BRANCHES)
XLA_BLOCK_V = 2048


@dataclasses.dataclass(frozen=True)
class _Plan:
  impl: str                    # a key of BRANCHES
  inv_temp: float
  entropy: bool
  axis_name: Hashable | None
  block_n: int | None
  block_v: int | None
  reduce_cotangent: bool       # shard_map without vma checking


def _axes(axis_name) -> tuple:
  return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _static_temperature(temperature) -> float:
  if isinstance(temperature, jax.core.Tracer):
    raise TypeError("temperature must be a static Python float, not a traced value")
  t = float(temperature)
  if not t > 0:
    raise ValueError(f"temperature must be > 0, got {t}")
  return t


def _run(plan: _Plan, what: str, *args):
  """Calls `stats` or `bwd` of the implementation chosen per lowering platform."""
  def call(kind: str, interpret: bool, *args):
    if kind == "xla":
      return getattr(xla, what)(*args, inv_temp=plan.inv_temp,
                                block_v=plan.block_v or XLA_BLOCK_V, **extra)
    mod = pallas_tpu if kind == "pallas_tpu" else pallas_gpu
    return getattr(mod, what)(*args, inv_temp=plan.inv_temp, block_n=plan.block_n,
                              block_v=plan.block_v, interpret=interpret, **extra)

  extra = {"entropy": plan.entropy} if what == "stats" else {}
  branches = BRANCHES[plan.impl]
  if len(branches) == 1:
    return call(*branches["default"], *args)
  fns = {p: functools.partial(call, *b) for p, b in branches.items()}
  return lax.platform_dependent(*args, **fns)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(plan: _Plan, h, w, t):
  return _fused_fwd(plan, h, w, t)[0]


def _fused_fwd(plan: _Plan, h, w, t):
  if plan.axis_name is not None:  # targets are global ids; shift into this shard
    t = t - lax.axis_index(plan.axis_name) * w.shape[1]
  # Ids outside this slice must not hit the kernels' padded vocab columns.
  t = jnp.where((t >= 0) & (t < w.shape[1]), t, -1)
  m, l, r, zt = _run(plan, "stats", h, w, t)
  if plan.axis_name is not None:
    m, l, r, zt = combine(m, l, r, zt, plan.axis_name)
  log_l = jnp.log(l)
  lse = m + log_l
  logp = zt - lse
  if not plan.entropy:
    return logp, (h, w, t, lse, None)
  mean_z = m + r / l  # E_p[z]
  return (logp, log_l - r / l), (h, w, t, lse, mean_z)


def _fused_bwd(plan: _Plan, res, g):
  h, w, t, lse, mean_z = res
  gl, ge = g if plan.entropy else (g, None)
  if plan.reduce_cotangent:
    gl = lax.psum(gl, plan.axis_name)
    ge = None if ge is None else lax.psum(ge, plan.axis_name)
  if ge is None:
    a, b = -gl, jnp.zeros_like(gl)
  else:  # d entropy / dz_j = p_j (E[z] - z_j)
    a, b = ge * mean_z - gl, ge
  dh, dw = _run(plan, "bwd", h, w, t, lse, a, b, gl)
  return sum_to_vma(dh, h), sum_to_vma(dw, w), None


_fused.defvjp(_fused_fwd, _fused_bwd)


def token_logprobs(hidden: jax.Array, unembed: jax.Array, targets: jax.Array,
                   temperature: float = 1.0, *, return_entropy: bool = False,
                   impl: str = "auto", block_n: int | None = None,
                   block_v: int | None = None, axis_name: Hashable | None = None,
                   mesh=None, row_axes: Sequence[str] | None = None,
                   vocab_axes: Sequence[str] | None = None):
  """log softmax(hidden @ unembed / temperature)[targets], never forming [N, V].

  Args:
    hidden: [N, D] final hidden states (bf16 or fp32).
    unembed: [D, V] unembedding (LM head); with `axis_name`, this shard's
      contiguous vocab slice inside `shard_map`.
    targets: [N] int token ids (global ids when vocab-sharded). No gradient.
    temperature: static Python float > 0 (not differentiated).
    return_entropy: also return the entropy of the softmax per token; its
      gradient flows into hidden and unembed too.
    impl: "auto" (Pallas on TPU, "xla" on GPU and CPU), "xla" (chunked scan),
      "pallas" (this backend's kernel; the TPU kernel interpreted on CPU),
      "pallas_tpu" / "pallas_gpu" (interpreted off their backend), or "naive"
      (full logits, for tests and benchmarks).
    block_n, block_v: static token / vocab block sizes (None: per-backend
      defaults; "xla" ignores block_n).
    axis_name: mesh axis (or tuple) over which `unembed` is vocab-sharded, when
      called inside `shard_map` on this shard's operands.
    mesh, row_axes, vocab_axes: outside `shard_map`, operands on a mesh of several
      devices (`mesh`, else the mesh the operands carry) are split over it: rows over
      `row_axes`, the vocabulary over `vocab_axes` (see `kernels/sharded.py` for the
      defaults). This is what lets the Pallas kernels run on sharded operands.

  Returns:
    logp [N] float32, or (logp, entropy) when return_entropy.
  """
  temperature = _static_temperature(temperature)
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if hidden.ndim != 2 or unembed.ndim != 2 or hidden.shape[1] != unembed.shape[0]:
    raise ValueError(f"want hidden [N, D] and unembed [D, V]; got {hidden.shape}, {unembed.shape}")
  if targets.shape != hidden.shape[:1]:
    raise ValueError(f"targets must be [N]={hidden.shape[:1]}, got {targets.shape}")
  if axis_name is None:
    mesh = mesh if mesh is not None else sharded.operand_mesh(hidden, unembed)
    if mesh is not None and mesh.size > 1:
      per_shard = lambda h, w, t, axis: token_logprobs(
          h, w, t, temperature, return_entropy=return_entropy, impl=impl, block_n=block_n,
          block_v=block_v, axis_name=axis)
      return sharded.shard_mapped(per_shard, mesh, hidden, unembed, targets, row_axes,
                                  vocab_axes, n_out=2 if return_entropy else 1)
  if impl == "naive":
    return naive_token_logprobs(hidden, unembed, targets, temperature,
                                return_entropy=return_entropy, axis_name=axis_name)
  dtype = jnp.result_type(hidden, unembed)
  hidden, unembed = hidden.astype(dtype), unembed.astype(dtype)
  checked = axis_name is not None and set(_axes(axis_name)) <= vma_of(unembed)
  if checked:  # d hidden then comes back per shard and autodiff psums it
    hidden = match_vma(hidden, unembed)
  plan = _Plan(impl=impl, inv_temp=1.0 / temperature, entropy=return_entropy,
               axis_name=axis_name, block_n=block_n, block_v=block_v,
               reduce_cotangent=axis_name is not None and not checked)
  return _fused(plan, hidden, unembed, targets.astype(jnp.int32))
