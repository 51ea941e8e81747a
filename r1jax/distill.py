"""SFT and logit-distillation losses, streamed over vocabulary blocks.

Pure functions. Cross-entropy goes through the fused `token_logprobs` kernel; the
distillation divergences between a teacher's and a student's temperature-softened
next-token distributions are computed block by block over the vocabulary (a `lax.scan`
whose body is rematerialised), so neither model's `[tokens, vocab]` logits exist at once:
scratch memory is O(tokens x block_v).

Divergences (`DIVERGENCES`, the values of `distill.divergence`; per token, then
masked-token-mean), with p = teacher, q = student:
  forward_kl   KL(p || q)                          (TRL GKD's beta=0, Hinton KD)
  reverse_kl   KL(q || p)                          (on-policy / MiniLLM style)
  jsd          generalised JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m),
               m = beta p + (1 - beta) q           (GKD, Agarwal et al. 2024; `distill.beta`)
The streamed kernels take GKD's single number for the family (`DistillConfig.kd_beta`:
0 forward KL, 1 reverse KL, else JSD(beta)).
`top_k > 0` restricts both distributions to the teacher's top-k ids (per token) and
renormalises them there. Total SFT loss (`sft_objective`):
  alpha * T^2 * KD + (1 - alpha) * CE            (alpha = 0: plain SFT)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from r1jax.mesh import kernel_axes
from r1jax.model import ModelConfig, forward, unembed_matrix

_NEG = -1e30  # logit of a padded vocabulary column


def _forward_kl(lp, lq, beta):
  p = jnp.exp(lp)
  return p * (lp - lq), -p


def _reverse_kl(lp, lq, beta):
  q = jnp.exp(lq)
  return q * (lq - lp), q * (lq - lp + 1.0)


def _jsd(lp, lq, beta):
  q = jnp.exp(lq)
  lm = jnp.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))
  f = beta * jnp.exp(lp) * (lp - lm) + (1.0 - beta) * q * (lq - lm)
  return f, (1.0 - beta) * q * (lq - lm)


# distill.divergence -> (teacher log-probs lp, student log-probs lq, beta) -> (f, c) per
# vocabulary entry: f sums to the divergence, c = d f / d lq (see `_coefficients`).
DIVERGENCES: dict[str, Callable] = {"forward_kl": _forward_kl, "reverse_kl": _reverse_kl,
                                    "jsd": _jsd}
KD_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}  # their place in GKD's family


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  alpha: float = 0.0  # weight of the KD term; 0 = plain SFT (no teacher needed)
  divergence: str = "forward_kl"  # DIVERGENCES
  beta: float = 0.5  # JSD's mixture weight, in (0, 1) (divergence="jsd" only)
  temperature: float = 1.0
  top_k: int = 0  # restrict to the teacher's top-k ids (0 = full vocabulary)
  block_v: int = 4096  # vocabulary block of the streamed divergence
  logprob_impl: str = "auto"  # CE kernel implementation (r1jax.kernels.token_logprobs)

  def __post_init__(self):
    if not 0 <= self.alpha <= 1:
      raise ValueError(f"distill.alpha={self.alpha} must be in [0, 1]")
    if self.divergence not in DIVERGENCES:
      raise ValueError(f"distill.divergence={self.divergence!r}: unknown; choose one of "
                       f"{tuple(DIVERGENCES)}")
    if self.divergence == "jsd" and not 0 < self.beta < 1:
      raise ValueError(f"distill.beta={self.beta} must be in (0, 1) (0 and 1 are "
                       "divergence='forward_kl' and 'reverse_kl')")
    if not self.temperature > 0:
      raise ValueError(f"distill.temperature={self.temperature} must be > 0")
    if self.top_k < 0 or self.block_v < 1:
      raise ValueError(f"distill.top_k={self.top_k} must be >= 0 and block_v={self.block_v} >= 1")


  @property
  def kd_beta(self) -> float:
    """GKD's number for the chosen divergence (0 forward KL, 1 reverse KL, else JSD)."""
    return KD_BETA.get(self.divergence, self.beta)


