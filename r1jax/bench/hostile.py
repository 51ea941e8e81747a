"""Worst-case reward time on hostile inputs, in-process (no pool deadline):

    python -m r1jax.bench.hostile

For each reward, the longest single call over explosive math answers (huge factorials,
binomials, towers, polynomial expansions: `EXPLOSIVE`) and nested / duplicated / megabyte
tag soups (`NESTED_TAGS`), each as a tagged answer, a boxed answer and a GSM8K line. The
tests (tests/test_rewards_hostile.py) use the same lists and bound every call by 2 s.
"""

from __future__ import annotations

import time

# Answers sympy would evaluate for minutes (or forever) while parsing or simplifying them.
EXPLOSIVE = [
  "(10^{6})!", "100000!", "1000000!!", "10^{6}!!!", "10!!!!!!!!", "4!!!", "(10^{100})!!",
  "2^{3}!", "((3!)!)!", "(((3!)!)!)!", "\\frac{(10^5)!}{(10^5-1)!}", "99999999999!",
  "\\Gamma(10^{10})", "\\Gamma(10^9)", "\\binom{10^{10}}{5*10^9}", "\\binom{10^{100}}{10^{50}}",
  "\\binom{100000}{50000}", "\\dbinom{10^6}{500000}", "{10^9 \\choose 10^8}",
  "(x+1)^{100000}", "(x+y+z)^{1000}", "(1+x)^{10^6}", "(2^{100000})^{100000}",
  "x^{10^{6}}", "2^{10^{6}}", "10^{99999}", "10^{10^{5}}", "9^{9^9}", "e^{e^{e^{e^{10}}}}",
  "\\sqrt{10^{10^{10}}}", "\\lfloor 10^{10^{10}} \\rfloor", "7^{7^{7}} \\mod 10",
  "(1.0001)^{10^{10}}", "\\prod_{k=1}^{10^9} k", "2**2**2**2**2**2", "\\exp(\\exp(\\exp(10)))",
  "(10^{5})! - (10^{5})!", "\\left(10^{7}\\right)!",
]


# Nested, duplicated and look-alike tags (two answers is the reward hack), some megabytes;
# the answers are wrong (gold 5) so that accuracy stays 0 whatever is extracted.
NESTED_TAGS = [
  "<think>a</think><answer>6</answer><answer>6</answer>",
  "<think>a</think><answer><answer>6</answer></answer>",
  "<think><think>a</think></think><answer>6</answer>",
  "<think>a</think><answer>4</answer>\n<Answer>6</Answer>",
  "<think>a</think><answer>" + "<answer>6</answer>" * 100_000,
  "<think>" + "<think>" * 200_000 + "</think><answer>6</answer>",
  "<think>a</think>" + "<answer>6</answer>\n" * 100_000,
  "<think>" + "</think><answer>6</answer>" * 50_000,
  "<think>a</think><answer>\\boxed{4} or \\boxed{6}</answer>",
]




def main() -> None:
  from r1jax.rewards import REWARDS
  from r1jax.rewards.registry import warmup
  names = ("accuracy", "format", "format_partial", "cosine")
  warmup(names)
  items = NESTED_TAGS + [f for b in EXPLOSIVE for f in (
      f"<think>t</think><answer>{b}</answer>", f"\\boxed{{{b}}}", f"#### {b}")]
  example = {"answer": "5", "prefill": "<think>", "completion_tokens": 100}
  print(f"{len(items)} hostile completions, max length {max(map(len, items))} chars")
  for name in names:
    worst, which = 0.0, ""
    for c in items:
      t0 = time.perf_counter()
      REWARDS[name](example["prefill"] + c, example)
      dt = time.perf_counter() - t0
      if dt > worst:
        worst, which = dt, c[:50]
    print(f"{name:16} worst {worst * 1000:8.1f} ms  on {which!r}")


if __name__ == "__main__":
  main()
