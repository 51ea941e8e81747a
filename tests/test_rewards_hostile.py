"""Hostile completions through every reward via RewardPool: deadlines hold, nothing escapes
the code sandbox, and the pool keeps serving afterwards."""

import os
import socket
import time

import numpy as np
import pytest

from r1jax.bench.hostile import EXPLOSIVE, NESTED_TAGS
from r1jax.rewards import RewardPool

TIMEOUT_S = 2.0
MARGIN_S = 1.0
ALL = {"format": 1.0, "format_partial": 1.0, "accuracy": 1.0, "reasoning_gym": 1.0,
       "language": 1.0, "code": 1.0, "overlong": 1.0, "cosine": 1.0}


def _math_payloads() -> list[str]:
  frac = "\\frac{1}{" * 1000 + "1" + "}" * 1000
  sqrt = "\\sqrt{" * 500 + "2" + "}" * 500
  bombs = [
    "9**9**9**9", "9^{9^{9^{9}}}", "10^{10^{10}}", "(10^{10})!", "100000000!",
    "2^{2^{2^{2^{2^{2}}}}}", "\\exp(\\exp(\\exp(100)))", "10^{-10^{10}}", "x^{10^{100}}",
    "\\sum_{k=1}^{10^{12}} k", "\\int_0^\\infty e^{x^2} dx", "\\lim_{n\\to\\infty} n!",
    frac, sqrt, "(" * 5000 + ")" * 5000, "{" * 20000, "}" * 20000, "\\" * 10000,
    "1" * 1_000_000, "x" * 200_000, "1+" * 100_000 + "1", "-" * 100_000 + "5",
    "\\begin{pmatrix}" + "1&" * 2000 + "1\\end{pmatrix}", "a^{" * 40 + "1" + "}" * 40,
    "\\frac{1}{0}", "0/0", "\\infty - \\infty", "nan", "zoo", "\\sqrt{-1}", "",
    "\x00\x01\x02\x1b[2J\x7f", "\ud800\udfff", "\u202e5\u202c", "５" * 1000, "$" * 100_000,
    "\\boxed{" * 50_000, "\\text{" * 5000 + "}" * 5000, "<answer>" * 10_000,
    # Backtracking bait for the answer-form rewrites (e-notation, percent, mixed numbers,
    # |x| inequalities, compound units): long digit runs that almost match.
    "1" * 3999 + "e", "1." + "1" * 3990 + "%x", "1 " + "1" * 3990 + "/", "|" + "1" * 190 + "x",
    "1e999999", "5 hours " * 400, "|x| > " + "9" * 3990,
  ] + EXPLOSIVE
  out = []
  for b in bombs:
    out += [f"<think>t</think><answer>{b}</answer>", f"\\boxed{{{b}}}", f"#### {b}"]
  return out


def _text_payloads() -> list[str]:
  rnd = np.random.default_rng(0)
  out = [
    "a" * (1 << 20), "<think>" + "word " * 200_000 + "</think><answer>6</answer>",
    "<think>" + "</think><answer>" * 60_000, "</answer>" * 100_000,
    "<think>" * 100_000 + "</answer>", "```" * 100_000, "```python\n" * 50_000,
    "<think>" + "中文" * 200_000 + "</think>", "\n" * (1 << 20), "\x00" * (1 << 20),
    "<think>" + "Bonjour tout le monde. " * 20_000 + "</think>",
    "<think>" + "$x$ " * 100_000 + "</think>", "\\(" * 100_000, "####" * 100_000,
  ] + NESTED_TAGS
  for k in range(16):
    chars = rnd.integers(0, 0x2FFFF, size=4096)
    out.append("".join(chr(c) for c in chars if not 0xD800 <= c <= 0xDFFF))
    out.append(bytes(rnd.integers(0, 256, size=8192, dtype=np.uint8)).decode("latin-1"))
  return out


