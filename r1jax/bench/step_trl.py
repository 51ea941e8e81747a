"""The TRL side of `r1jax.bench.step`: one GRPO step of TRL's GRPOTrainer (torch CPU), timed.

It runs in TRL's own interpreter (`--trl_python` of the bench) as this file alone, copied to
a temporary directory: it imports torch, transformers, datasets and trl, never jax or r1jax.
It reads one JSON request on stdin and prints one JSON result line.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import time

import numpy as np


def trl_worker(req: dict) -> dict:
  import datasets
  import torch
  import transformers
  import trl
  torch.set_num_threads(req["threads"] or os.cpu_count())
  torch.manual_seed(0)
  b, g, n, beta = req["b"], req["g"], req["n"], req["beta"]
  tok = transformers.AutoTokenizer.from_pretrained(req["hf_dir"])
  lens = {len(tok(p)["input_ids"]) for p in req["prompts"]}
  fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
  kw = dict(output_dir=req["out_dir"], per_device_train_batch_size=b * g, num_generations=g,
            gradient_accumulation_steps=1, steps_per_generation=1, max_completion_length=n,
            generation_kwargs={} if req.get("lengths") else {"min_new_tokens": n},
            beta=beta, learning_rate=1e-6,
            max_grad_norm=1.0, temperature=1.0, top_p=1.0, max_steps=req["steps"],
            logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
            seed=0, dataloader_num_workers=0, log_completions=False, disable_dropout=True)
  kw.update(req.get("trl_args") or {})
  args = trl.GRPOConfig(**{k: v for k, v in kw.items() if k in fields})
  rng = np.random.default_rng(0)
  reward = lambda completions, **_: rng.standard_normal(len(completions)).tolist()
  ds = datasets.Dataset.from_dict({"prompt": list(req["prompts"])})
  trainer = trl.GRPOTrainer(model=req["hf_dir"], reward_funcs=reward, args=args,
                            train_dataset=ds, processing_class=tok)
  times: dict = collections.defaultdict(float)

  def timed(name, fn, pick=None):
    def wrapper(*a, **k):
      t0 = time.perf_counter()
      out = fn(*a, **k)
      times[pick(a) if pick else name] += time.perf_counter() - t0
      return out
    return wrapper

  if req.get("lengths"):
    _force_lengths(trainer.model, req["lengths"], tok.eos_token_id, torch, transformers)
  trainer._generate_single_turn = timed("generate", trainer._generate_single_turn)
  rollout = timed("rollout", trainer._generate_and_score_completions)
  trained_lengths = []  # completion tokens per row of the last rollout, as TRL masks them

  def rollout_lengths(*a, **k):
    out = rollout(*a, **k)
    trained_lengths[:] = out["completion_mask"].sum(1).tolist()
    return out

  trainer._generate_and_score_completions = rollout_lengths
  trainer._get_per_token_logps_and_entropies = timed(
      "", trainer._get_per_token_logps_and_entropies,
      pick=lambda a: "reference" if a[0] is trainer.ref_model else "logp")
  steps = []

  class Timer(transformers.TrainerCallback):
    def on_step_begin(self, *_, **__):
      times.clear()
      times["t0"] = time.perf_counter()

    def on_step_end(self, *_, **__):
      total = time.perf_counter() - times["t0"]
      ref = times.get("reference", 0.0)
      gen = times.get("generate", 0.0)
      steps.append(dict(total=total, generate=gen, reference=ref,
                        policy=total - times.get("rollout", 0.0),
                        other=times.get("rollout", 0.0) - gen - ref))

  trainer.add_callback(Timer())
  trainer.train()
  return dict(steps=steps, prompt_lens=sorted(lens), lengths=trained_lengths,
              trl=trl.__version__,
              torch=torch.__version__, threads=torch.get_num_threads())


def _force_lengths(model, lengths: list[int], eos_id: int, torch, transformers) -> None:
  """Row i of every `model.generate` call ends after exactly lengths[i] tokens, its EOS
  included (TRL counts the EOS in the completion; r1jax's forced rows of lengths[i] tokens
  have none), so both sides train on the same number of completion tokens."""
  want = torch.tensor(lengths)

  class ForcedLengths(transformers.LogitsProcessor):
    def __init__(self, start: int):
      self.start = start

    def __call__(self, input_ids, scores):
      t = input_ids.shape[1] - self.start  # tokens generated so far in this call
      last = (want[:scores.shape[0]] - 1 == t)[:, None]
      eos = torch.zeros_like(scores, dtype=torch.bool)
      eos[:, eos_id] = True
      # before a row's last token: never EOS; at it: only EOS
      return scores.masked_fill(last & ~eos, -float("inf")).masked_fill(~last & eos,
                                                                         -float("inf"))

  generate = model.generate

  def forced(*a, **k):
    k["logits_processor"] = transformers.LogitsProcessorList(
        [ForcedLengths(k["input_ids"].shape[1])])
    return generate(*a, **k)

  model.generate = forced


if __name__ == "__main__":
  print(json.dumps(trl_worker(json.loads(sys.stdin.readline()))), flush=True)
