"""Reward throughput: rewards/s for 1024 completions per reward kind, through RewardPool.

    python -m r1jax.bench.rewards [--n=1024] [--workers=2] [--rewards=format,accuracy,...]

Completions are realistic R1-Zero outputs on reasoning-gym basic_arithmetic problems
(a few hundred characters of reasoning, half right, half wrong, all well formatted; the
reasoning holds a small Python function with two assert tests for "code"). Each reward
gets its own warm pool (worker start-up is excluded), then one timed `score` call of n
completions; the in-process `score_inline` rate is shown for comparison (not for
"code", whose per-item cost is the sandboxed interpreter either way).
"""

from __future__ import annotations

import argparse
import time

KINDS = ("format", "format_partial", "accuracy", "reasoning_gym", "language", "code",
         "overlong", "cosine")


def make_batch(n: int, seed: int = 0) -> tuple[list[str], list[dict]]:
  import random

  import reasoning_gym
  rng = random.Random(seed)
  # One problem per completion: no cache hits on gold or predicted answers (worst case;
  # in GRPO a group's completions share the gold and often the answer).
  entries = list(reasoning_gym.create_dataset("basic_arithmetic", size=n, seed=seed))
  comps, exs = [], []
  for i in range(n):
    e = entries[i]
    right = i % 2 == 0
    ans = e["answer"] if right else str(int(e["answer"]) + rng.randint(1, 9))
    steps = " ".join(f"Step {k}: combine the partial results and check the sign again."
                     for k in range(rng.randint(3, 8)))
    wait = "Wait, let me re-check that. " if rng.random() < 0.3 else ""
    body = "  return 2 * x" if right else "  return x + 1"
    comps.append(f"We need {e['question']} {steps} {wait}So the result is {ans}.\n"
                 f"```python\ndef f(x):\n{body}\n```\n</think>\n<answer>{ans}</answer>")
    exs.append({"answer": e["answer"], "task": "basic_arithmetic", "entry": e,
                "language": "en", "prefill": "<think>",
                "tests": ["assert f(1) == 2", "assert f(3) == 6"]})
  return comps, exs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=1024)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--timeout", type=float, default=10.0)
  parser.add_argument("--rewards", default=",".join(KINDS))
  parser.add_argument("--inline", action=argparse.BooleanOptionalAction, default=True)
  args = parser.parse_args()

  from r1jax.rewards import RewardPool, score_inline
  comps, exs = make_batch(args.n)
  print(f"{args.n} completions (mean {sum(map(len, comps)) / len(comps):.0f} chars), "
        f"{args.workers} workers")
  print(f"{'reward':16} {'pool rewards/s':>15} {'inline rewards/s':>17} {'mean':>6} "
        f"{'failures':>9}")
  for name in args.rewards.split(","):
    with RewardPool({name: 1.0}, timeout_s=args.timeout, num_workers=args.workers) as pool:
      pool.score(comps[:8], exs[:8])  # waits for the workers' start-up and warm-up
      t0 = time.perf_counter()
      res = pool.score(comps, exs)
      pool_rate = args.n / (time.perf_counter() - t0)
    inline = ""
    if args.inline and name != "code":
      m = min(args.n, 256)
      score_inline(comps[:4], exs[:4], {name: 1.0})
      t0 = time.perf_counter()
      score_inline(comps[:m], exs[:m], {name: 1.0})
      inline = f"{m / (time.perf_counter() - t0):.0f}"
    print(f"{name:16} {pool_rate:15.0f} {inline:>17} {res.per_reward[name].mean():6.3f} "
          f"{res.failures[name]:9d}", flush=True)


if __name__ == "__main__":
  main()