def test_math_rewards_bounded_inside_the_function():
  """With no pool deadline at all (score_inline), every hostile math/text item returns from
  accuracy, format and format_partial within 2 s: the bounds live in the functions."""
  from r1jax.rewards import score_inline
  from r1jax.rewards.registry import warmup
  warmup(["accuracy"])
  items = _math_payloads() + _text_payloads()
  names = {"accuracy": 1.0, "format": 1.0, "format_partial": 1.0}
  res = score_inline(items, [{"answer": "5", "prefill": "<think>"}] * len(items), names)
  print("worst seconds per reward:", res.max_seconds)
  for name in names:
    assert res.max_seconds[name] <= 2.0, (name, res.max_seconds[name])
  assert res.per_reward["accuracy"].max() == 0.0 and res.per_reward["format"].max() == 0.0
  assert sum(res.failures.values()) == 0


def _code_payloads(marker_dir: str, port: int, victim: str) -> list[tuple[str, str]]:
  """(name, program) pairs; each must not have any effect outside its sandbox."""
  m = os.path.join(marker_dir, "marker")
  return [
    ("infinite_loop", "while True: pass"),
    ("sleep", "import time\ntime.sleep(1000)"),
    ("sleep_in_test", "def f(x):\n  import time\n  time.sleep(1000)"),
    ("fork_bomb", "import os\nwhile True:\n  os.fork()"),
    ("posix_fork", "import posix\nposix.fork()"),
    ("thread_bomb", "import threading, time\nwhile True:\n"
                    "  threading.Thread(target=time.sleep, args=(100,)).start()"),
    ("huge_alloc", "x = bytearray(64 << 30)"),
    ("growing_alloc", "x = []\nwhile True:\n  x.append(bytearray(1 << 24))"),
    ("huge_file", f"f = open('big', 'wb')\nwhile True:\n  f.write(b'0' * (1 << 20))"),
    ("many_files", "i = 0\nwhile True:\n  open(f'f{i}', 'w').write('x' * 100000)\n  i += 1"),
    ("write_marker", f"open({m!r}, 'w').write('escaped')"),
    ("write_marker_os", f"import os\nfd = os.open({m!r}, os.O_WRONLY | os.O_CREAT)\n"
                        "os.write(fd, b'x')"),
    ("write_marker_pathlib", f"import pathlib\npathlib.Path({m!r}).write_text('x')"),
    ("write_marker_shutil", f"import shutil\nopen('x', 'w').write('x')\nshutil.copy('x', {m!r})"),
    ("write_marker_relative", f"open('../../../../../../..{m}', 'w').write('x')"),
    ("write_marker_chdir", f"import os\nos.chdir({marker_dir!r})\nopen('marker', 'w').write('x')"),
    ("write_marker_symlink", f"import os\nos.symlink({m!r}, 'link')\nopen('link', 'w').write('x')"),
    ("write_marker_tempfile", f"import tempfile\ntempfile.mkstemp(dir={marker_dir!r})"),
    ("remove_victim", f"import os\nos.remove({victim!r})"),
    ("rename_victim", f"import os\nos.rename({victim!r}, {m!r})"),
    ("chmod_victim", f"import os\nos.chmod({victim!r}, 0o777)"),
    ("truncate_victim", f"open({victim!r}, 'r+').truncate(0)"),
    ("append_victim", f"open({victim!r}, 'a').write('x')"),
    ("link_victim", f"import os\nos.link({victim!r}, 'hard')\nopen('hard', 'a').write('x')"),
    ("rmtree", f"import shutil\nshutil.rmtree({marker_dir!r})"),
    ("os_system", f"import os\nos.system('touch {m}')"),
    ("os_popen", f"import os\nos.popen('touch {m}').read()"),
    ("subprocess", f"import subprocess\nsubprocess.run(['touch', {m!r}])"),
    ("posixsubprocess", "import _posixsubprocess"),
    ("execv", f"import os\nos.execv('/usr/bin/touch', ['touch', {m!r}])"),
    ("spawn", f"import os\nos.spawnv(os.P_WAIT, '/usr/bin/touch', ['touch', {m!r}])"),
    ("posix_spawn", f"import os\nos.posix_spawn('/usr/bin/touch', ['touch', {m!r}], {{}})"),
    ("multiprocessing", "import multiprocessing\nmultiprocessing.Process(target=print).start()"),
    ("pty", "import pty\npty.fork()"),
    ("socket_connect", f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)"),
    ("socket_raw", f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))"),
    ("urllib", "import urllib.request\n"
               f"urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)"),
    ("kill_parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"),
    ("kill_all", "import os\nos.kill(-1, 9)"),
    ("killpg", "import os\nos.killpg(0, 9)"),
    ("ctypes", "import ctypes\nctypes.CDLL(None).kill(-1, 9)"),
    ("setrlimit", "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (-1, -1))"),
    ("ignore_xcpu", "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
                    "while True: pass"),
    ("proc_environ", "print(open('/proc/self/environ').read())"),
    ("proc_mem", "open('/proc/self/mem', 'rb').read(10)"),
    ("parent_environ", "import os\nopen(f'/proc/{os.getppid()}/environ').read()"),
    ("getframe_nonce", "import sys\nf = sys._getframe()\nwhile f.f_back: f = f.f_back\n"
                       "print(f.f_locals)"),
    ("tb_frame_nonce", "try:\n  1/0\nexcept Exception as e:\n"
                       "  print(e.__traceback__.tb_frame.f_back.f_locals)"),
    ("gc_nonce", "import gc\n"
                 "print([o for o in gc.get_objects() if isinstance(o, str) and len(o) == 32])"),
    ("settrace", "import sys\nsys.settrace(lambda *a: None)"),
    ("forge_results", "import os\nfor fd in range(3, 64):\n"
                      "  try: os.write(fd, b'0 pass\\n' * 10)\n  except OSError: pass"),
    ("close_fds", "import os\nfor fd in range(0, 64):\n"
                  "  try: os.close(fd)\n  except OSError: pass"),
    ("exit_zero", "import sys\nsys.exit(0)"),
    ("os_exit_zero", "import os\nos._exit(0)"),
    ("recursion", "import sys\nsys.setrecursionlimit(10**9)\ndef r(): r()\nr()"),
    ("print_flood", "while True: print('x' * 100000)"),
    ("stdout_flood", "import os\nwhile True: os.write(1, b'x' * 100000)"),
    ("stderr_flood", "import sys\nwhile True: sys.stderr.write('x' * 100000)"),
    ("reimport_posix", "import sys\ndel sys.modules['posix']\nimport posix\nposix.kill(1, 0)"),
    ("sqlite", f"import sqlite3\nsqlite3.connect({m!r})"),
    ("input_eof", "input()"),
    ("syntax_error", "def f(:"),
    ("null_bytes", "x = '\x00'"),
    ("unicode", "print('\ud800')"),
    ("always_equal", "class A:\n  def __eq__(self, o): return True\ndef f(x): return A()"),
    # Reward hacks on the harness: each leaves f wrong and tries to make the tests pass.
    ("exit_in_test", "import sys\ndef f(x):\n  sys.exit(0)"),
    ("os_exit_in_test", "import os\ndef f(x):\n  os._exit(0)"),
    ("patch_exec", "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef f(x): return 0"),
    ("patch_assertion", "import builtins\nbuiltins.AssertionError = KeyError\ndef f(x): return 0"),
    ("patch_main", "import __main__\n"
                   "__main__._compile = lambda *a, **k: compile('pass', '', 'exec')\n"
                   "__main__._make_runner = lambda *a: (lambda *b: True)\ndef f(x): return 0"),
    ("patch_hook_globals", f"import __main__\n__main__._WRITE_FLAGS = 0\n"
                           f"__main__._BLOCKED_EVENTS = frozenset()\nimport os\n"
                           f"os.open({m!r}, os.O_WRONLY | os.O_CREAT)"),
    ("patch_isinstance", f"import builtins\nbuiltins.isinstance = lambda *a: False\n"
                         f"builtins.any = lambda *a: False\nopen({m!r}, 'w').write('x')"),
    ("patch_realpath", f"import posixpath, os\nposixpath.realpath = lambda p, **k: os.getcwd()\n"
                       f"os.path.realpath = posixpath.realpath\nopen({m!r}, 'w').write('x')"),
    ("fspath_toctou", "class P:\n  n = 0\n  def __fspath__(self):\n    P.n += 1\n"
                      f"    return 'ok' if P.n % 2 else {m!r}\nopen(P(), 'w').write('x')"),
    ("shadow_builtins", "def f(x): return 0\nAssertionError = None\nprint = None"),
  ]


