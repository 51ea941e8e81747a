"""Tool calls while the policy reasons (r1jax.tools) and multi-turn rollouts
(r1jax.multiturn): call parsing, limits on hostile tools, and exact log-probs across turns
against one naive forward over the whole transcript."""
import time

import jax
import numpy as np
import pytest

from r1jax import multiturn, tools
from r1jax.model import PRESETS, forward, init_params
from r1jax.sampling import SamplingConfig, generate, pad_prompts
from r1jax.tokenizer import Tokenizer

CFG = PRESETS["tiny"]
TOK = Tokenizer.byte_level(256)


# ----------------------------------------------------------------------------- parsing


def test_python_block_and_tool_call_formats():
  text = "Let me check.\n```python\nprint(6 * 7)\n```\nand then ```python\nx\n```"
  call = tools.find_call(text, "python_block")
  assert call.name == "python" and call.arguments == {"code": "print(6 * 7)\n"}
  assert text[:call.end].endswith("print(6 * 7)\n```")
  assert tools.find_call("```python\nprint(1)\n", "python_block") is None  # not closed yet
  good = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+2"}}</tool_call>'
  assert tools.find_call("x " + good, "tool_call") == (
      "calculator", {"expression": "1+2"}, 2 + len(good))
  enc = '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>'
  assert tools.find_call(enc, "tool_call").arguments == {"a": 1}  # JSON-encoded arguments
  for bad in ("<tool_call>{oops</tool_call>", '<tool_call>["calculator"]</tool_call>',
              '<tool_call>{"name": "f", "arguments": [1]}</tool_call>'):
    call = tools.find_call(bad, "tool_call")
    assert call.name == "" and "error" in tools.run_call(call, tools.ToolConfig())


def test_config_rejects_bad_values():
  for kw, word in ((dict(format="xml"), "format"), (dict(tools=("rm -rf",)), "rm -rf"),
                   (dict(max_turns=0), "max_turns"), (dict(timeout_s=0), "timeout_s")):
    with pytest.raises(ValueError, match=word):
      tools.ToolConfig(**kw)


# ----------------------------------------------------------------------------- tools


def test_calculator_is_arithmetic_only():
  assert tools.calculate("2**10 + sqrt(16) - 7 // 2") == 1024 + 4.0 - 3
  assert tools.calculate("factorial(5) % 7") == 120 % 7
  for bad in ("__import__('os').system('true')", "(1).__class__", "'a' * 3", "9**9**9",
              "factorial(10**6)", "x + 1"):
    with pytest.raises(ValueError):
      tools.calculate(bad)
  cfg = tools.ToolConfig(tools=("calculator",))
  assert tools.run_call(tools.Call("calculator", {"expression": "1/0"}, 0), cfg).startswith(
      "error: ZeroDivisionError")


def test_python_tool_output_crash_hang_and_flood():
  cfg = tools.ToolConfig(tools=("python",), timeout_s=2.0, max_reply_chars=200)
  run = lambda code: tools.run_call(tools.Call("python", {"code": code}, 0), cfg)
  assert run("print(sum(range(10)))") == "45\n"
  assert run("print('partial')\n{}['k']") == "partial\nKeyError: 'k'\n"
  t0 = time.time()
  assert run("while True:\n  pass").startswith("error: the program did not finish")
  assert time.time() - t0 < 6
  flood = run("print('y' * 10**6)")
  assert len(flood) < 260 and flood.endswith("[cut at 200 characters]")
  assert run("import os\nprint(os.getuid() >= 0)") in ("True\n",) or "Error" in run("")


def test_unknown_tool_and_user_callables_in_a_worker_process():
  cfg = tools.ToolConfig(format="tool_call", tools=("calculator", "tests.tool_stub:echo",
                                                     "tests.tool_stub:hang"), timeout_s=1.5)
  assert "unknown tool 'python'" in tools.run_call(tools.Call("python", {"code": "1"}, 0), cfg)
  assert tools.run_call(tools.Call("echo", {"text": "hi"}, 0), cfg) == "echo: hi"
  assert tools.run_call(tools.Call("echo", {"nope": 1}, 0), cfg).startswith("error: TypeError")
  t0 = time.time()
  assert "did not answer within 1.5 s" in tools.run_call(tools.Call("hang", {}, 0), cfg)
  assert time.time() - t0 < 5
  assert tools.run_call(tools.Call("echo", {"text": "again"}, 0), cfg) == "echo: again"
  # One turn's calls run together; each gets its own reply in order.
  calls = [tools.Call("calculator", {"expression": f"{i}*{i}"}, 0) for i in range(6)]
  assert tools.run_calls(calls, cfg) == [repr(i * i) for i in range(6)]


