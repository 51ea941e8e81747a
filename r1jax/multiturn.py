"""Multi-turn rollouts with tools: the policy writes a tool call, decoding pauses for that
sample, the tool runs on the host (`r1jax.tools`), its reply is appended as a segment the
loss does not train, and decoding resumes, up to `ToolConfig.max_turns` calls and the
sampler's `max_new_tokens` for the whole transcript (replies included).

Each turn is one call of the jitted sampler (`sampling.generate`) on the samples that
continue, their prompt being the original prompt plus their transcript so far (the prefill
rebuilds their KV cache; a transcript's cache is not kept between turns). A turn is cut just
after its first complete call (the tokens after it are dropped, so the kept tokens' log-probs
are exactly the sampler's). Turn 0 is `generate` itself with the caller's key, so samples
that never call a tool are the ones plain sampling gives. Tool replies are tokenised without
BOS and cut to the budget left.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from r1jax import tools as tools_lib
from r1jax.mesh import to_host
from r1jax.sampling import SamplingConfig, generate, pad_prompts


class ToolRollout(NamedTuple):
  """`sampling.SampleOutput`'s fields (host arrays, same order) plus the loss mask."""
  tokens: np.ndarray     # [R, N] the transcript after the prompt: policy and tool tokens
  mask: np.ndarray       # [R, N] 1 where a token is present (attention), 0 for padding
  logprobs: np.ndarray   # [R, N] the sampler's log-probs of the policy's tokens, 0 elsewhere
  lengths: np.ndarray    # [R] tokens present
  loss_mask: np.ndarray  # [R, N] 1 on the policy's own tokens (trained), 0 on tool replies


class ToolCalls(NamedTuple):
  calls: list            # per row: [(tool name, reply body), ...] in order
  errors: int            # replies that start with "error:"


def metrics(tc: ToolCalls) -> dict[str, float]:
  """Per step: tool calls per sample, the share of samples with at least one call, and the
  share of replies that were errors."""
  n = sum(len(c) for c in tc.calls)
  return {"tools/calls_per_sample": n / max(len(tc.calls), 1),
          "tools/call_rate": sum(bool(c) for c in tc.calls) / max(len(tc.calls), 1),
          "tools/error_share": tc.errors / n if n else 0.0}


def _cut_at_call(tokenizer, toks: list[int], fmt: str) -> tuple[int, tools_lib.Call] | None:
  """The fewest leading tokens whose text holds a complete call, and that call; None when
  the turn holds no call."""
  if tools_lib.find_call(tokenizer.decode(toks), fmt) is None:
    return None
  lo, hi = 1, len(toks)  # a prefix holding a call keeps holding it: bisect
  while lo < hi:
    mid = (lo + hi) // 2
    if tools_lib.find_call(tokenizer.decode(toks[:mid]), fmt) is None:
      lo = mid + 1
    else:
      hi = mid
  return lo, tools_lib.find_call(tokenizer.decode(toks[:lo]), fmt)


def generate_with_tools(params: Any, cfg, prompt_ids: Sequence[Sequence[int]], tokenizer,
                        rng: jax.Array, scfg: SamplingConfig, tcfg: tools_lib.ToolConfig,
                        prompt_bucket: int = 16) -> tuple[ToolRollout, ToolCalls]:
  """`scfg.num_samples` multi-turn samples per prompt (prompt-major rows, as `generate`),
  and the calls each made."""
  g, budget = scfg.num_samples, scfg.max_new_tokens
  rows = len(prompt_ids) * g
  segs: list[list[tuple[list[int], list[float], bool]]] = [[] for _ in range(rows)]
  used = np.zeros(rows, np.int64)
  calls: list[list[tuple[str, str]]] = [[] for _ in range(rows)]
  active = list(range(rows))
  turn_cfg = dataclasses.replace(scfg, num_samples=1)
  for turn in range(tcfg.max_turns + 1):
    if turn == 0:
      toks, mask = pad_prompts(prompt_ids, scfg.pad_id, prompt_bucket)
      out = generate(params, cfg, toks, mask, rng, scfg)
    else:
      ids = [list(prompt_ids[r // g]) + [t for s in segs[r] for t in s[0]] for r in active]
      toks, mask = pad_prompts(ids, scfg.pad_id, prompt_bucket)
      out = generate(params, cfg, toks, mask, jax.random.fold_in(rng, turn), turn_cfg,
                     max_lengths=np.asarray([budget - used[r] for r in active], np.int32))
    out_toks, out_lp, out_len = (np.asarray(x) for x in to_host(
        (out.tokens, out.logprobs, out.lengths)))  # every process runs the tools
    pending = []
    for i, r in enumerate(active):
      t = out_toks[i, :out_len[i]].tolist()
      lp = out_lp[i, :out_len[i]].tolist()
      found = _cut_at_call(tokenizer, t, tcfg.format) if turn < tcfg.max_turns else None
      if found is not None:
        t, lp = t[:found[0]], lp[:found[0]]
      segs[r].append((t, lp, True))
      used[r] += len(t)
      if found is not None and used[r] < budget:
        pending.append((r, found[1]))
    replies = tools_lib.run_calls([c for _, c in pending], tcfg)
    active = []
    for (r, call), body in zip(pending, replies):
      calls[r].append((call.name, body))
      reply = tokenizer.encode(tools_lib.format_reply(body, tcfg.format))[:budget - used[r]]
      segs[r].append((reply, [0.0] * len(reply), False))
      used[r] += len(reply)
      if used[r] < budget:
        active.append(r)
    if not active:
      break
  return _assemble(segs, calls, budget, scfg.pad_id)


def _assemble(segs, calls, n: int, pad_id: int) -> tuple[ToolRollout, ToolCalls]:
  rows = len(segs)
  tokens = np.full((rows, n), pad_id, np.int32)
  mask, loss_mask = np.zeros((rows, n), np.int32), np.zeros((rows, n), np.int32)
  logprobs, lengths = np.zeros((rows, n), np.float32), np.zeros(rows, np.int32)
  for r, row in enumerate(segs):
    at = 0
    for toks, lp, trained in row:
      k = len(toks)
      tokens[r, at:at + k], logprobs[r, at:at + k] = toks, lp
      mask[r, at:at + k] = 1
      loss_mask[r, at:at + k] = int(trained)
      at += k
    lengths[r] = at
  errors = sum(body.startswith("error:") for row in calls for _, body in row)
  return ToolRollout(tokens, mask, logprobs, lengths, loss_mask), ToolCalls(calls, errors)