def _hostile_corpus(marker_dir, port, victim):
  items = [(f"math{k}", c) for k, c in enumerate(_math_payloads())]
  items += [(f"text{k}", c) for k, c in enumerate(_text_payloads())]
  for name, prog in _code_payloads(marker_dir, port, victim):
    items.append((name, f"<think>hack</think><answer>```python\n{prog}\n```</answer>"))
  return items


@pytest.fixture
def listener():
  srv = socket.socket()
  srv.bind(("127.0.0.1", 0))
  srv.listen(16)
  srv.setblocking(False)
  yield srv
  srv.close()


def _connections(srv) -> int:
  n = 0
  while True:
    try:
      conn, _ = srv.accept()
    except BlockingIOError:
      return n
    conn.close()
    n += 1


def test_hostile_corpus_through_every_reward(tmp_path, listener):
  import reasoning_gym
  entry = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=0)[0]
  marker_dir = tmp_path / "outside"
  marker_dir.mkdir()
  os.chmod(marker_dir, 0o777)  # writable by anyone: only the sandbox itself may stop writes
  victim = marker_dir / "victim.txt"
  victim.write_text("intact")
  os.chmod(victim, 0o666)
  port = listener.getsockname()[1]
  items = _hostile_corpus(str(marker_dir), port, str(victim))
  assert len(items) >= 200
  example = {"answer": "5", "task": "basic_arithmetic", "entry": entry, "language": "en",
             "tests": ["assert f(1) == 2", "assert f(2) == 4"], "prefill": "<think>"}
  t0 = time.monotonic()
  with RewardPool(ALL, timeout_s=TIMEOUT_S, num_workers=2) as pool:
    res = pool.score([c for _, c in items], [example] * len(items))
    elapsed = time.monotonic() - t0
    # Every item answered (or was killed) within its deadline plus a small margin.
    for name, seconds in res.max_seconds.items():
      assert seconds <= TIMEOUT_S + MARGIN_S, (name, seconds)
    # Nothing scored: no hostile completion earns accuracy or code credit.
    names = [n for n, _ in items]
    assert res.per_reward["accuracy"].max() == 0.0
    code = dict(zip(names, res.per_reward["code"]))
    assert all(v == 0.0 for v in code.values()), {n: v for n, v in code.items() if v}
    assert np.isfinite(res.total).all() and res.invalid == 0

    # The pool keeps serving, with correct results.
    good = ["<think>ok</think><answer>5</answer>\n```python\ndef f(x):\n  return 2 * x\n```"]
    after = pool.score(good * 4, [example] * 4)
    np.testing.assert_array_equal(after.per_reward["accuracy"], [1.0] * 4)
    np.testing.assert_array_equal(after.per_reward["code"], [1.0] * 4)
    assert sum(after.failures.values()) == 0
    pool_tmp = pool._tmp
  print(f"hostile: {len(items)} completions x {len(ALL)} rewards in {elapsed:.1f} s; "
        f"failures {res.failures}")

  # Nothing escaped the sandbox.
  assert not (marker_dir / "marker").exists()
  assert victim.read_text() == "intact" and (victim.stat().st_mode & 0o777) == 0o666
  assert sorted(p.name for p in marker_dir.iterdir()) == ["victim.txt"]
  assert _connections(listener) == 0
  assert not os.path.exists(pool_tmp)


