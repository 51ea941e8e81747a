"""Tools a policy can call while it reasons: finding a call in its text, running the tool
under limits, and the reply it reads next (`r1jax.multiturn` drives the turns).

Call formats (`ToolConfig.format`, one table, `FORMATS`):
- "python_block": a fenced ```python block is a call of the tool "python" (as in the code
  reward, and TRL/verl's code-interpreter examples); the reply is a fenced ```output block;
- "tool_call": `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen2.5/Qwen3 and
  Hermes chat templates); the reply is `<tool_response>...</tool_response>`.
Tools (`ToolConfig.tools`): "python" (the code reward's sandbox: its own interpreter, session,
temporary directory, CPU / memory / output limits, killed at the deadline; an uncaught
exception prints its last line), "calculator" (arithmetic on numbers only, parsed with `ast`,
never `eval`), or "module:function", a user callable run in a worker process (killed and
restarted when it passes the deadline) and called with the call's arguments as keywords.
A tool never raises into the rollout: an unknown tool, bad arguments, a crash, a hang or a
flood of output give an `error: ...` reply (cut to `max_reply_chars`) and the sample goes on.
"""

from __future__ import annotations

import ast
import atexit
import concurrent.futures as cf
import dataclasses
import importlib
import json
import math
import multiprocessing
import operator
import re
import threading
from typing import Any, Callable, NamedTuple

from r1jax.rewards import code_exec


@dataclasses.dataclass(frozen=True)
class ToolConfig:
  format: str = "python_block"          # a key of FORMATS
  tools: tuple[str, ...] = ("python",)  # "python", "calculator", "module:function"
  max_turns: int = 4                    # tool calls per sample; the turn after the last is free
  timeout_s: float = 5.0                # per call, wall clock
  memory_mb: int = 512                  # the python sandbox's address-space limit
  max_reply_chars: int = 1000           # longer replies are cut, with a note
  workers: int = 4                      # calls of one turn run this many at a time

  def __post_init__(self):
    if self.format not in FORMATS:
      raise ValueError(f"tools.format={self.format!r}; choose from {sorted(FORMATS)}")
    for name in self.tools:
      if name not in BUILTIN and not re.fullmatch(r"[\w.]+:\w+", name):
        raise ValueError(f"tools.tools has {name!r}: want 'python', 'calculator' or "
                         "'module:function'")
    for key in ("max_turns", "workers", "max_reply_chars", "memory_mb"):
      if int(getattr(self, key)) < 1:
        raise ValueError(f"tools.{key}={getattr(self, key)!r} must be >= 1")
    if not self.timeout_s > 0:
      raise ValueError(f"tools.timeout_s={self.timeout_s!r} must be > 0")


def from_config(c) -> ToolConfig | None:
  """The `tools` config group as a ToolConfig, or None when `tools.enabled` is False (then a
  knob set away from its default is an error: it would be ignored)."""
  group = dict(c.get("tools") or {})
  enabled = bool(group.pop("enabled", False))
  defaults = dataclasses.asdict(ToolConfig())
  unknown = sorted(set(group) - set(defaults))
  if unknown:
    raise ValueError(f"tools.{unknown[0]} is not a tools option; choose from {sorted(defaults)}")
  group = {k: tuple(v) if k == "tools" else v for k, v in group.items()}
  if not enabled:
    for k, v in group.items():
      if v != defaults[k]:
        raise ValueError(f"tools.{k}={v!r} is set but tools.enabled=False (it would be ignored)")
    return None
  return ToolConfig(**group)


class Call(NamedTuple):
  name: str        # the tool called ("" when the call text could not be read)
  arguments: Any   # dict of keyword arguments, or an error message when name == ""
  end: int         # index in the text just after the call


# ----------------------------------------------------------------------------- formats

_PY_BLOCK = re.compile(r"```python[ \t]*\n(.*?)```", re.DOTALL)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def _parse_python_block(text: str) -> Call | None:
  m = _PY_BLOCK.search(text)
  return Call("python", {"code": m.group(1)}, m.end()) if m else None


def _parse_tool_call(text: str) -> Call | None:
  m = _TOOL_CALL.search(text)
  if not m:
    return None
  try:
    obj = json.loads(m.group(1))
  except ValueError as e:
    return Call("", f"the tool call is not valid JSON ({e})", m.end())
  if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
    return Call("", 'a tool call needs {"name": ..., "arguments": {...}}', m.end())
  args = obj.get("arguments", {})
  if isinstance(args, str):  # some templates send the arguments JSON-encoded
    try:
      args = json.loads(args)
    except ValueError:
      pass
  if not isinstance(args, dict):
    return Call("", f"the arguments of {obj['name']!r} must be a JSON object", m.end())
  return Call(obj["name"], args, m.end())


# format -> (parser: text -> first complete Call or None, reply: body -> text)
FORMATS: dict[str, tuple[Callable[[str], Call | None], Callable[[str], str]]] = {
    "python_block": (_parse_python_block, lambda body: f"\n```output\n{body}\n```\n"),
    "tool_call": (_parse_tool_call,
                  lambda body: f"\n<tool_response>\n{body}\n</tool_response>\n"),
}


def find_call(text: str, fmt: str) -> Call | None:
  """The first complete tool call in `text` (a policy turn), or None."""
  return FORMATS[fmt][0](text)


def format_reply(body: str, fmt: str) -> str:
  return FORMATS[fmt][1](body)


# ----------------------------------------------------------------------------- the tools

_WRAP = """\
import sys as _sys
_src = {code!r}
try:
    exec(compile(_src, "<tool>", "exec"), {{"__name__": "__main__"}})
except BaseException as _e:
    print(f"{{type(_e).__name__}}: {{_e}}")
"""


