"""The tool-use example (configs/r1_zero_tools.py): its task needs the tool (large products
the tools compute exactly), its demonstrations show exactly the reply the tool gives, and
its tiny variant trains and evaluates with tools and logs the tool metrics."""
import json
import re

import numpy as np
import pytest

from configs import r1_zero_tools
from r1jax import data as data_lib
from r1jax import tools

VARIANTS = ("", "tiny", "python_block", "tool_call")


@pytest.mark.parametrize("arg", VARIANTS)
def test_configs_load_and_validate(arg):
  from r1jax import train as train_lib
  c = r1_zero_tools.get_config(arg)
  train_lib.validate(c)
  tcfg = tools.from_config(c)
  assert tcfg is not None and tcfg.format == (arg if arg in r1_zero_tools.DEMOS
                                              else r1_zero_tools.FORMAT)
  assert c.model.source == ("preset" if arg == "tiny" else "smollm2_gguf")
  with pytest.raises(ValueError, match="unknown config argument"):
    r1_zero_tools.get_config("xml")


def test_the_task_needs_the_tool_and_the_tools_solve_it():
  """Products of two numbers below 10^4, most with 7-8 digit answers (SmolLM2-135M gets ~0%
  by hand): the calculator on each problem's expression gives its reference answer, so
  does python."""
  spec = dict(r1_zero_tools.get_config("").data.source, size=100)
  src = data_lib.make_source(spec)
  long_answers = 0
  for i in range(len(src)):
    ex = src[i]
    expr = ex["entry"]["metadata"]["expression"]
    a, b = (int(x) for x in re.fullmatch(r"(\d+) \* (\d+)", expr).groups())
    assert a < 10**4 and b < 10**4 and ex["question"] == f"Calculate {expr}."
    assert tools.calculate(expr) == int(ex["answer"])
    long_answers += len(ex["answer"]) >= 7
  assert long_answers >= 80, long_answers  # 95% of the 2000 training problems
  cfg = tools.ToolConfig(tools=("python",))
  assert tools.run_call(tools.Call("python", {"code": f"print({expr})"}, 0), cfg) == \
      ex["answer"] + "\n"


@pytest.mark.parametrize("fmt", sorted(r1_zero_tools.DEMOS))
def test_each_demonstration_shows_its_call_and_the_exact_reply(fmt):
  """The demonstration's call parses, its tool's reply is the text the demonstration shows
  right after the call, and its answer is the product."""
  c = r1_zero_tools.get_config(fmt)
  tcfg = tools.from_config(c)
  demo = c.data.few_shot[0]["completion"]
  call = tools.find_call(demo, fmt)
  assert call is not None and call.name in tools.tool_names(tcfg)
  body = tools.run_call(call, tcfg)
  assert demo[call.end:].startswith(tools.format_reply(body, fmt))
  assert int(body) == r1_zero_tools.A * r1_zero_tools.B
  assert demo.endswith(f"<answer> {r1_zero_tools.A * r1_zero_tools.B} </answer>")
  assert demo.count("<think>") == 1 and c.data.think_prefill  # the prefill opens <think>


@pytest.fixture
def calculator_on_every_turn(monkeypatch):
  """The tiny random model never writes a call: a turn holding 3 visible characters calls
  the real calculator."""
  def parse(text):
    if sum(ch != "\ufffd" for ch in text) < 3:
      return None
    return tools.Call("calculator", {"expression": "1234 * 5678"}, len(text))
  monkeypatch.setitem(tools.FORMATS, "every_turn", (parse, tools.FORMATS["python_block"][1]))


def test_the_tiny_variant_trains_and_evaluates_with_tools(tmp_path, calculator_on_every_turn):
  from r1jax import train as train_lib
  c = r1_zero_tools.get_config("tiny")
  c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 1, 1, 0
  c.data.num_eval = 2
  c.tools.update(format="every_turn", tools=("calculator",), max_turns=1)
  rows = train_lib.train(c, str(tmp_path))
  assert len(rows) == 1 and np.isfinite(rows[0]["loss"])
  assert rows[0]["tools/calls_per_sample"] == 1.0 and rows[0]["tools/call_rate"] == 1.0
  assert rows[0]["tools/error_share"] == 0.0
  evals = [json.loads(line) for line in open(tmp_path / "eval.jsonl")]
  assert [e["step"] for e in evals] == [0, 1]  # the held-out samples call the tool too
  assert all(e["tools/call_rate"] == 1.0 and e["tools/error_share"] == 0.0 for e in evals)
  samples = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
  assert all(f"```output\n{1234 * 5678}\n```" in s["completion"] for s in samples)
  from r1jax import plots
  assert any(p.endswith("tool_use.png") for p in plots.plot_run(str(tmp_path)))
