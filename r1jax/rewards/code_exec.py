"""Code reward: run the completion's last ```python block against the example's tests.

`example["tests"]` may be
* a list of Python snippets (MBPP-style `assert f(2) == 4`), each one test, run after the
  program in its namespace;
* a string of test code, one test; HumanEval's `def check(candidate): ...` needs
  `example["entry_point"]` and we call `check(<entry_point>)`;
* stdin/stdout cases: a list of {"input": ..., "output": ...} dicts or [input, output]
  pairs, or {"inputs": [...], "outputs": [...]} (APPS style). Outputs are compared token
  by token (whitespace-insensitive), in this process: expected outputs never reach the
  child.
The reward is the share of tests passed. In assert tests `x == y` compares values, not
disguises: an object whose type overrides `__eq__` (an int subclass equal to everything),
also inside a container, equals only its own type with the same value. The program runs in a fresh interpreter
(`_sandbox_child.py`, see there for the lockdown) in its own session and a temporary
directory, killed as a whole group at the wall deadline; the directory is removed after.
"""

from __future__ import annotations

import functools
import json
import logging
import marshal
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

from r1jax.rewards.base import Example, InvalidReference
from r1jax.rewards.extract import extract_code

_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
_NOBODY = 65534
MAX_RESULT_BYTES = 16 << 20


def _site_paths() -> list[str]:
  """This interpreter's site-packages, for programs that import numpy & co."""
  return [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]


def parse_tests(example: Example) -> tuple[str, list[str], list[str] | None]:
  """(mode, child-side tests, expected outputs or None) from example["tests"].

  A HumanEval record kept whole in example["entry"] also works ("test", "entry_point").
  """
  record = example.get("entry") if isinstance(example.get("entry"), Mapping) else {}
  tests: Any = example.get("tests")
  if tests is None:
    tests = record.get("test")
  if isinstance(tests, str):
    try:
      decoded = json.loads(tests)
      if isinstance(decoded, (list, dict)):
        tests = decoded
    except ValueError:
      pass
  if isinstance(tests, str):
    if "def check(" in tests:  # HumanEval: defining check() alone would test nothing
      entry = example.get("entry_point") or record.get("entry_point")
      if not entry:
        raise InvalidReference("HumanEval-style tests need example['entry_point']")
      tests = tests + f"\n\ncheck({entry})\n"
    return "assert", [tests], None
  if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
    tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
  if not isinstance(tests, (list, tuple)) or not tests:
    raise InvalidReference("example has no usable 'tests'")
  if all(isinstance(t, str) for t in tests):
    return "assert", list(tests), None
  inputs, outputs = [], []
  for t in tests:
    if isinstance(t, dict) and "input" in t and "output" in t:
      i, o = t["input"], t["output"]
    elif isinstance(t, (list, tuple)) and len(t) == 2:
      i, o = t
    else:
      raise InvalidReference(f"unrecognised test case {str(t)[:100]!r}")
    inputs.append(i if isinstance(i, str) else "\n".join(map(str, i)))
    outputs.append(o if isinstance(o, str) else "\n".join(map(str, o)))
  return "io", inputs, outputs


def outputs_match(got: str, expected: str) -> bool:
  """Whitespace-insensitive token comparison of program output with the expected one."""
  return got.split() == expected.split()


def _communicate(proc: subprocess.Popen, payload: bytes, deadline: float) -> bytes | None:
  """Write payload, read stdout until EOF; None on deadline or oversized output."""
  sel = selectors.DefaultSelector()
  out = bytearray()
  view = memoryview(payload)
  os.set_blocking(proc.stdin.fileno(), False)
  sel.register(proc.stdin, selectors.EVENT_WRITE)
  sel.register(proc.stdout, selectors.EVENT_READ)
  try:
    while sel.get_map():
      left = deadline - time.monotonic()
      if left <= 0:
        return None
      for key, _ in sel.select(left):
        if key.fileobj is proc.stdin:
          try:
            n = os.write(proc.stdin.fileno(), view[:65536])
          except BrokenPipeError:
            n = len(view)
          view = view[n:]
          if not len(view):
            sel.unregister(proc.stdin)
            proc.stdin.close()
        else:
          chunk = os.read(proc.stdout.fileno(), 65536)
          if not chunk:
            sel.unregister(proc.stdout)
          else:
            out += chunk
            if len(out) > MAX_RESULT_BYTES:
              return None
    return bytes(out)
  finally:
    sel.close()


