"""R1-Zero with a tool: GRPO on products of two numbers below 10^4 (95% have 7-8 digit
answers), which SmolLM2-135M gets wrong by hand (~0%) and right by calling a tool and
copying its reply.

`python -m r1jax.train --config=configs/r1_zero_tools.py --workdir=/tmp/r1z_tools`
trains the CPU default of `configs/r1_zero.py` (SmolLM2-135M-Instruct) with multi-turn tool
use on: one demonstration in the prompt shows a call, the tool's reply and the answer
copied from it; the rollout pauses at each call, runs the tool on the host and appends its
reply (untrained). The README's "Tools while it reasons" section has this run's curves.

Arguments: "" the example (`tools.format`: FORMAT below), "python_block" / "tool_call"
the same with that call format (both demonstrations are here; the README says which one
the model imitates better), "tiny" a random-init tiny model for tests (same task and tools,
no system prompt or demonstration; it never writes a call by itself).
"""

import ml_collections

from configs import r1_zero

A, B = 2345, 6789  # the demonstration's problem (not one of the 2000 problems of the data)

# Per call format: the tool it calls and one demonstration of a call and its use. The
# reply block in each demonstration is exactly what `r1jax.tools.format_reply` appends
# (python's reply is the program's stdout: print's newline included).
DEMOS = {
    "python_block": dict(
        tools=("python",),
        system_prompt=("You can run Python code: write a ```python block, its printed output "
                       "comes back in an ```output block. Use it for arithmetic on large "
                       "numbers."),
        completion=(f"<think> I compute it with Python.\n```python\nprint({A} * {B})\n```\n"
                    f"```output\n{A * B}\n\n```\n</think> <answer> {A * B} </answer>")),
    "tool_call": dict(
        tools=("calculator",),
        system_prompt=('You can use a calculator: write <tool_call>{"name": "calculator", '
                       '"arguments": {"expression": "..."}}</tool_call> and its result comes '
                       "back in <tool_response> </tool_response>. Use it for arithmetic on "
                       "large numbers."),
        completion=(f'<think> I use the calculator.\n<tool_call>{{"name": "calculator", '
                    f'"arguments": {{"expression": "{A} * {B}"}}}}</tool_call>\n'
                    f"<tool_response>\n{A * B}\n</tool_response>\n</think> "
                    f"<answer> {A * B} </answer>")),
}
FORMAT = "python_block"


def task(size: int = 2000, digits: int = 4) -> dict:
  """reasoning-gym basic_arithmetic: products of two numbers of up to `digits` digits (each
  uniform below 10**digits: 83% of pairs have `digits` digits both)."""
  return dict(kind="reasoning_gym", task="basic_arithmetic", size=size, seed=0,
              config=dict(min_terms=2, max_terms=2, min_digits=digits, max_digits=digits,
                          operators=("*",), allow_negation=False, allow_parentheses=False))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or ""
  if arg not in ("", "tiny", *DEMOS):
    raise ValueError(f"unknown config argument {arg!r}; use '', 'tiny', "
                     f"{', '.join(repr(f) for f in DEMOS)}")
  fmt = arg if arg in DEMOS else FORMAT
  demo = DEMOS[fmt]
  c = r1_zero.get_config("tiny" if arg == "tiny" else None)
  c.data.source = task(size=64 if arg == "tiny" else 2000)
  c.data.template = "chat"  # the system turn holds the tool's description
  c.data.system_prompt = demo["system_prompt"]
  c.data.few_shot = [dict(question=f"Calculate {A} * {B}.", completion=demo["completion"])]
  c.tools.update(enabled=True, format=fmt, tools=demo["tools"], max_turns=2, timeout_s=5.0)
  c.sampling.max_new_tokens = 96  # a call, its reply and the answer: ~60 tokens
  if arg == "tiny":  # byte-level tokens: a short prompt, room for a reply (~25 bytes)
    c.data.system_prompt, c.data.few_shot = "", []
    c.data.prompt_bucket = 64
    c.sampling.max_new_tokens = 40
  else:  # a short CPU run: held-out pass@1 (with the tools) every 10 steps, 16 problems x 2
    c.data.num_eval = 16
    c.train.update(num_steps=30, eval_every=10, eval_samples=2, checkpoint_every=10,
                   keep_checkpoints=1)
  return c
