"""Continuous batching: `num_slots` decode rows, each refilled with the next pending sample
as soon as its sample ends (EOS or its length limit), until all B*G samples are done.

`sampling.generate` calls `generate_continuous` when `SamplingConfig.mode == "continuous"`;
the output is the static sampler's (`SampleOutput`, rows prompt-major) with the same tokens
for the same key: token t of sample row r is drawn with `sampling._sample_keys(rng, t, r)`
whichever slot it runs in and whenever it starts.

Why it pays: the static sampler decodes every row until the longest one ends, so with
long-tailed completion lengths most of its decode steps are spent on finished rows. Here a
step decodes `num_slots` rows that are (nearly) all live.

How, all in one jitted `lax.while_loop` (no host round trip, one compilation per batch
bucket and prompt length, as the static sampler):
- The prompts are prefilled once, up front (in `prefill_chunk` chunks if set) and shared by
  their G samples (`_prompt_cache`, as the static path). Starting a sample in a slot copies its prompt's KV (P slots) into the
  slot's cache rows and samples its first token from the prompt's last logits: a copy, not
  a second prefill. The price is holding the B prompts' KV ([B, P]) for the whole call.
- Each slot's cache is [prompt P | completion N] (rounded up to whole blocks: multiples of
  `kv_block`, at most `MAX_BLOCKS` of them); slots sit at different positions, so the decode
  step writes one cache slot per row (a scatter) and attends block by block up to the
  longest filled slot (`decode_attention.blocked`; the static path's `cache_chunks` segments
  do not apply; `kv_block=0`: the whole cache).
- After each step, free slots take the next pending rows in order (an inner while_loop, so
  a sample whose first token is EOS frees its slot at once).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from r1jax.mesh import constrain
from r1jax.model import ModelConfig
from r1jax.decode import (_K_AXES, _V_AXES, SampleOutput, SamplingConfig, _Cache, _choose,
                            _decode_step, _decode_weights, _fuse_default, _k_transposed,
                            _no_experts, _pad_length, _prompt_cache, _repeat_rows, _sample_keys)


class _Slots(NamedTuple):
  row: jax.Array  # [S] sample row (b*G + g) the slot decodes
  t: jax.Array  # [S] index of the completion token the next step produces
  tok: jax.Array  # [S] the last token (the next step's input)
  pos0: jax.Array  # [S] position of completion token 0 of the slot's prompt
  live: jax.Array  # [S] decoding (False: free)


class _Out(NamedTuple):
  tokens: jax.Array  # [R, N]
  logps: jax.Array  # [R, N]
  mask: jax.Array  # [R, N] bool
  experts: jax.Array | None  # [R, L_moe, N, k] (SamplingConfig.return_experts; else None)


def _write(out: _Out, row, t, tok, lp, on) -> _Out:
  """out[row[i], t[i]] = tok[i], lp[i] where on[i] (other rows index past the end: dropped)."""
  r = jnp.where(on, row, out.tokens.shape[0])
  return out._replace(tokens=out.tokens.at[r, t].set(tok, mode="drop"),
                      logps=out.logps.at[r, t].set(lp, mode="drop"),
                      mask=out.mask.at[r, t].set(True, mode="drop"))


MAX_BLOCKS = 8  # a longer cache gets longer blocks: loop steps cost on every backend


def _block_len(kv_block: int, length: int) -> int:
  """The attention block of a `length`-slot cache: a multiple of `kv_block`, at most
  `MAX_BLOCKS` blocks; 0 (the whole cache) when one block would hold it all."""
  if not kv_block:
    return 0
  block = kv_block * -(-length // (MAX_BLOCKS * kv_block))
  return block if block < length else 0


def _empty_cache(pcache: _Cache, slots: int, length: int) -> _Cache:
  """The slots' cache: `length` empty (zero, masked) slots per row, like the prompt's."""
  shape = lambda x: (slots,) + x.shape[1:]
  empty = jax.tree.map(lambda x: jnp.zeros(shape(x), x.dtype), pcache)
  return _pad_length(empty, length - pcache.mask.shape[1])


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "num_slots"))
def generate_continuous(params: Any, cfg: ModelConfig, prompt_tokens: jax.Array,
                        prompt_mask: jax.Array, num_prompts: jax.Array, rng: jax.Array,
                        limits: jax.Array, scfg: SamplingConfig, num_slots: int) -> SampleOutput:
  """`sampling._generate`'s contract (a bucketed batch, rows of prompts >= num_prompts are
  never started, row r stops after limits[r] tokens), decoded in `num_slots` slots."""
  b, p = prompt_tokens.shape
  g, n, s = scfg.num_samples, scfg.max_new_tokens, num_slots
  rows = b * g
  wdt = jnp.dtype(scfg.decode_dtype or cfg.dtype)
  fuse = _fuse_default() if scfg.fuse_weights is None else scfg.fuse_weights
  last, pcache, next_pos, pexperts = _prompt_cache(params, cfg, prompt_tokens, prompt_mask,
                                                    scfg)
  w = _decode_weights(params, cfg, fuse, wdt)
  eos = jnp.asarray(scfg.eos_ids or (-1,), jnp.int32)
  real = num_prompts * g
  k_axes = _K_AXES if _k_transposed(wdt) else _V_AXES
  k_len = 3 if _k_transposed(wdt) else 2  # the length axis of K

  block = _block_len(scfg.kv_block, p + n)
  # Blocked attention needs a whole number of blocks: the tail past P + N is never filled.
  length = -(-(p + n) // block) * block if block else p + n
  cache = _empty_cache(pcache, s, length)
  cache = _Cache(tuple(constrain(x, k_axes) for x in cache.k),
                 tuple(constrain(x, _V_AXES) for x in cache.v), cache.mask)
  zeros = jnp.zeros((s,), jnp.int32)
  slots = _Slots(zeros, zeros, zeros, zeros, jnp.zeros((s,), bool))
  out = _Out(jnp.full((rows, n), scfg.pad_id, jnp.int32), jnp.zeros((rows, n), jnp.float32),
             jnp.zeros((rows, n), bool), _no_experts(cfg, rows, n) if scfg.return_experts else None)

  def pending(state):
    _, slots, _, nxt = state
    return jnp.any(~slots.live) & (nxt < real)

  def refill(state):
    """Free slots take rows nxt, nxt+1, ...: prompt KV copied in, first token sampled."""
    cache, slots, out, nxt = state
    free = ~slots.live
    row = nxt + jnp.cumsum(free) - 1
    take = free & (row < real)
    row = jnp.where(take, row, slots.row)
    pb = jnp.where(take, row // g, 0)

    def put(c, pc, axis):  # slot cache rows' first P slots <- their prompt's
      head = jax.lax.slice_in_dim(c, 0, p, axis=axis)
      sel = take.reshape((s,) + (1,) * (c.ndim - 1))
      return jax.lax.dynamic_update_slice_in_dim(c, jnp.where(sel, pc[pb], head), 0, axis=axis)

    pmask = jnp.pad(pcache.mask[pb], ((0, 0), (0, length - p)))
    cache = _Cache(tuple(put(c, pc, k_len) for c, pc in zip(cache.k, pcache.k)),
                   tuple(put(c, pc, 2) for c, pc in zip(cache.v, pcache.v)),
                   jnp.where(take[:, None], pmask, cache.mask))
    tok, lp = _choose(last[pb], _sample_keys(rng, 0, row), scfg)
    out = _write(out, row, 0, tok, lp, take)
    live = ~jnp.isin(tok, eos) & (limits[row] > 1)
    slots = _Slots(row, jnp.where(take, 1, slots.t), jnp.where(take, tok, slots.tok),
                   jnp.where(take, next_pos[pb], slots.pos0), jnp.where(take, live, slots.live))
    return cache, slots, out, nxt + take.sum()

  def step(state):
    cache, slots, out, nxt = state
    live, t = slots.live, slots.t
    filled = p + jnp.minimum(t, n)  # the cache slots a live slot's query may see
    logits, cache, *chosen = _decode_step(w, cfg, slots.tok, slots.pos0 + t - 1, live, cache,
                                          filled - 1, scfg.return_experts,
                                          jnp.max(jnp.where(live, filled, 1)), block)
    if chosen:  # the routing of input token t - 1, at the sample's row (as its tokens)
      r = jnp.where(live, slots.row, rows)
      out = out._replace(experts=out.experts.at[r, :, t - 1].set(chosen[0], mode="drop"))
    tok, lp = _choose(logits, _sample_keys(rng, t, slots.row), scfg)
    tok = jnp.where(live, tok, scfg.pad_id)
    out = _write(out, slots.row, jnp.minimum(t, n - 1), tok, lp, live)
    live = live & ~jnp.isin(tok, eos) & (t + 1 < limits[slots.row])
    state = cache, slots._replace(t=t + 1, tok=tok, live=live), out, nxt
    return jax.lax.while_loop(pending, refill, state)

  state = jax.lax.while_loop(pending, refill, (cache, slots, out, jnp.asarray(0, jnp.int32)))
  state = jax.lax.while_loop(lambda st: jnp.any(st[1].live) | (st[3] < real), step, state)
  out = state[2]
  return SampleOutput(out.tokens, out.mask.astype(jnp.int32), out.logps,
                      out.mask.sum(-1).astype(jnp.int32), out.experts,
                      None if pexperts is None else _repeat_rows(pexperts, g))
