"""Full-logits reference: materialises [N, V] and uses `jax.nn.log_softmax`.

For tests and benchmarks only; plain autodiff gives its gradients.
"""
from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp


def naive_token_logprobs(hidden: jax.Array, unembed: jax.Array, targets: jax.Array,
                         temperature: float = 1.0, *, return_entropy: bool = False,
                         axis_name: Hashable | None = None):
  """log p(targets) (and entropy) from full [N, V] float32 logits.

  With `axis_name`, `unembed` holds this shard's vocab slice (inside
  shard_map) and the softmax normaliser is reduced over that mesh axis.
  """
  z = jnp.dot(hidden, unembed, preferred_element_type=jnp.float32) / temperature
  t = targets.astype(jnp.int32)[:, None]
  if axis_name is None:
    logsm = jax.nn.log_softmax(z, axis=-1)
    logp = jnp.take_along_axis(logsm, t, axis=-1)[:, 0]
    ent = -jnp.sum(jnp.exp(logsm) * logsm, axis=-1)
  else:
    v = unembed.shape[1]
    m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True)), axis_name)
    lse = m + jnp.log(jax.lax.psum(jnp.sum(jnp.exp(z - m), -1, keepdims=True), axis_name))
    cols = jax.lax.axis_index(axis_name) * v + jnp.arange(v)
    logp = jax.lax.psum(jnp.sum(jnp.where(cols == t, z, 0.0), -1), axis_name) - lse[:, 0]
    logsm = z - lse
    ent = -jax.lax.psum(jnp.sum(jnp.exp(logsm) * logsm, -1), axis_name)
  return (logp, ent) if return_entropy else logp
