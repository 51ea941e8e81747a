"""Memory knobs of a train step: optimizer state sharded like the params, remat policies.

- `init_state(params, tx, trainable)`: the train state with every param-shaped optimizer leaf
  (Adam's mu / nu) laid out like its param (FSDP-sharded params -> FSDP-sharded moments). Left
  to sharding propagation, `tx.init`'s zeros come back replicated: on an `fsdp` mesh of n devices
  every device would hold the whole optimizer state.
- `remat_policy(name)`: `model.remat` values -> `jax.checkpoint` policies.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from r1jax import steps

# model.remat: False/"" = off; True/"full" = save nothing inside a block (recompute it all).
REMAT_POLICIES = ("full", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "everything_saveable")


def remat_policy(name: Any) -> Callable | None:
  """The `jax.checkpoint` policy of a `model.remat` value (None: save nothing)."""
  if name is True or name in ("full", "nothing_saveable"):
    return jax.checkpoint_policies.nothing_saveable
  if name in REMAT_POLICIES:
    return getattr(jax.checkpoint_policies, name)
  raise ValueError(f"model.remat={name!r}; choose False or one of {REMAT_POLICIES}")


def _identity(params: Any) -> Any:
  return params


def abstract_state(params: Any, tx: optax.GradientTransformation,
                   trainable: Callable[[Any], Any] = _identity) -> steps.TrainState:
  """ShapeDtypeStructs of `init_state(params, tx, trainable)`."""
  return jax.eval_shape(lambda p: steps.TrainState(jnp.zeros((), jnp.int32), p,
                                                   tx.init(trainable(p))), params)


def state_shardings(params: Any, tx: optax.GradientTransformation,
                    trainable: Callable[[Any], Any] = _identity) -> steps.TrainState:
  """Shardings of `init_state(params, tx, trainable)`: param-shaped optimizer leaves like
  their param, the rest (counts, scalars) replicated on the params' mesh."""
  param_sh = jax.tree.map(lambda x: x.sharding, params)
  leaf = jax.tree.leaves(param_sh)[0]
  scalar = (jax.sharding.NamedSharding(leaf.mesh, jax.sharding.PartitionSpec())
            if isinstance(leaf, jax.sharding.NamedSharding) else leaf)
  # Adam's mu / nu mirror the params tree: an optimizer leaf whose path ends with a param's
  # path (and has its shape) takes that param's sharding.
  by_path = {tuple(path): (x.shape, x.sharding)
             for path, x in jax.tree_util.tree_flatten_with_path(trainable(params))[0]}

  def place(path, leaf):
    for i in range(len(path)):
      hit = by_path.get(tuple(path[i:]))
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return scalar

  opt_sh = jax.tree_util.tree_map_with_path(place, abstract_state(params, tx, trainable).opt_state)
  return steps.TrainState(scalar, param_sh, opt_sh)


def init_state(params: Any, tx: optax.GradientTransformation,
               trainable: Callable[[Any], Any] = _identity) -> steps.TrainState:
  """The train state: step 0, `params`, `tx`'s state for `trainable(params)` (all params, or
  e.g. LoRA's adapters), sharded like those params (see module doc)."""
  init = lambda p: steps.TrainState(jnp.zeros((), jnp.int32), p, tx.init(trainable(p)))
  return jax.jit(init, out_shardings=state_shardings(params, tx, trainable))(params)
