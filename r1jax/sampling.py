"""Jitted sampling: one prefill, then a `lax.while_loop` decode over a KV cache.

`generate(params, cfg, prompt_tokens, prompt_mask, rng, scfg)` takes left-padded
prompts [B, P] and returns G completions per prompt (rows ordered prompt-major:
row b*G + g is sample g of prompt b). The prompt's KV cache is computed once and
broadcast to its G samples. Rows stop at their first EOS; the loop exits early once
every row is done. Everything stays on device: no host synchronisation inside.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.model import ModelConfig, forward, init_cache, positions_from_mask, unembed_matrix


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 128
  temperature: float = 1.0  # 0 means greedy
  top_p: float = 1.0
  top_k: int = 0  # 0 disables
  num_samples: int = 1  # G completions per prompt
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0

  def __post_init__(self):
    if self.max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0 or self.num_samples < 1:
      raise ValueError(f"bad top_k={self.top_k} or num_samples={self.num_samples}")


class SampleOutput(NamedTuple):
  tokens: jax.Array  # [B*G, N] completion tokens (pad after EOS)
  mask: jax.Array  # [B*G, N] 1 for generated tokens, EOS included
  logprobs: jax.Array  # [B*G, N] log p(token) under softmax(logits / temperature)
  lengths: jax.Array  # [B*G] number of generated tokens


def filter_logits(logits: jax.Array, top_p: float, top_k: int) -> jax.Array:
  """Mask logits outside the top-k and outside the top-p nucleus with -inf."""
  if top_k <= 0 and top_p >= 1.0:
    return logits
  neg = jnp.finfo(logits.dtype).min
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  v = logits.shape[-1]
  cutoff = jnp.full(logits.shape[:-1] + (1,), neg, logits.dtype)
  if top_k > 0:
    cutoff = jnp.maximum(cutoff, sorted_logits[..., min(top_k, v) - 1:min(top_k, v)])
  if top_p < 1.0:
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least one token).
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = before < top_p
    idx = jnp.sum(keep, axis=-1, keepdims=True) - 1
    cutoff = jnp.maximum(cutoff, jnp.take_along_axis(sorted_logits, idx, axis=-1))
  return jnp.where(logits < cutoff, -jnp.inf, logits)


def _sample(logits: jax.Array, rng: jax.Array, scfg: SamplingConfig):
  """logits [B, V] float32 -> (token [B], logprob [B] under softmax(logits / T))."""
  if scfg.temperature == 0.0:
    tok = jnp.argmax(logits, axis=-1)
    logp = jax.nn.log_softmax(logits, axis=-1)
  else:
    scaled = logits / scfg.temperature
    logp = jax.nn.log_softmax(scaled, axis=-1)
    tok = jax.random.categorical(rng, filter_logits(scaled, scfg.top_p, scfg.top_k), axis=-1)
  return tok.astype(jnp.int32), jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]


def _repeat_rows(x: jax.Array, g: int) -> jax.Array:
  return jnp.repeat(x, g, axis=0) if g > 1 else x


@functools.partial(jax.jit, static_argnames=("cfg", "scfg"))
def generate(params: Any, cfg: ModelConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             rng: jax.Array, scfg: SamplingConfig) -> SampleOutput:
  """Sample `scfg.num_samples` completions for each left-padded prompt."""
  b, p = prompt_tokens.shape
  g, n = scfg.num_samples, scfg.max_new_tokens
  prompt_mask = prompt_mask.astype(bool)
  positions = positions_from_mask(prompt_mask)
  cache = init_cache(cfg, b, p + n)
  hidden, cache = forward(params, cfg, prompt_tokens, positions, prompt_mask, cache,
                          return_hidden=True)
  last = jnp.einsum("bd,dv->bv", hidden[:, -1], unembed_matrix(params, cfg).astype(hidden.dtype),
                    preferred_element_type=jnp.float32)
  # Share the prefill among the G samples of each prompt.
  rep = functools.partial(_repeat_rows, g=g)
  cache = cache._replace(k=tuple(map(rep, cache.k)), v=tuple(map(rep, cache.v)),
                         mask=rep(cache.mask))
  last = _repeat_rows(last, g)
  next_pos = _repeat_rows(positions[:, -1] + 1, g)
  rows = b * g
  eos = jnp.asarray(scfg.eos_ids or (-1,), jnp.int32)

  rng, sub = jax.random.split(rng)
  tok, lp = _sample(last, sub, scfg)
  done = jnp.isin(tok, eos)
  tokens = jnp.full((rows, n), scfg.pad_id, jnp.int32).at[:, 0].set(tok)
  logps = jnp.zeros((rows, n), jnp.float32).at[:, 0].set(lp)
  mask = jnp.zeros((rows, n), bool).at[:, 0].set(True)

  def cond(carry):
    t, _, _, _, _, done, _, _ = carry
    return (t < n) & ~jnp.all(done)

  def body(carry):
    t, tok, cache, tokens, logps, done, mask, rng = carry
    pos = (next_pos + t - 1)[:, None]
    logits, cache = forward(params, cfg, tok[:, None], pos, (~done)[:, None], cache)
    rng, sub = jax.random.split(rng)
    new_tok, lp = _sample(logits[:, -1], sub, scfg)
    live = ~done
    new_tok = jnp.where(live, new_tok, scfg.pad_id)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new_tok[:, None], t, axis=1)
    logps = jax.lax.dynamic_update_slice_in_dim(logps, jnp.where(live, lp, 0.0)[:, None], t, 1)
    mask = jax.lax.dynamic_update_slice_in_dim(mask, live[:, None], t, axis=1)
    done = done | jnp.isin(new_tok, eos)
    return t + 1, new_tok, cache, tokens, logps, done, mask, rng

  carry = (jnp.asarray(1, jnp.int32), tok, cache, tokens, logps, done, mask, rng)
  _, _, _, tokens, logps, _, mask, _ = jax.lax.while_loop(cond, body, carry)
  return SampleOutput(tokens, mask.astype(jnp.int32), logps, mask.sum(-1).astype(jnp.int32))


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0, bucket: int = 32,
                min_len: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-pad token lists to a common length rounded up to `bucket` (fewer recompiles)."""
  longest = max(max(len(p) for p in prompts), min_len, 1)
  length = -(-longest // bucket) * bucket if bucket > 1 else longest
  toks = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    if len(p):
      toks[i, length - len(p):] = p
      mask[i, length - len(p):] = 1
  return toks, mask