def test_sandbox_runs_unprivileged_when_root():
  from r1jax.rewards.code_exec import _can_drop_privileges, run_tests
  uid = run_tests("import os\nprint(os.getuid(), os.geteuid())", "io", [""])[0]
  if os.geteuid() == 0 and _can_drop_privileges(None):
    assert uid.split() == ["65534", "65534"]
  else:
    assert uid.split() == [str(os.getuid()), str(os.geteuid())]


def test_stuck_worker_is_killed_and_replaced():
  # The sandbox's own timeout is set beyond the pool deadline, so the parent must kill.
  sleepy = "<answer>```python\nimport time\ntime.sleep(60)\n```</answer>"
  fine = "<answer>```python\ndef f(x): return 2 * x\n```</answer>"
  ex = {"answer": "1", "tests": ["assert f(1) == 2"]}
  with RewardPool({"code": 1.0, "format_partial": 1.0}, timeout_s=1.0, num_workers=2,
                  reward_kwargs={"code": {"timeout_s": 60.0}}) as pool:
    t0 = time.monotonic()
    res = pool.score([sleepy, fine, sleepy, fine], [ex] * 4)
    assert time.monotonic() - t0 < 30
    assert res.failures == {"code": 2, "format_partial": 0}
    np.testing.assert_array_equal(res.per_reward["code"], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(res.per_reward["format_partial"], [0.5] * 4)
    assert res.max_seconds["code"] <= 1.0 + MARGIN_S
    again = pool.score([fine] * 3, [ex] * 3)
    np.testing.assert_array_equal(again.per_reward["code"], [1.0] * 3)
    assert again.failures["code"] == 0


def test_crashed_worker_is_counted_and_replaced():
  import signal
  import threading
  sleepy = "<answer>```python\nimport time\ntime.sleep(60)\n```</answer>"
  ex = {"answer": "1", "tests": ["assert True"]}
  with RewardPool({"code": 1.0}, timeout_s=30.0, num_workers=1,
                  reward_kwargs={"code": {"timeout_s": 60.0}}) as pool:
    pool.score(["warm"], [ex])
    pid = pool._workers[0].proc.pid
    killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))  # a worker crash
    killer.start()
    t0 = time.monotonic()
    res = pool.score([sleepy], [ex])
    killer.join()
    assert time.monotonic() - t0 < 15
    assert res.failures == {"code": 1} and res.per_reward["code"][0] == 0.0
    fine = "<answer>```python\nx = 1\n```</answer>"
    assert pool.score([fine], [ex]).per_reward["code"][0] == 1.0
    assert pool._workers[0].proc.pid != pid


@pytest.mark.parametrize("answer, explosive", [
  ("5!", False), ("\\frac{1}{2004!}", False), ("x!!", False), ("3!!!", False),
  ("\\binom{100}{50}", False), ("{10 \\choose 3}", False), ("(x+1)^{2}", False),
  ("2^{2023}", False), ("e^{i\\pi}", False), ("a != b", False), ("10^{-5}", False),
  ("(1+\\frac{1}{n})^{n}", False), ("x^{n+1}", False),
  ("4!!!", True),  # latex2sympy reads it as ((4!)!)! = (620448401733239439360000)!
  ("2^{3}!", True), ("(x+1)^{100}", True), ("(3!)!", True),
] + [(b, True) for b in EXPLOSIVE])
def test_explosive_screen(answer, explosive):
  from r1jax.rewards.explosive import is_explosive
  assert is_explosive(answer) == explosive