def _python(arguments: dict, cfg: ToolConfig) -> str:
  code = arguments.get("code")
  if not isinstance(code, str):
    return "error: python needs a string argument 'code'"
  out = code_exec.run_tests(_WRAP.format(code=code), "io", [""], timeout_s=cfg.timeout_s,
                            memory_mb=cfg.memory_mb, output_bytes=16 * cfg.max_reply_chars)[0]
  if out is None:
    return (f"error: the program did not finish (over {cfg.timeout_s:g} s, out of memory, or "
            "too much output)")
  return out


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log, "sin": math.sin,
          "cos": math.cos, "tan": math.tan, "abs": abs, "round": round, "floor": math.floor,
          "ceil": math.ceil, "factorial": math.factorial}
_CONSTS = {"pi": math.pi, "e": math.e}


# CPython's ast.parse is not thread-safe (3.11/3.12: "AST constructor recursion depth
# mismatch" when threads parse at once, python/cpython#106905); run_calls' threads share it.
_PARSE_LOCK = threading.Lock()


def calculate(expr: str) -> float | int:
  """Arithmetic on numbers, with + - * / // % ** and a few math functions; anything else
  (names, attributes, strings, huge powers) raises ValueError."""
  def ev(node):
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
      return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTS:
      return _CONSTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
      return _OPS[type(node.op)](ev(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
      a, b = ev(node.left), ev(node.right)
      if isinstance(node.op, ast.Pow) and abs(b) * math.log2(max(abs(a), 2)) > 4096:
        raise ValueError("power too large")
      return _OPS[type(node.op)](a, b)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCS and not node.keywords):
      args = [ev(a) for a in node.args]
      if node.func.id == "factorial" and (not args or args[0] > 1000):
        raise ValueError("factorial argument too large")
      return _FUNCS[node.func.id](*args)
    raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")
  if len(expr) > 1000:
    raise ValueError("expression too long")
  with _PARSE_LOCK:
    tree = ast.parse(expr.strip(), mode="eval")
  return ev(tree)


def _calculator(arguments: dict, cfg: ToolConfig) -> str:
  expr = arguments.get("expression", arguments.get("code"))
  if not isinstance(expr, str):
    return "error: calculator needs a string argument 'expression'"
  try:
    return repr(calculate(expr))
  except (ValueError, SyntaxError, TypeError, ArithmeticError, RecursionError) as e:
    return f"error: {type(e).__name__}: {e}"


BUILTIN: dict[str, Callable[[dict, ToolConfig], str]] = {"python": _python,
                                                         "calculator": _calculator}


def _call_user(spec: str, arguments: dict) -> str:
  """In the worker process: import `module:function` and call it."""
  module, fn = spec.split(":")
  return str(getattr(importlib.import_module(module), fn)(**arguments))


class _UserTools:
  """User callables in one spawned worker process, replaced when a call passes its deadline
  (a thread cannot be stopped; a process can)."""

  def __init__(self):
    self._pool: cf.ProcessPoolExecutor | None = None
    self._lock = threading.Lock()

  def call(self, spec: str, arguments: dict, timeout_s: float) -> str:
    with self._lock:
      if self._pool is None:
        self._pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
      pool = self._pool
    fut = pool.submit(_call_user, spec, arguments)
    try:
      return fut.result(timeout=timeout_s)
    except cf.TimeoutError:
      self._kill(pool)
      return f"error: {spec} did not answer within {timeout_s:g} s"
    except cf.process.BrokenProcessPool:
      self._kill(pool)
      return f"error: {spec} crashed its worker process"
    except Exception as e:  # noqa: BLE001 - the tool's own exception is the reply
      return f"error: {type(e).__name__}: {e}"

  def _kill(self, pool) -> None:
    with self._lock:
      if self._pool is pool:
        self._pool = None
    for p in list(getattr(pool, "_processes", {}).values()):
      p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


  def close(self) -> None:
    if self._pool is not None:
      self._kill(self._pool)


_USER = _UserTools()
atexit.register(_USER.close)  # before the interpreter tears the executor's modules down


def tool_names(cfg: ToolConfig) -> dict[str, str]:
  """The names a policy calls the configured tools by ("module:function" is "function")."""
  return {t.split(":")[-1]: t for t in cfg.tools}


def run_call(call: Call, cfg: ToolConfig) -> str:
  """The reply body for `call` (never raises), cut to `cfg.max_reply_chars`."""
  named = tool_names(cfg)
  if not call.name:
    body = f"error: {call.arguments}"
  elif call.name not in named:
    body = f"error: unknown tool {call.name!r}; available: {', '.join(named)}"
  elif call.name in BUILTIN:
    try:
      body = BUILTIN[call.name](call.arguments, cfg)
    except Exception as e:  # noqa: BLE001 - a tool's failure is its reply
      body = f"error: {call.name} failed: {type(e).__name__}: {e}"
  else:
    body = _USER.call(named[call.name], call.arguments, cfg.timeout_s)
  if len(body) > cfg.max_reply_chars:
    body = body[:cfg.max_reply_chars] + f"\n... [cut at {cfg.max_reply_chars} characters]"
  return body


def run_calls(calls: list[Call], cfg: ToolConfig) -> list[str]:
  """Reply bodies of one turn's calls, `cfg.workers` at a time."""
  if not calls:
    return []
  with cf.ThreadPoolExecutor(min(cfg.workers, len(calls))) as ex:
    return list(ex.map(lambda c: run_call(c, cfg), calls))