def run_tests(program: str, mode: str, tests: Sequence[str], *, timeout_s: float = 5.0,
              memory_mb: int = 1024, file_mb: int = 16, nproc: int = 16,
              output_bytes: int = 256 << 10, python: str | None = None,
              tmp_root: str | None = None, drop_privileges: bool | None = None
              ) -> list[str | None]:
  """Run `program` against child-side tests in the sandbox.

  Returns one entry per test: "pass"/"fail" for assert tests, the captured stdout for io
  tests, None for tests that never reported (crash, timeout, killed). `tmp_root` is
  where the per-run directory is made (the pool passes its own, removed on close).
  `drop_privileges` (root only): run as nobody; None decides once per process by a
  self-test (see `_can_drop_privileges`).
  """
  if drop_privileges is None:
    drop_privileges = _can_drop_privileges(python)
  nonce = secrets.token_hex(16)
  job = {"nonce": nonce, "program": program, "mode": mode, "tests": list(tests),
         "parent": os.getpid(), "site_paths": _site_paths(),
         "limits": {"memory_mb": memory_mb, "cpu_s": timeout_s, "file_mb": file_mb,
                    "nproc": nproc, "output_bytes": output_bytes}}
  job["drop_privileges"] = drop_privileges
  workdir = tempfile.mkdtemp(prefix="r1jax_sandbox_", dir=tmp_root)
  if os.geteuid() == 0 and drop_privileges:
    os.chown(workdir, _NOBODY, _NOBODY)  # the child drops to nobody
  env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
         "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
  results: list[str | None] = [None] * len(tests)
  proc = None
  try:
    proc = subprocess.Popen(
      [python or sys.executable, "-I", "-B", "-S", _CHILD], stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=workdir, env=env,
      start_new_session=True, close_fds=True)
    raw = _communicate(proc, marshal.dumps(job), time.monotonic() + timeout_s)
  finally:
    if proc is not None:
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
      proc.kill()  # in case it left its process group
      proc.wait()
      for f in (proc.stdin, proc.stdout):
        if f is not None and not f.closed:
          f.close()
    shutil.rmtree(workdir, ignore_errors=True)
  prefix = nonce + " "
  for line in (raw or b"").decode("utf-8", "replace").splitlines():
    if not line.startswith(prefix):
      continue
    parts = line[len(prefix):].split(" ", 2)
    if len(parts) < 2 or not parts[0].isdigit() or int(parts[0]) >= len(tests):
      continue
    i = int(parts[0])
    if parts[1] == "out" and mode == "io":
      try:
        results[i] = bytes.fromhex(parts[2] if len(parts) == 3 else "").decode("utf-8", "replace")
      except ValueError:
        pass
    elif parts[1] in ("pass", "fail") and mode == "assert":
      results[i] = parts[1]
  return results


@functools.lru_cache(maxsize=None)
def _can_drop_privileges(python: str | None) -> bool:
  """Whether sandboxed programs can run as nobody here (checked once per process).

  As root the child switches to uid nobody keeping only CAP_DAC_READ_SEARCH, so it can
  still read an interpreter installed under /root. Where the container refuses that,
  a trivial program would fail; we then fall back to the other layers (and say so), and
  if even that fails the sandbox is broken: raise rather than score every program 0.
  """
  probe = dict(mode="assert", tests=["assert x == 1"], timeout_s=30.0, python=python)
  if os.geteuid() != 0:
    ok = run_tests("x = 1", drop_privileges=False, **probe)
    if ok != ["pass"]:
      raise RuntimeError("the code sandbox cannot run a trivial program")
    return False
  if run_tests("x = 1", drop_privileges=True, **probe) == ["pass"]:
    return True
  if run_tests("x = 1", drop_privileges=False, **probe) == ["pass"]:
    logging.getLogger(__name__).warning(
      "code sandbox: cannot drop root privileges here; running sandboxed code as root")
    return False
  raise RuntimeError("the code sandbox cannot run a trivial program")


def code_reward(completion: str, example: Example, *, timeout_s: float = 5.0,
                memory_mb: int = 1024, **limits: Any) -> float:
  """Share of example["tests"] that the completion's last ```python block passes."""
  mode, tests, expected = parse_tests(example)
  program = extract_code(completion)
  if program is None:
    return 0.0
  results = run_tests(program, mode, tests, timeout_s=timeout_s, memory_mb=memory_mb, **limits)
  if mode == "assert":
    passed = sum(r == "pass" for r in results)
  else:
    passed = sum(r is not None and outputs_match(r, e)
                 for r, e in zip(results, expected))
  return passed / len(tests)


def warmup() -> None:
  _can_drop_privileges(None)
