"""A mixture-of-experts GRPO train step against the dense model of the same active size.

    python -m r1jax.bench.moe                       # defaults below, both routings
    python -m r1jax.bench.moe --hidden=512 --layers=8 --experts=16 --top_k=2 --rows=16 --len=256

The dense model has `intermediate = top_k * moe_intermediate`, so every token runs the same
number of weights in both (attention, embeddings and the router aside); the MoE model holds
`experts / top_k` times the MLP weights. Both run the GRPO loss (`rl.grpo_loss`, beta 0,
random advantages) forward + backward + AdamW on `rows` completions of `len` tokens after a
16-token prompt, float32, micro-batches of `micro` rows; the routed one with softmax top-k
(Qwen3-MoE, load-balancing loss on) and sigmoid + bias (DeepSeek-V3, bias update on). Prints
parameters (total / active), the best of `--repeats` step times and tokens per second, and
the MoE/dense time ratio: the price of routing, sorting and the grouped matmul (on the CPU a
block-padded batched matmul; on TPU/GPU `ragged_dot`).
"""

from __future__ import annotations

import argparse
import functools
import math
import time

import jax
import numpy as np

from r1jax import memory, rl, steps
from r1jax.bench.timing import cpu_flags, machine
from r1jax.model import ModelConfig, init_params, moe, param_shapes


def configs(a: argparse.Namespace) -> dict[str, ModelConfig]:
  base = dict(vocab_size=a.vocab, hidden_size=a.hidden, num_layers=a.layers,
              num_heads=a.hidden // 64, num_kv_heads=max(1, a.hidden // 256),
              rope_theta=1e4, tie_embeddings=True, max_position_embeddings=4096)
  routed = dict(base, intermediate_size=a.top_k * a.moe_intermediate, num_experts=a.experts,
                num_experts_per_tok=a.top_k, moe_intermediate_size=a.moe_intermediate,
                norm_topk_prob=True)
  return {"dense": ModelConfig(**base, intermediate_size=a.top_k * a.moe_intermediate),
          "moe softmax": ModelConfig(**routed, router_aux_loss_coef=0.001),
          "moe sigmoid+bias": ModelConfig(**routed, scoring_func="sigmoid",
                                          router_bias_update_speed=0.001)}


def counts(cfg: ModelConfig) -> tuple[int, int]:
  """(total, active per token) parameters."""
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(param_shapes(cfg)))
  if not cfg.num_experts:
    return total, total
  expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
  idle = (cfg.num_experts - cfg.num_experts_per_tok) * expert * len(cfg.moe_layers)
  return total, total - idle


def time_step(cfg: ModelConfig, a: argparse.Namespace) -> float:
  rs = np.random.RandomState(0)
  b = a.rows // a.group
  batch = rl.Batch(rs.randint(0, cfg.vocab_size, (b, 16)), np.ones((b, 16), bool),
                     rs.randint(0, cfg.vocab_size, (a.rows, a.len)), np.ones((a.rows, a.len), bool),
                     rs.normal(size=a.rows).astype(np.float32), None, None)
  gcfg = rl.RLConfig(beta=0.0)
  tx = steps.make_optimizer(steps.OptimConfig(learning_rate=1e-5, total_steps=100),
                            moe.decay_mask_for(cfg))
  step = jax.jit(steps.make_train_step(
      functools.partial(rl.grpo_loss, cfg=gcfg, model_cfg=cfg), tx, a.rows // a.micro,
      rl.micro_batch_weight(gcfg), moe.balancing_update(cfg)), donate_argnums=0)
  state = memory.init_state(init_params(cfg, 0), tx)
  state, m = step(state, batch)  # compile
  jax.block_until_ready(m)
  best = float("inf")
  for _ in range(a.repeats):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    best = min(best, time.perf_counter() - t0)
  return best


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=512)
  ap.add_argument("--layers", type=int, default=6)
  ap.add_argument("--vocab", type=int, default=8192)
  ap.add_argument("--experts", type=int, default=8)
  ap.add_argument("--top_k", type=int, default=2)
  ap.add_argument("--moe_intermediate", type=int, default=512)
  ap.add_argument("--rows", type=int, default=16, help="completions per step")
  ap.add_argument("--group", type=int, default=4, help="completions per prompt")
  ap.add_argument("--len", type=int, default=128, help="completion tokens")
  ap.add_argument("--micro", type=int, default=8, help="rows per micro-batch")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--only", default="", help="comma-separated subset of the rows")
  a = ap.parse_args()
  print(f"# {machine()} ({cpu_flags()}), jax {jax.__version__}; {a.rows} rows x {a.len} "
        f"tokens, micro-batches of {a.micro}", flush=True)
  print("| model | params total (M) | active (M) | step s | tokens/s | vs dense |")
  print("| --- | --- | --- | --- | --- | --- |")
  dense_s = None
  for name, cfg in configs(a).items():
    if a.only and name not in a.only.split(","):
      continue
    total, active = counts(cfg)
    s = time_step(cfg, a)
    dense_s = s if name == "dense" else dense_s
    ratio = f"{s / dense_s:.2f}x time" if dense_s and name != "dense" else "1"
    print(f"| {name} | {total / 1e6:.1f} | {active / 1e6:.1f} | {s:.3f} | "
          f"{a.rows * a.len / s:,.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
  main()
