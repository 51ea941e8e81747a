"""Jitted sampling: one prefill, then a `lax.while_loop` decode over a KV cache.

`generate(params, cfg, prompt_tokens, prompt_mask, rng, scfg)` takes left-padded
prompts [B, P] and returns G completions per prompt (rows ordered prompt-major:
row b*G + g is sample g of prompt b). Everything stays on device: no host
synchronisation inside the decode loop, which exits early once every row is done.

Where the time goes, and what is done about it (SmolLM2-135M on CPU; `python -m
r1jax.bench.sampling` measures it):
- Shapes are bucketed so a new batch does not recompile: prompt length by `pad_prompts`
  (and `prefill_chunk`), batch size by padding with dummy prompt rows (`batch_bucket`)
  that start finished and are dropped from the output.
- The prompt's prefill runs once (the model's `forward`, into a cache of exactly the
  prompt's length) and is shared by its G samples.
- Decoding uses its own one-token step over a head-major cache `[R, Hkv, S, Dh]`, so the
  attention dots read K/V in place; with the model's `[R, S, Hkv, Dh]` layout XLA
  transposes the whole cache of every layer at every step (the largest cost after the
  weight matmuls, growing with the cache length). The step reuses the model's building
  blocks (`rms_norm`, RoPE, `unembed_matrix`) and is checked against `forward`.
- `decode_dtype="bfloat16"` stores the decode weights and the KV cache in bf16 (half the
  bytes per step) with float32-accumulating dots; on XLA's CPU backend a bf16 dot that
  returns float32 runs ~1.6x faster than a float32 dot, one that returns bf16 slower.
- The cache is split into `cache_chunks` segments of static length: segment j runs its own
  decode loop attending over the first P + (j+1)*N/cache_chunks slots only.
- Sampling never sorts the vocabulary (a [32, 49152] sort costs more than the model's decode
  step on CPU) and draws few Gumbels: top-p / top-k sample among `lax.top_k` candidates;
  when those do not cover the nucleus (`lax.cond`), the exact nucleus cut-off is found by
  bisection over the float order and the token is drawn block-wise; unfiltered sampling
  draws a vocabulary block by its mass, then a token inside it (exact); greedy is max +
  first index (XLA's variadic argmax reduce is slow on CPU).
- Random draws are per sample and position (`_sample_keys`: `fold_in(rng, step, row)`), so
  a row's sample does not depend on the batch it was padded into, nor on the decode slot it
  runs in under continuous batching (`mode="continuous"`, r1jax/continuous.py: finished
  rows' slots take the next samples, so steps are not spent on finished rows).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.mesh import batch_parallel_size, constrain, current_mesh, named_sharding
from r1jax.model import ModelConfig, positions_from_mask, unembed_matrix  # noqa: F401
from r1jax.decode import (  # noqa: F401 - the building blocks, re-exported
    _BLOCK, _blocked_categorical, _Cache, _choose, _decode_step, _decode_weights,
    _filtered_sample, _first_argmax, _fuse_default, _K_AXES, _k_transposed, _mm,
    _no_experts, _nucleus_cutoff, _ordered_key, _pad_length, _prefill, _prompt_cache, _repeat_rows,
    _row_categorical, _row_keys, _sample_keys, _V_AXES, filter_logits, SampleOutput,
    SamplingConfig)
from r1jax import continuous

# The SamplingConfig fields a config section may set (the others are per-run extras).
SECTION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "num_samples",
                "decode_dtype", "mode", "num_slots", "kv_block")


def config_from(section: Any, **extra) -> SamplingConfig:
  """The SamplingConfig of a config section (a dict or ConfigDict): the SECTION_KEYS it has
  (the others keep their defaults; its other keys are ignored), then `extra` fields."""
  kw = {k: section[k] for k in SECTION_KEYS if k in section}
  return SamplingConfig(**{**kw, **extra})



@functools.partial(jax.jit, static_argnames=("cfg", "scfg"))
def _generate(params: Any, cfg: ModelConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
              num_prompts: jax.Array, rng: jax.Array, limits: jax.Array,
              scfg: SamplingConfig) -> SampleOutput:
  """`generate` on a bucketed batch: prompt rows >= num_prompts are dummies (start done);
  row r stops after limits[r] tokens."""
  b, p = prompt_tokens.shape
  g, n = scfg.num_samples, scfg.max_new_tokens
  rows = b * g
  wdt = jnp.dtype(scfg.decode_dtype or cfg.dtype)
  fuse = _fuse_default() if scfg.fuse_weights is None else scfg.fuse_weights
  last, pcache, next_pos, pexperts = _prompt_cache(params, cfg, prompt_tokens, prompt_mask,
                                                    scfg)

  # Share the prefill among the G samples of each prompt; room for the first segment's tokens.
  chunks = scfg.cache_chunks or min(4, max(1, n // 64))
  seg = -(-n // min(chunks, n))  # decode tokens per cache segment
  bounds = list(range(0, n, seg))[1:] + [n]
  pcache = _pad_length(pcache, bounds[0])
  k_axes = _K_AXES if _k_transposed(wdt) else _V_AXES
  cache = _Cache(tuple(constrain(_repeat_rows(x, g), k_axes) for x in pcache.k),
                 tuple(constrain(_repeat_rows(x, g), _V_AXES) for x in pcache.v),
                 _repeat_rows(pcache.mask, g))
  w = _decode_weights(params, cfg, fuse, wdt)
  last = constrain(_repeat_rows(last, g), ("batch", "vocab"))
  next_pos = _repeat_rows(next_pos, g)
  eos = jnp.asarray(scfg.eos_ids or (-1,), jnp.int32)
  real = jnp.arange(rows) < num_prompts * g

  tok, lp = _choose(last, _row_keys(rng, jnp.asarray(0, jnp.int32), rows), scfg)
  done = jnp.isin(tok, eos) | ~real | (limits <= 1)
  tokens = jnp.full((rows, n), scfg.pad_id, jnp.int32).at[:, 0].set(tok)
  logps = jnp.zeros((rows, n), jnp.float32).at[:, 0].set(lp)
  mask = jnp.zeros((rows, n), bool).at[:, 0].set(True)
  experts = _no_experts(cfg, rows, n) if scfg.return_experts else None

  def body(carry):
    t, tok, cache, tokens, logps, done, mask, experts = carry
    live = ~done
    logits, cache, *chosen = _decode_step(w, cfg, tok, next_pos + t - 1, live, cache, p + t - 1,
                                          scfg.return_experts)
    if chosen:  # the routing of input token t - 1
      chosen = jnp.where(live[:, None, None], chosen[0], -1)
      experts = jax.lax.dynamic_update_slice_in_dim(experts, chosen[:, :, None], t - 1, axis=2)
    new_tok, lp = _choose(logits, _row_keys(rng, t, rows), scfg)
    new_tok = jnp.where(live, new_tok, scfg.pad_id)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new_tok[:, None], t, axis=1)
    logps = jax.lax.dynamic_update_slice_in_dim(logps, jnp.where(live, lp, 0.0)[:, None], t, 1)
    mask = jax.lax.dynamic_update_slice_in_dim(mask, live[:, None], t, axis=1)
    done = done | jnp.isin(new_tok, eos) | (t + 1 >= limits)
    return t + 1, new_tok, cache, tokens, logps, done, mask, experts

  carry = (jnp.asarray(1, jnp.int32), tok, cache, tokens, logps, done, mask, experts)
  for j, end in enumerate(bounds):
    if j:  # grow the cache to the next segment's length
      carry = carry[:2] + (_pad_length(carry[2], end - bounds[j - 1]),) + carry[3:]
    carry = jax.lax.while_loop(lambda c, end=end: (c[0] < end) & ~jnp.all(c[5]), body, carry)
  _, _, _, tokens, logps, _, mask, experts = carry
  return SampleOutput(tokens, mask.astype(jnp.int32), logps, mask.sum(-1).astype(jnp.int32),
                      experts, None if pexperts is None else _repeat_rows(pexperts, g))


def batch_bucket(b: int, bucket: int = 0, multiple: int = 1) -> int:
  """The padded batch size for `b` prompts (see `SamplingConfig.batch_bucket`)."""
  if bucket == 1:
    size = b
  elif bucket > 1:
    size = -(-b // bucket) * bucket
  elif b <= 8:
    size = b
  else:  # m * 2^e with m in {4, 5, 6, 7}: at most 25% padding, O(log b) distinct sizes
    e = 1 << (b.bit_length() - 3)
    size = -(-b // e) * e
  return -(-size // multiple) * multiple


def generate(params: Any, cfg: ModelConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             rng: jax.Array, scfg: SamplingConfig,
             max_lengths: jax.Array | None = None) -> SampleOutput:
  """Sample `scfg.num_samples` completions for each left-padded prompt.

  Pads the batch to its bucket (and the prompt to a multiple of `scfg.prefill_chunk`)
  before calling the jitted sampler, so that batches of one bucket share a compilation;
  the padding rows are dropped from the result. `max_lengths` [B*G] (optional) caps each
  row's completion below `scfg.max_new_tokens`. `scfg.mode` picks the static sampler or
  continuous batching (`r1jax.continuous`); both return the same tokens for the same key.
  """
  b, p = prompt_tokens.shape
  g, n = scfg.num_samples, scfg.max_new_tokens
  dp = batch_parallel_size(current_mesh())
  bb = batch_bucket(b, scfg.batch_bucket, dp)
  pc = scfg.prefill_chunk
  pp = -(-p // pc) * pc if pc and p > pc else p
  toks, mask = prompt_tokens, prompt_mask
  if (bb, pp) != (b, p):
    xp = np if isinstance(toks, np.ndarray) and isinstance(mask, np.ndarray) else jnp
    widths = ((0, bb - b), (pp - p, 0))
    toks = xp.pad(toks, widths, constant_values=scfg.pad_id)
    mask = xp.pad(mask, widths)
  limits = np.full(bb * g, n, np.int32)
  if max_lengths is not None:
    limits[:b * g] = np.minimum(np.asarray(max_lengths), n)
  mesh = current_mesh()
  if mesh is not None:
    put = lambda x: jax.device_put(x, named_sharding(mesh, ("batch", None), np.shape(x)))
    toks, mask = put(toks), put(mask)
  if scfg.mode == "continuous":
    slots = min(scfg.num_slots or max(1, b * g // 2), b * g)  # more would idle
    out = continuous.generate_continuous(params, cfg, toks, mask, jnp.asarray(b, jnp.int32), rng,
                                         jnp.asarray(limits), scfg, -(-slots // dp) * dp)
  else:
    out = _generate(params, cfg, toks, mask, jnp.asarray(b, jnp.int32), rng, jnp.asarray(limits),
                    scfg)
  if bb != b:
    out = SampleOutput(*(None if x is None else x[:b * g] for x in out))
  if out.prompt_experts is not None and pp != p:  # drop prefill_chunk's extra left padding
    out = out._replace(prompt_experts=out.prompt_experts[:, :, pp - p:])
  return out


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