def from_config(c: Any) -> DistillConfig:
  """The DistillConfig of an SFT config (its `distill` section); `distill.beta` set (not
  None) with a divergence other than jsd is an error, since nothing would read it."""
  d = c.distill
  if d.beta is not None and d.divergence != "jsd":
    raise ValueError(f"distill.beta={d.beta}: ignored unless distill.divergence='jsd'; "
                     "leave it unset")
  beta = {} if d.beta is None else {"beta": d.beta}
  return DistillConfig(alpha=d.alpha, divergence=d.divergence, temperature=d.temperature,
                       top_k=d.top_k, block_v=d.block_v, logprob_impl=d.logprob_impl, **beta)


def uses_teacher(c: Any) -> bool:
  """Whether an SFT config needs its teacher (a KD term or on-policy batches)."""
  return c.distill.alpha > 0 or c.distill.on_policy > 0


def divergence(lp: jax.Array, lq: jax.Array, beta: float) -> jax.Array:
  """Elementwise contribution of each vocabulary entry, from log-probs of teacher (lp) and
  student (lq); summing over the vocabulary gives the divergence."""
  return _coefficients(lp, lq, beta)[0]


def _coefficients(lp: jax.Array, lq: jax.Array, beta: float):
  """(f, c) per vocabulary entry of the divergence GKD's `beta` names (`DIVERGENCES`): f sums
  to the divergence, c = d f / d lq (the student's log-prob). d divergence / d (student
  logit j) = c_j - q_j * sum_v c_v."""
  name = {0.0: "forward_kl", 1.0: "reverse_kl"}.get(beta, "jsd")
  return DIVERGENCES[name](lp, lq, beta)


