"""Scalar reward head on our transformer, and the reward-model losses (pure functions).

A reward model is the policy's params pytree plus a `value_head` entry {"w": [D], "b": []}:
the score of a sequence is `w . h + b`, h the final-normed hidden state of its LAST
NON-PAD token (so left- and right-padded batches score alike), or with pool="mean" the mean
over its non-pad tokens (POOLS, the table of `head.pool`). Losses:
  bt_loss  Bradley-Terry, -log sigmoid(r_chosen - r_rejected - margin), plus the optional
           reward-centering term coef * (r_chosen + r_rejected)^2 (keeps scores near 0);
  orm_loss binary cross-entropy of sigmoid(r) against a 0/1 correctness label (an
           outcome verifier), optionally weighted per row by CLASS_WEIGHTS (the table of
           `loss.class_balance`: "none", or "balanced" so each class weighs half).
Used by r1jax/reward_model.py and the GRPO reward (rm_reward); both tokenize with `encode`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r1jax.model import ModelConfig, forward, positions_from_mask

HEAD = "value_head"


def encode(texts: Sequence[str], tokenizer, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded [N, max_len] tokens and mask; each text keeps its last max_len tokens."""
  toks = np.full((len(texts), max_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(texts), max_len), np.int32)
  for i, t in enumerate(texts):
    ids = tokenizer.encode(t)[-max_len:]
    toks[i, :len(ids)], mask[i, :len(ids)] = ids, 1
  return toks, mask


def init_head(cfg: ModelConfig) -> dict[str, jax.Array]:
  """A zero head: every sequence scores 0 before training (the Bradley-Terry optimum of no
  data), so the first gradients come from the loss, not from a random offset."""
  return {"w": jnp.zeros((cfg.hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def head_axes() -> dict[str, tuple]:
  """Logical axes of the head's params (the vector lies along `embed`)."""
  return {"w": ("embed",), "b": ()}


def last_token_index(mask: jax.Array) -> jax.Array:
  """[B] index of each row's last non-pad position (mask [B, T], any padding side); 0 for an
  all-pad row."""
  t = mask.shape[1]
  idx = jnp.arange(t)[None, :]
  return jnp.max(jnp.where(mask.astype(bool), idx, 0), axis=1)


def pool_last(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """hidden [B, T, D] -> [B, D] at each row's last non-pad token."""
  return jnp.take_along_axis(hidden, last_token_index(mask)[:, None, None], axis=1)[:, 0]


def pool_mean(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """hidden [B, T, D] -> [B, D], the mean over each row's non-pad tokens (0 for all-pad)."""
  m = mask.astype(jnp.float32)[:, :, None]
  return jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


# `head.pool`: which hidden state the head reads.
POOLS = {"last": pool_last, "mean": pool_mean}


def scores(params: dict[str, Any], cfg: ModelConfig, tokens: jax.Array,
           mask: jax.Array, pool: str = "last") -> jax.Array:
  """float32 [B] reward of each (padded) sequence; positions count real tokens only."""
  hidden, _ = forward(params, cfg, tokens, positions_from_mask(mask), mask, return_hidden=True)
  h = POOLS[pool](hidden, mask).astype(jnp.float32)
  head = params[HEAD]
  return h @ head["w"] + head["b"]


def bt_loss(r_chosen: jax.Array, r_rejected: jax.Array, margin: jax.Array | float = 0.0,
            center_coef: float = 0.0, weights: jax.Array | None = None) -> jax.Array:
  """Mean over pairs of -log sigmoid(r_c - r_r - margin) + center_coef * (r_c + r_r)^2.

  `weights` (0/1 per pair) masks padding pairs out of the mean.
  """
  per = -jax.nn.log_sigmoid(r_chosen - r_rejected - margin)
  if center_coef:
    per = per + center_coef * jnp.square(r_chosen + r_rejected)
  return _mean(per, weights)


def orm_loss(r: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean binary cross-entropy of sigmoid(r) against labels in {0, 1}."""
  return _mean(optax.sigmoid_binary_cross_entropy(r, labels.astype(r.dtype)), weights)


def _balanced(labels: np.ndarray) -> np.ndarray:
  """n / (classes present * n_class) per row: each class's rows weigh 1/classes in total
  (sklearn's class_weight="balanced"); the mean weight stays 1."""
  y = np.asarray(labels) > 0.5
  counts = {c: int(np.sum(y == c)) for c in (False, True)}
  k = sum(1 for n in counts.values() if n)
  return np.asarray([len(y) / (k * counts[c]) for c in y], np.float32)


# `loss.class_balance` -> per-row BCE weights from the training labels.
CLASS_WEIGHTS = {"none": lambda labels: np.ones(len(labels), np.float32),
                 "balanced": _balanced}


def _mean(x: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.mean(x)
  w = weights.astype(x.dtype)
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def with_head(params: dict[str, Any], cfg: ModelConfig, mesh, head: dict | None = None,
              rules=None) -> dict[str, Any]:
  """The model's params plus a `value_head` (zero-initialised unless given), placed on
  `mesh` by the logical-axis rules like the rest of the params."""
  from r1jax import mesh as mesh_lib
  head = init_head(cfg) if head is None else head
  placed = {k: jax.device_put(v, mesh_lib.named_sharding(mesh, head_axes()[k], v.shape, rules))
            for k, v in head.items()}
  return {**params, HEAD: placed}
