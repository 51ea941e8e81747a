"""Jitted pure steps shared by the trainers: optimizer, train state, update, log-probs.

`train_step(state, batch) -> (state, metrics)` computes the loss gradient over
micro-batches (a `lax.scan` accumulating gradients, so memory is set by the
micro-batch), clips the global norm and applies AdamW. State is donated. A step whose loss
or gradient norm is not finite leaves params and optimizer state unchanged
(`keep_if_nonfinite`; the trainer stops after too many in a row, `r1jax.nonfinite`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-6
  warmup_steps: int = 0
  schedule: str = "constant"  # constant | cosine | linear
  total_steps: int = 1000
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-8
  max_grad_norm: float = 1.0

  def __post_init__(self):
    if self.schedule not in ("constant", "cosine", "linear"):
      raise ValueError(f"optim.schedule={self.schedule!r}; choose constant|cosine|linear")
    if self.learning_rate <= 0:
      raise ValueError(f"optim.learning_rate must be > 0, got {self.learning_rate}")


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
  decay = max(cfg.total_steps - cfg.warmup_steps, 1)
  if cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.learning_rate, decay)
  elif cfg.schedule == "linear":
    main = optax.linear_schedule(cfg.learning_rate, 0.0, decay)
  else:
    main = optax.constant_schedule(cfg.learning_rate)
  if cfg.warmup_steps <= 0:
    return main
  warm = optax.linear_schedule(cfg.learning_rate / max(cfg.warmup_steps, 1), cfg.learning_rate,
                               cfg.warmup_steps)
  return optax.join_schedules([warm, main], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig, decay_mask: Callable[[Any], Any] | None = None
                   ) -> optax.GradientTransformation:
  """AdamW on `cfg`'s schedule (after global-norm clipping); `decay_mask(params)` -> a tree
  of bools, False where weight decay must not apply (e.g. `moe.decay_mask`: router biases,
  which no gradient trains)."""
  tx = optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                   weight_decay=cfg.weight_decay, mask=decay_mask)
  if cfg.max_grad_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), tx)
  return tx


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  opt_state: Any


def _split_micro(tree: Any, n_micro: int) -> Any:
  return jax.tree.map(lambda x: x.reshape((n_micro, x.shape[0] // n_micro) + x.shape[1:]), tree)


def make_train_step(loss_fn: Callable[[Any, Any], tuple[jax.Array, dict]],
                    tx: optax.GradientTransformation, n_micro: int = 1,
                    micro_weight: Callable[[Any], jax.Array] | None = None,
                    post_update: Callable[[Any, dict], tuple[Any, dict]] | None = None
                    ) -> Callable:
  """`loss_fn(params, batch, *consts) -> (loss, metrics)`; returns an un-jitted train step
  `train_step(state, batch, *consts)`. `consts` are frozen inputs that are not split into
  micro-batches (e.g. a distillation teacher's params).

  With micro-batches, each micro-batch's loss, metrics and gradients are weighted by
  `micro_weight(micro_batch)` / the batch total (None: equally), so the update equals the
  full-batch one: equal weights for per-sequence means (equal-sized micro-batches), the
  completion-token count for a global token mean (DAPO's token-mean).

  `post_update(params, metrics) -> (params, metrics)` runs after the optimizer's update
  (e.g. `moe.balancing_update`: DeepSeek-V3's router-bias step from the batch's loads); a
  non-finite step discards its result with the rest.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: Any, *consts: Any) -> tuple[TrainState, dict]:
    if n_micro == 1:
      (loss, metrics), grads = grad_fn(state.params, batch, *consts)
    else:
      micro = _split_micro(batch, n_micro)
      if micro_weight is None:
        weights = jnp.full((n_micro,), 1.0 / n_micro, jnp.float32)
      else:
        sizes = jax.vmap(micro_weight)(micro).astype(jnp.float32)
        total = sizes.sum()
        weights = jnp.where(total > 0, sizes / jnp.where(total > 0, total, 1.0), 1.0 / n_micro)

      def body(acc, xs):
        mb, wt = xs
        (l, m), g = grad_fn(state.params, mb, *consts)
        # (cast back: bf16 params' gradients would otherwise turn float32 in the carry)
        return jax.tree.map(lambda a, x: a + (wt * x).astype(a.dtype), acc, (l, m, g)), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      shapes = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro),
                              *consts)
      init = (jnp.zeros(()), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[0][1]),
              zeros)
      (loss, metrics, grads), _ = jax.lax.scan(body, init, (micro, weights))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if post_update is not None:
      params, metrics = post_update(params, metrics)
    grad_norm = optax.tree_utils.tree_norm(grads)
    params, opt_state, skip = keep_if_nonfinite(loss, grad_norm, (params, opt_state),
                                                (state.params, state.opt_state))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, **skip)
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def keep_if_nonfinite(loss: jax.Array, grad_norm: jax.Array, new: Any, old: Any
                      ) -> tuple[Any, Any, dict]:
  """`new` (params, optimizer state) if loss and gradient norm are finite, else `old`.

  A NaN/inf step is skipped, not applied (the step counter still advances). Returns the
  kept pair and the metrics `nonfinite_skipped` (1 if skipped), `nonfinite_loss` and
  `nonfinite_grad` (which quantity was not finite), read by `r1jax.nonfinite.Guard`.
  """
  bad_loss, bad_grad = ~jnp.isfinite(loss), ~jnp.isfinite(grad_norm)
  skip = bad_loss | bad_grad
  kept = jax.tree.map(lambda n, o: jnp.where(skip, o, n), new, old)
  return (*kept, {"nonfinite_skipped": skip.astype(jnp.int32),
                  "nonfinite_loss": bad_loss.astype(jnp.int32),
                  "nonfinite_grad": bad_grad.astype(jnp.int32)})


def jit_train_step(train_step: Callable, state: TrainState) -> Callable:
  """jit `train_step` with the state donated and the new state pinned to `state`'s shardings.

  Left to sharding propagation, an updated parameter can come back laid out differently from
  the one that went in (e.g. a replicated norm scale sharded over fsdp), so the layout would
  drift from the logical-axis rules and the next call would recompile.
  """
  shardings = jax.tree.map(lambda x: x.sharding, state)
  return jax.jit(train_step, donate_argnums=0, out_shardings=(shardings, None))