def _logits(h, wb, inv_t):
  return jax.lax.dot_general(h, wb, (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32) * inv_t


def _scan_blocks(w: jax.Array, block_v: int, body, init):
  """`body(carry, (start, column ids, fresh-column mask), j)` over vocabulary blocks; the last
  block is clamped to end at V (its overlap masked), so no weight is padded or copied."""
  from r1jax.kernels.xla import _block
  v = w.shape[1]
  bv = min(block_v, v)

  def step(carry, j):
    start, _, cols, fresh = _block(w, j, bv)
    return body(carry, start, bv, fresh), None

  out, _ = jax.lax.scan(step, init, jnp.arange(-(-v // bv)))
  return out


def _lse(h, w, inv_t, block_v):
  def body(acc, start, bv, fresh):
    z = jnp.where(fresh, _logits(h, jax.lax.dynamic_slice_in_dim(w, start, bv, 1), inv_t), _NEG)
    return jnp.logaddexp(acc, jax.nn.logsumexp(z, axis=-1))
  return _scan_blocks(w, block_v, body, jnp.full((h.shape[0],), _NEG, jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _streamed(h_t, w_t, h_s, w_s, beta, inv_t, block_v):
  return _streamed_fwd(h_t, w_t, h_s, w_s, beta, inv_t, block_v)[0]


def _block_logprobs(h_t, w_t, h_s, w_s, lse_t, lse_s, start, bv, inv_t):
  lp = _logits(h_t, jax.lax.dynamic_slice_in_dim(w_t, start, bv, 1), inv_t) - lse_t[:, None]
  lq = _logits(h_s, jax.lax.dynamic_slice_in_dim(w_s, start, bv, 1), inv_t) - lse_s[:, None]
  return lp, lq


def _streamed_fwd(h_t, w_t, h_s, w_s, beta, inv_t, block_v):
  lse_t, lse_s = _lse(h_t, w_t, inv_t, block_v), _lse(h_s, w_s, inv_t, block_v)

  def body(acc, start, bv, fresh):
    lp, lq = _block_logprobs(h_t, w_t, h_s, w_s, lse_t, lse_s, start, bv, inv_t)
    f, c = _coefficients(lp, lq, beta)
    return (acc[0] + jnp.where(fresh, f, 0.0).sum(-1), acc[1] + jnp.where(fresh, c, 0.0).sum(-1))

  zeros = jnp.zeros((h_s.shape[0],), jnp.float32)
  div, csum = _scan_blocks(w_s, block_v, body, (zeros, zeros))
  return div, (h_t, w_t, h_s, w_s, lse_t, lse_s, csum)


def _streamed_bwd(beta, inv_t, block_v, res, g):
  h_t, w_t, h_s, w_s, lse_t, lse_s, csum = res
  nt = (((1,), (1,)), ((), ()))  # [n, v] x [d, v] -> [n, d]
  tn = (((0,), (0,)), ((), ()))  # [n, d] x [n, v] -> [d, v]

  def body(carry, start, bv, fresh):
    dh, dw = carry
    lp, lq = _block_logprobs(h_t, w_t, h_s, w_s, lse_t, lse_s, start, bv, inv_t)
    _, c = _coefficients(lp, lq, beta)
    dz = jnp.where(fresh, (c - jnp.exp(lq) * csum[:, None]) * (g * inv_t)[:, None], 0.0)
    wb = jax.lax.dynamic_slice_in_dim(w_s, start, bv, 1)
    dh = dh + jax.lax.dot_general(dz.astype(w_s.dtype), wb, nt,
                                  preferred_element_type=jnp.float32)
    dwb = jax.lax.dot_general(h_s, dz.astype(h_s.dtype), tn, preferred_element_type=jnp.float32)
    old = jax.lax.dynamic_slice_in_dim(dw, start, bv, 1)
    dw = jax.lax.dynamic_update_slice_in_dim(dw, jnp.where(fresh, dwb.astype(dw.dtype), old),
                                             start, 1)
    return dh, dw

  dh, dw = _scan_blocks(w_s, block_v, body, (jnp.zeros(h_s.shape, jnp.float32),
                                             jnp.zeros(w_s.shape, w_s.dtype)))
  # The teacher is frozen: no gradient flows to it.
  return jnp.zeros_like(h_t), jnp.zeros_like(w_t), dh.astype(h_s.dtype), dw


_streamed.defvjp(_streamed_fwd, _streamed_bwd)


def streamed_divergence(h_t: jax.Array, w_t: jax.Array, h_s: jax.Array, w_s: jax.Array,
                        beta: float, temperature: float = 1.0, block_v: int = 4096
                        ) -> jax.Array:
  """Per-token divergence [N] between softmax(h_t w_t / T) and softmax(h_s w_s / T) over
  the full vocabulary, streamed in blocks of `block_v` columns (two passes: log-normalisers,
  then the divergence). Its custom backward recomputes each block and accumulates the
  student's gradients in place, so no [N, V] tensor and no copy of either unembedding is
  ever made. The teacher gets no gradient."""
  if w_t.shape[1] != w_s.shape[1]:
    raise ValueError(f"teacher vocabulary {w_t.shape[1]} != student vocabulary {w_s.shape[1]}")
  return _streamed(h_t, w_t, h_s, w_s, float(beta), 1.0 / float(temperature), int(block_v))


def teacher_top_k(h_t: jax.Array, w_t: jax.Array, k: int, temperature: float = 1.0,
                  block_v: int = 4096) -> tuple[jax.Array, jax.Array]:
  """The teacher's k largest tempered logits per token and their ids, streamed: ([N, k],
  [N, k] int32). No gradient."""
  inv_t = 1.0 / temperature
  h_t, w_t = jax.lax.stop_gradient(h_t), jax.lax.stop_gradient(w_t)
  n = h_t.shape[0]

  def body(carry, start, bv, fresh):
    vals, ids = carry
    z = jnp.where(fresh, _logits(h_t, jax.lax.dynamic_slice_in_dim(w_t, start, bv, 1), inv_t),
                  _NEG)
    bvals, bids = jax.lax.top_k(z, min(k, bv))
    vals, pick = jax.lax.top_k(jnp.concatenate([vals, bvals], -1), k)
    ids = jnp.take_along_axis(jnp.concatenate([ids, bids + start], -1), pick, -1)
    return vals, ids

  return _scan_blocks(w_t, block_v, body, (jnp.full((n, k), _NEG, jnp.float32),
                                           jnp.zeros((n, k), jnp.int32)))


def top_k_divergence(h_t: jax.Array, w_t: jax.Array, h_s: jax.Array, w_s: jax.Array,
                     beta: float, k: int, temperature: float = 1.0, block_v: int = 4096,
                     block_n: int = 1024) -> jax.Array:
  """Per-token divergence [N] with both distributions restricted to the teacher's top-k ids
  and renormalised there. The student's logits at those ids are gathered in token blocks."""
  if w_t.shape[1] != w_s.shape[1]:
    raise ValueError(f"teacher vocabulary {w_t.shape[1]} != student vocabulary {w_s.shape[1]}")
  if k > w_t.shape[1]:
    raise ValueError(f"distill.top_k={k} exceeds the vocabulary size {w_t.shape[1]}")
  zt, ids = teacher_top_k(h_t, w_t, k, temperature, block_v)
  n, d = h_s.shape
  bn = min(block_n, n)
  pad = -(-n // bn) * bn - n
  hs = jnp.pad(h_s, ((0, pad), (0, 0))).reshape(-1, bn, d)
  idb = jnp.pad(ids, ((0, pad), (0, 0))).reshape(-1, bn, k)

  @jax.checkpoint
  def gather(_, xs):
    h, i = xs
    cols = jnp.take(w_s, i, axis=1)  # [D, bn, k]
    return None, jnp.einsum("nd,dnk->nk", h, cols, preferred_element_type=jnp.float32)

  _, zs = jax.lax.scan(gather, None, (hs, idb))
  zs = zs.reshape(-1, k)[:n] / temperature
  lp = jax.nn.log_softmax(zt, axis=-1)
  lq = jax.nn.log_softmax(zs, axis=-1)
  return divergence(lp, lq, beta).sum(-1)


def kd_per_token(h_t, w_t, h_s, w_s, cfg: DistillConfig) -> jax.Array:
  h_t, w_t = jax.lax.stop_gradient(h_t), jax.lax.stop_gradient(w_t)
  if cfg.top_k:
    return top_k_divergence(h_t, w_t, h_s, w_s, cfg.kd_beta, cfg.top_k, cfg.temperature,
                            cfg.block_v)
  return streamed_divergence(h_t, w_t, h_s, w_s, cfg.kd_beta, cfg.temperature, cfg.block_v)


def hidden_states(params: Any, model_cfg: ModelConfig, batch: dict) -> jax.Array:
  """Final hidden states [B*L, D] of packed rows (segments attend only to themselves)."""
  h, _ = forward(params, model_cfg, batch["tokens"], batch["positions"],
                 batch["segment_ids"] > 0, return_hidden=True, segment_ids=batch["segment_ids"])
  return h.reshape(-1, h.shape[-1])


def sft_objective(params: Any, batch: dict, model_cfg: ModelConfig, cfg: DistillConfig,
                  teacher_params: Any = None, teacher_cfg: ModelConfig | None = None
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """alpha * T^2 * KD + (1 - alpha) * CE over the loss-masked tokens of packed rows, as one
  token mean over the batch (micro-batches are weighted by `token_count`)."""
  from r1jax.kernels import token_logprobs
  h = hidden_states(params, model_cfg, batch)
  w = unembed_matrix(params, model_cfg).astype(h.dtype)
  mask = batch["loss_mask"].reshape(-1).astype(jnp.float32)
  ntok = jnp.maximum(mask.sum(), 1.0)
  logp = token_logprobs(h, w, batch["targets"].reshape(-1), impl=cfg.logprob_impl,
                        **kernel_axes())
  ce = -(logp * mask).sum() / ntok
  metrics = {"ce": ce}
  if cfg.alpha == 0.0:
    return ce, metrics
  if teacher_params is None or teacher_cfg is None:
    raise ValueError("distill.alpha > 0 needs a teacher")
  h_t = hidden_states(teacher_params, teacher_cfg, batch)
  w_t = unembed_matrix(teacher_params, teacher_cfg).astype(h_t.dtype)
  kd = (kd_per_token(h_t, w_t, h, w, cfg) * mask).sum() / ntok
  metrics["kd"] = kd
  loss = cfg.alpha * cfg.temperature ** 2 * kd + (1.0 - cfg.alpha) * ce
  return loss, metrics


def sft_loss(params: Any, batch: dict, teacher_params: Any, model_cfg: ModelConfig,
             dcfg: DistillConfig, teacher_cfg: ModelConfig | None):
  """`sft_objective` with the teacher's params as the train step's extra input."""
  return sft_objective(params, batch, model_cfg, dcfg, teacher_params, teacher_cfg)


def token_count(batch: dict) -> jax.Array:
  """Micro-batch weight for `steps.make_train_step`: one global token mean."""
  return batch["loss_mask"].sum()