# ----------------------------------------------------------------------------- rollouts


def _visible(text: str) -> int:
  return sum(ch != "\ufffd" for ch in text)


@pytest.fixture
def stub_tools(monkeypatch):
  """A call is any 3 visible characters of a turn; the tool answers deterministically.
  (Visible characters only grow as bytes are appended, as a real call's closing marker.)"""
  parse = lambda text: tools.Call("stub", {"seen": text}, len(text)) if _visible(text) >= 3 \
      else None
  monkeypatch.setitem(tools.FORMATS, "stub", (parse, lambda body: f"<{body}>"))
  monkeypatch.setitem(tools.BUILTIN, "stub", lambda args, cfg: f"r{len(args['seen'])}")
  monkeypatch.setitem(tools.FORMATS, "never", (lambda text: None, lambda body: body))


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, 0)


def _naive_logprobs(params, prompt, transcript):
  """log p(transcript[t] | prompt, transcript[:t]) from one forward, no cache."""
  seq = np.asarray(list(prompt) + list(transcript), np.int32)[None]
  logits, _ = forward(params, CFG, seq, np.arange(seq.shape[1])[None])
  logp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1)
  p = len(prompt)
  return np.asarray([logp[p - 1 + t, tok] for t, tok in enumerate(transcript)])


def test_multiturn_log_probs_masks_and_replies_match_a_naive_recomputation(params, stub_tools):
  prompts = [TOK.encode("Q: 2+2?"), TOK.encode("Q: name a color, then stop")]
  scfg = SamplingConfig(max_new_tokens=40, temperature=1.0, num_samples=3, eos_ids=(2,))
  tcfg = tools.ToolConfig(format="stub", tools=("stub",), max_turns=3)
  ro, tc = multiturn.generate_with_tools(params, CFG, prompts, TOK, jax.random.key(3), scfg,
                                         tcfg, prompt_bucket=8)
  assert ro.tokens.shape == (6, 40) and tc.errors == 0
  assert all(len(c) >= 1 for c in tc.calls)  # every row calls at least once
  for r in range(6):
    n = int(ro.lengths[r])
    trans = ro.tokens[r, :n]
    assert ro.mask[r, :n].all() and not ro.mask[r, n:].any()
    assert not (ro.loss_mask[r] & ~ro.mask[r].astype(bool)).any()
    # Every reply is present, untrained, and tokenised as the format writes it.
    text_untrained = TOK.decode(trans[ro.loss_mask[r, :n] == 0].tolist())
    for _, body in tc.calls[r]:
      assert body.startswith("r") and f"<{body}>" in text_untrained
    assert len(tc.calls[r]) <= tcfg.max_turns
    # The sampler's log-probs of the policy's tokens equal one forward over the transcript.
    want = _naive_logprobs(params, prompts[r // 3], trans.tolist())
    own = ro.loss_mask[r, :n] == 1
    np.testing.assert_allclose(ro.logprobs[r, :n][own], want[own], atol=2e-4)
    assert (ro.logprobs[r, :n][~own] == 0).all()


def test_without_calls_it_is_plain_sampling(params, stub_tools):
  prompts = [TOK.encode("hello"), TOK.encode("a longer prompt here")]
  scfg = SamplingConfig(max_new_tokens=12, temperature=1.0, num_samples=2, eos_ids=(2,))
  ro, tc = multiturn.generate_with_tools(params, CFG, prompts, TOK, jax.random.key(5), scfg,
                                         tools.ToolConfig(format="never", tools=("python",)),
                                         prompt_bucket=8)
  out = generate(params, CFG, *pad_prompts(prompts, 0, 8), jax.random.key(5), scfg)
  np.testing.assert_array_equal(ro.tokens, np.asarray(out.tokens) * np.asarray(out.mask))
  np.testing.assert_array_equal(ro.loss_mask, np.asarray(out.mask))
  assert tc.calls == [[]] * 4


def test_a_hanging_tool_gives_an_error_reply_and_the_sample_goes_on(params, monkeypatch,
                                                                    stub_tools):
  def slow(args, cfg):
    raise RuntimeError("tool exploded")
  monkeypatch.setitem(tools.BUILTIN, "stub", slow)
  scfg = SamplingConfig(max_new_tokens=24, temperature=1.0, num_samples=2, eos_ids=(2,))
  ro, tc = multiturn.generate_with_tools(
      params, CFG, [TOK.encode("go")], TOK, jax.random.key(1), scfg,
      tools.ToolConfig(format="stub", tools=("stub",), max_turns=2), prompt_bucket=8)
  assert tc.errors >= 2 and all("tool exploded" in b for c in tc.calls for _, b in c)
  assert (ro.loss_mask.sum(1) > 3).any()  # the policy wrote again after the error reply


# ----------------------------------------------------------------------------- training


def test_trainer_forward_sees_replies_and_the_loss_skips_them(params, stub_tools):
  """The train step's log-probs of the policy's tokens (replies as context) equal the
  sampler's; tool-reply tokens do not enter the loss, whatever their old log-probs."""
  from r1jax import rl
  from r1jax.train import build_batch
  prompts = [TOK.encode("Q: 1+1"), TOK.encode("Q: 3*3")]
  scfg = SamplingConfig(max_new_tokens=32, temperature=1.0, num_samples=2, eos_ids=(2,))
  ro, tc = multiturn.generate_with_tools(params, CFG, prompts, TOK, jax.random.key(7), scfg,
                                         tools.ToolConfig(format="stub", tools=("stub",),
                                                          max_turns=2), prompt_bucket=8)
  assert sum(map(bool, tc.calls)) >= 2
  ptoks, pmask = pad_prompts(prompts, 0, 8)
  batch = build_batch(ptoks, pmask, ro, np.asarray([1.0, 0.2, 0.5, -0.3]))
  assert (batch.loss_mask != batch.completion_mask).any()  # replies are present, untrained
  logp = np.asarray(rl.completion_logprobs(params, CFG, batch.prompt_tokens, batch.prompt_mask,
                                             batch.completion_tokens, batch.completion_mask))
  own = batch.loss_mask == 1
  np.testing.assert_allclose(logp[own], batch.sampler_logp[own], atol=2e-4)
  gcfg = rl.RLConfig(beta=0.0)
  loss = lambda old: rl.grpo_loss(params, batch._replace(old_logp=old), gcfg, CFG)[0]
  rng = np.random.default_rng(0)
  noise = np.where(own, 0.0, rng.normal(size=own.shape)).astype(np.float32)
  old = np.where(own, logp - 0.1 * rng.random(own.shape), 0.0).astype(np.float32)
  np.testing.assert_allclose(float(loss(old + noise)), float(loss(old)), rtol=1e-6)
  assert abs(float(loss(old + 0.1 * own)) - float(loss(old))) > 1e-3  # policy tokens count


def test_a_tiny_grpo_run_with_tools_trains_and_logs_calls(tmp_path, stub_tools):
  from configs import r1_zero
  from r1jax import train as train_lib
  c = r1_zero.get_config("tiny")
  c.train.num_steps, c.train.eval_every = 2, 0
  c.tools.update(enabled=True, format="stub", tools=("stub",), max_turns=2)
  rows = train_lib.train(c, str(tmp_path))
  assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
  assert all(r["tools/calls_per_sample"] > 0 and r["tools/error_share"] == 0 for r in rows)


def test_tools_config_errors_name_the_value():
  from configs import r1_zero
  from r1jax import train as train_lib
  for change, word in ((dict(max_turns=3), "tools.max_turns=3 is set but tools.enabled=False"),
                       (dict(enabled=True, format="xml"), "tools.format='xml'"),
                       (dict(enabled=True, colour=1), "tools.colour")):
    c = r1_zero.get_config("tiny")
    c.tools.update(change)
    with pytest.raises(ValueError, match=word):
      train_lib.validate(c)
  c = r1_zero.get_config("tiny")
  c.tools.enabled, c.rl.algorithm = True, "ppo"
  with pytest.raises(ValueError, match="tools.enabled=True with rl.algorithm='ppo'"):
    train_lib.validate(c)
