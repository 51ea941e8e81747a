"""Reward model / outcome verifier: `python -m r1jax.reward_model
--config=configs/reward_model.py --workdir=/tmp/rm --config.data.train.path=pairs.jsonl`.

objective "bt": Bradley-Terry on preference pairs (UltraFeedback / HH-RLHF layouts:
`chosen` / `rejected` as text or chat messages, optional `prompt` and `margin`);
objective "orm": an outcome verifier on (prompt, completion, correct) rows, e.g. the
samples.jsonl of `r1jax.evaluate` or the rejection sampler's per-prompt logs flattened.
The model is the policy's architecture (default SmolLM2-135M-Instruct from the wheel)
plus a scalar head. `:tiny` is the tiny random-init model (data path set by the caller).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.objective = "bt"  # bt | orm
  c.model = dict(source="smollm2_gguf", path="", preset="", dtype="float32",
                 param_dtype="float32", remat=False, attention_chunk=0)
  c.mesh = dict(shape=(1, 1, 1))
  c.head = dict(pool="last")  # the hidden state the scalar head reads: "last" token | "mean"
  # train / eval: {"kind": jsonl | parquet | hf_disk, "path": ..., "split": ...}; without an
  # eval file, num_eval training rows are held out.
  c.data = dict(train=dict(kind="jsonl", path="", split=""),
                eval=dict(kind="jsonl", path="", split=""),
                num_eval=64, batch_size=8, max_len=256)
  # center_coef: reward centering of pairs (e.g. 0.01); class_balance: ORM row weights,
  # "none" | "balanced" (each class weighs half: a minority of correct samples still counts).
  c.loss = dict(center_coef=0.0, class_balance="none")
  c.optim = dict(learning_rate=1e-5, warmup_steps=10, schedule="cosine", weight_decay=0.0,
                 b1=0.9, b2=0.999, max_grad_norm=1.0)
  c.train = dict(num_steps=300, log_every=10, eval_every=50, checkpoint_every=50,
                 keep_checkpoints=2,
                 compilation_cache="auto")  # "auto" | "workdir" | a path | "" (off)
  if arg == "tiny":
    c.model = dict(c.model, source="preset", preset="tiny")
    c.data.num_eval = 4
    c.data.batch_size = 4
    c.data.max_len = 32
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    c.train = dict(num_steps=4, log_every=1, eval_every=2, checkpoint_every=2,
                   keep_checkpoints=3, compilation_cache="")
  elif arg not in (None, ""):
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'tiny'")
  return c
