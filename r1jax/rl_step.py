"""The RL trainer's policy step, built in one place for `train.py`, `r1jax.programs` (the
programs `r1jax.aot` compiles) and `r1jax.bench.step` (the step timed against TRL).

`build` returns three pure functions, not jitted (each caller jits them its own way):
  loss(params, batch)      the algorithm's loss on padded rows (`rl.grpo_loss`) or packed
                           rows (`packed_rl.loss`, exact per-token shares)
  step(state, batch)       the train step: gradients accumulated over `n_micro`
                           micro-batches, LoRA adapters only when on, and DeepSeek-V3's
                           router-bias update after it when the model has one
  logprobs(params, batch)  no-grad log-probs of the batch's completions (pi_old, reference)
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import optax

from r1jax import lora as lora_lib
from r1jax import packed_rl, rl
from r1jax.model import ModelConfig, moe


class PolicyStep(NamedTuple):
  loss: Callable  # (params, batch) -> (loss, metrics)
  step: Callable  # (TrainState, batch) -> (TrainState, metrics)
  logprobs: Callable  # (params, batch) -> log-probs [rows, tokens]


def build(model_cfg: ModelConfig, rcfg: rl.RLConfig, tx: optax.GradientTransformation,
          n_micro: int, *, packed: bool = False,
          lcfg: lora_lib.LoraConfig = lora_lib.LoraConfig()) -> PolicyStep:
  """The policy's loss, train step and log-probs for `rcfg` on `model_cfg` (see the module
  docstring); `packed` for `packing.PackedBatch` batches, else `rl.Batch` ones."""
  cfg = rcfg.loss_config()
  if packed:  # exact per-token shares: the micro-batches need no weight
    loss = functools.partial(packed_rl.loss, cfg=cfg, model_cfg=model_cfg, n_micro=n_micro)
    weight, logp = None, packed_rl.batch_logprobs
  else:
    loss = functools.partial(rl.grpo_loss, cfg=cfg, model_cfg=model_cfg)
    weight, logp = rl.micro_batch_weight(rcfg), rl.batch_logprobs
  step = lora_lib.make_train_step(loss, tx, n_micro, weight, lcfg,
                                  moe.balancing_update(model_cfg))
  logprobs = functools.partial(logp, model_cfg=model_cfg, temperature=rcfg.temperature,
                               impl=rcfg.logprob_impl)
  return PolicyStep(loss, step, logprobs)
