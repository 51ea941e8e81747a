"""The paper's evaluation protocol: k samples per problem, pass@1, pass@k, cons@k.

pass@1 = mean correctness over the k samples of a problem (then over problems);
pass@k uses the unbiased estimator 1 - C(n-c, k) / C(n, k); cons@k is correctness of
the majority answer among the k samples (answers normalised as the accuracy reward
parses them; ties go to the answer seen first).
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.sampling import SamplingConfig, generate, pad_prompts


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
  if k > n:
    raise ValueError(f"pass@k needs k <= n, got k={k}, n={n}")
  if n - c < k:
    return 1.0
  return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def majority_vote(answers: Sequence[str | None], correct: Sequence[float]) -> float:
  """Correctness of the most common non-empty answer (first seen wins ties); 0 if none."""
  counts = collections.Counter(a for a in answers if a)
  if not counts:
    return 0.0
  best = max(counts.values())
  for a, ok in zip(answers, correct):
    if a and counts[a] == best:
      return float(ok)
  return 0.0


def reflection_rate(texts: Sequence[str], words: Sequence[str]) -> float:
  """Share of texts containing any reflection phrase (case-insensitive, word-bounded)."""
  if not texts:
    return 0.0
  pat = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
  return float(np.mean([bool(pat.search(t)) for t in texts]))


def summarize(correct: np.ndarray, answers: Sequence[Sequence[str | None]],
              ks: Sequence[int] = ()) -> dict[str, float]:
  """correct [P, k] in {0,1}; answers [P][k] normalised answers -> protocol metrics."""
  correct = np.asarray(correct, np.float64)
  p, k = correct.shape
  out = {"pass@1": float(correct.mean()) if correct.size else 0.0,
         f"cons@{k}": float(np.mean([majority_vote(a, c) for a, c in zip(answers, correct)]))}
  for kk in ks:
    if 1 < kk <= k:
      out[f"pass@{kk}"] = float(np.mean([pass_at_k(k, int(c.sum()), kk) for c in correct]))
  return out


def sample_and_score(params: Any, model_cfg, tokenizer, examples: Sequence[Mapping[str, Any]],
                     render: Callable[[Mapping[str, Any]], str], reward_pool, scfg: SamplingConfig,
                     rng: jax.Array, *, batch_prompts: int = 16, prompt_bucket: int = 32,
                     prefill: str = "") -> list[dict]:
  """Generate `scfg.num_samples` completions per example and score them.

  Returns one record per sample: example id, task, prompt, completion, answer,
  extracted answer, per-reward scores, total reward, length.
  """
  from r1jax.rewards import extract_answer, normalize_answer
  records = []
  g = scfg.num_samples
  for start in range(0, len(examples), batch_prompts):
    chunk = list(examples[start:start + batch_prompts])
    prompts = [render(ex) for ex in chunk]
    ids = [tokenizer.encode(p) for p in prompts]
    toks, mask = pad_prompts(ids, tokenizer.pad_id, prompt_bucket)
    rng, sub = jax.random.split(rng)
    out = jax.device_get(generate(params, model_cfg, jnp.asarray(toks), jnp.asarray(mask), sub,
                                  scfg))
    texts = [tokenizer.decode(t[:l].tolist()) for t, l in zip(out.tokens, out.lengths)]
    row_examples = [dict(chunk[i // g], prefill=prefill) for i in range(len(texts))]
    res = reward_pool.score(texts, row_examples)
    for i, text in enumerate(texts):
      ex = chunk[i // g]
      ans = extract_answer(prefill + text)
      records.append({
          "id": ex.get("id", str(start + i // g)), "task": ex.get("task", ""),
          "prompt": prompts[i // g], "completion": text, "reference": ex.get("answer"),
          "extracted": ans, "normalized": normalize_answer(ans) if ans else None,
          "reward": float(res.total[i]), "length": int(out.lengths[i]),
          **{f"reward/{k}": float(v[i]) for k, v in res.per_reward.items()}})
  return records


def records_metrics(records: Sequence[Mapping[str, Any]], k: int,
                    reflection_words: Sequence[str] = ()) -> dict[str, float]:
  """Protocol metrics from `sample_and_score` records (k consecutive records per problem)."""
  if not records:
    return {}
  correct = np.asarray([r.get("reward/accuracy", 0.0) for r in records]).reshape(-1, k)
  answers = [[r["normalized"] for r in records[i:i + k]] for i in range(0, len(records), k)]
  out = summarize(correct > 0.5, answers, ks=(k,))
  lengths = np.asarray([r["length"] for r in records])
  out["completion_len_mean"] = float(lengths.mean())
  if "reward/format" in records[0]:
    out["format_rate"] = float(np.mean([r["reward/format"] for r in records]))
  if reflection_words:
    out["reflection_rate"] = reflection_rate([r["completion"] for r in records], reflection_words)
  tasks = sorted({r["task"] for r in records})
  if len(tasks) > 1:
    for t in tasks:
      sel = [r.get("reward/accuracy", 0.0) for r in records if r["task"] == t]
      out[f"pass@1/{t}"] = float(np.mean(sel))
  return out
