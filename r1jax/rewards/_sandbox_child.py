"""Child side of the code sandbox: `python -I -B -S _sandbox_child.py` runs one program's tests.

Reads one marshalled job from stdin, locks itself down, runs the tests and writes one
line per test to the result pipe (the original stdout): `<nonce> <index> pass|fail` for
assert tests, `<nonce> <index> out <utf-8 hex>` for stdin/stdout tests (the parent
compares outputs: expected outputs never enter this process). The nonce is known only
to the parent and to main()'s frame, which frame introspection cannot reach.

Lockdown, in order: resource limits (CPU, address space, file size, processes, open
files, no core dumps); when started as root, drop to `nobody` keeping only
CAP_DAC_READ_SEARCH (the interpreter may live under /root), with no_new_privs; the
parent death signal (SIGKILL when the worker that started us dies); an audit hook
refusing sockets, process creation (fork/exec/spawn/system/subprocess), signals,
ctypes, writes outside the sandbox directory, /proc/<pid> internals, frame and gc
introspection and tracing. Audit hooks are not a security boundary by themselves; the
uid drop, the limits and the parent's kill of the whole session are the backstops.

Against reward hacking: everything the harness uses once untrusted code runs (exec,
builtins, the compiled tests, the hook's helpers) is bound beforehand, so patching
`builtins` or this `__main__` module changes nothing; tests run in a namespace where
the solution's globals cannot shadow builtins; `x == y` in test asserts compares values by
exact type (`_sandbox_strict_eq.py`): an object whose __eq__ always returns True, an int
subclass equal to everything, or either inside a list, does not pass; exiting early (sys.exit, os._exit) reports
nothing, which counts as failing.

Only the standard library is used, and few modules (start-up time is the cost of a
sandboxed run); this file and its sibling `_sandbox_strict_eq.py` must not import r1jax.
"""

import builtins
import io
import marshal
import os
import resource
import sys

# -I leaves this file's directory off sys.path: put it there for the sibling module only.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sandbox_strict_eq import compile_code, make_strict_eq  # noqa: E402

del sys.path[0]

_NOBODY = 65534
_CAP_DAC_READ_SEARCH = 2
_PR_SET_PDEATHSIG, _PR_SET_KEEPCAPS, _PR_SET_NO_NEW_PRIVS = 1, 8, 38
_PROC_SENSITIVE = frozenset(("mem", "environ", "fd", "fdinfo", "map_files", "maps",
                             "pagemap", "task", "cwd", "root", "exe"))
_BLOCKED_EVENTS = frozenset((
  "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.setuid", "os.setgid",
  "os.chroot", "pty.spawn", "sys._getframe", "sys._current_frames", "sys.settrace",
  "sys.setprofile", "sys.addaudithook", "gc.get_objects", "gc.get_referrers",
  "gc.get_referents", "resource.setrlimit", "resource.prlimit", "sqlite3.connect",
  "webbrowser.open", "signal.pthread_kill", "os.add_dll_directory",
  "os.symlink", "os.link",  # a hard link to an outside file would make it writable
))
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn",
                     "os.posix_spawn", "_winapi.", "winreg.")
# Path-changing events -> positions of their dir_fd arguments (which we cannot resolve).
_FS_EVENTS = {
  "os.remove": (1,), "os.rmdir": (1,), "os.mkdir": (2,), "os.chmod": (2,),
  "os.chown": (3,), "os.lchown": (), "os.rename": (2, 3), "os.truncate": (),
  "os.utime": (3,), "os.mkfifo": (2,), "os.mknod": (3,), "os.setxattr": (),
  "os.removexattr": (), "os.chflags": (), "os.lchflags": (), "os.lchmod": (),
  "shutil.rmtree": (1,), "shutil.chown": (),
}
# Fresh imports only (cached modules fire no event): re-importing posix would restore the
# functions removed from it below.
_BLOCKED_IMPORTS = frozenset(("ctypes", "_ctypes", "_posixsubprocess", "posix", "_signal",
                              "_xxsubinterpreters", "_testcapi", "_testinternalcapi",
                              "_multiprocessing"))
_FRAME_ATTRS = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame"))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_MAX_WRITE_OPENS = 100


def _set_limits(limits):
  def cap(which, soft, hard=None):
    try:
      resource.setrlimit(which, (soft, soft if hard is None else hard))
    except (ValueError, OSError):
      pass
  mem = limits["memory_mb"] * 2**20
  cap(resource.RLIMIT_AS, mem)
  cap(resource.RLIMIT_DATA, mem)
  cpu = max(1, int(limits["cpu_s"]))
  cap(resource.RLIMIT_CPU, cpu, cpu + 1)
  cap(resource.RLIMIT_FSIZE, limits["file_mb"] * 2**20)
  cap(resource.RLIMIT_NPROC, limits["nproc"])
  cap(resource.RLIMIT_NOFILE, 64)
  cap(resource.RLIMIT_CORE, 0)


def _drop_privileges(ctypes, libc):
  """root -> nobody keeping only CAP_DAC_READ_SEARCH (to read the interpreter's files).

  Best effort; the parent self-tests it once and turns it off where it breaks Python.
  """
  if os.geteuid() != 0:
    return
  try:
    libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setresgid(_NOBODY, _NOBODY, _NOBODY)
    os.setresuid(_NOBODY, _NOBODY, _NOBODY)
  except OSError:
    return

  class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

  class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]

  header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
  data = (Data * 2)()
  data[0].effective = data[0].permitted = 1 << _CAP_DAC_READ_SEARCH
  libc.capset(ctypes.byref(header), data)
  libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
  libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)


def _make_hook(root):
  """The audit hook; every name it uses is bound here, before untrusted code runs."""
  from _stat import S_ISLNK
  from posix import fspath, getcwd, lstat, readlink
  type_, len_, str_, bytes_, int_, float_, tuple_ = type, len, str, bytes, int, float, tuple
  perm_error, import_error, value_error, attr_error, os_error = (
    PermissionError, ImportError, ValueError, AttributeError, OSError)
  blocked_events, blocked_prefixes = _BLOCKED_EVENTS, _BLOCKED_PREFIXES
  fs_events, blocked_imports, frame_attrs = dict(_FS_EVENTS), _BLOCKED_IMPORTS, _FRAME_ATTRS
  proc_names, write_flags, max_writes = _PROC_SENSITIVE, _WRITE_FLAGS, _MAX_WRITE_OPENS
  writes = [0]

  def as_str(path, trust_fspath=False):
    """A plain str path; other path-likes only when trusted (their __fspath__ may return
    something else when the file is actually opened), else None."""
    t = type_(path)
    if t is not str_ and t is not bytes_:
      if not trust_fspath:
        return None
      path = fspath(path)
      t = type_(path)
    if t is bytes_:
      return path.decode("utf-8", "surrogateescape")
    return path if t is str_ else None

  def resolve(path):
    """Absolute path with symlinks resolved (like realpath, with bound functions only)."""
    if not path.startswith("/"):
      path = getcwd() + "/" + path
    parts, stack, hops, i = path.split("/"), [], 0, 0
    while i < len_(parts):
      comp = parts[i]
      i += 1
      if comp in ("", "."):
        continue
      if comp == "..":
        if stack:
          stack.pop()
        continue
      current = "/" + "/".join(stack + [comp])
      try:
        is_link = S_ISLNK(lstat(current).st_mode)
      except os_error:
        is_link = False
      if not is_link:
        stack.append(comp)
        continue
      hops += 1
      if hops > 40:
        return None
      target = readlink(current)
      if target.startswith("/"):
        stack = []
      parts, i = target.split("/") + parts[i:], 0
    return "/" + "/".join(stack)

  def inside(path):
    p = as_str(path)
    p = resolve(p) if p is not None else None
    return p is not None and (p == root or p.startswith(root + "/"))

  def proc_sensitive(path):
    p = as_str(path, trust_fspath=True)  # a read: the worst case is a wrong refusal
    if p is None:
      return True
    p = resolve(p)
    parts = p.split("/") if p is not None else ["", "proc", "self", "mem"]
    return len_(parts) > 3 and parts[1] == "proc" and parts[3] in proc_names

  def refuse(what):
    raise perm_error("sandbox: " + what + " refused")

  def hook(event, args):
    if event == "exec" or event == "compile":
      return
    if event == "import":
      name = args[0]
      if name in blocked_imports or name.split(".")[0] in blocked_imports:
        raise import_error("sandbox: import of " + name + " refused")
      return
    if event == "open":
      path, mode, flags = args
      if type_(path) is int_:
        return
      wants_write = False
      if type_(mode) is str_:
        for c in "wax+":
          if c in mode:
            wants_write = True
      if type_(flags) is int_ and flags & write_flags:
        wants_write = True
      if wants_write:
        writes[0] += 1
        if writes[0] > max_writes or not inside(path):
          refuse("writing " + str_(path))
      elif proc_sensitive(path):
        refuse("reading " + str_(path))
      return
    if event in blocked_events or event.startswith(blocked_prefixes):
      if event == "sys._getframe" or event == "sys._current_frames":
        raise value_error("sandbox: " + event + " refused")  # what stdlib callers tolerate
      refuse(event)
    dir_fds = fs_events.get(event)
    if dir_fds is not None:
      for i in dir_fds:
        if i < len_(args) and args[i] is not None and args[i] != -1:
          refuse(event)  # relative to a directory fd: cannot be checked
      for a in args:
        t = type_(a)
        if t is int_ or t is float_ or t is tuple_ or a is None:
          continue  # modes, sizes, times, dir_fds (checked above)
        if not inside(a):
          refuse(event + " " + str_(a))
      return
    if event == "object.__getattr__" and len_(args) > 1 and args[1] in frame_attrs:
      raise attr_error("sandbox: " + args[1] + " refused")

  return hook


def _make_runner(exec_, base_exception, system_exit):
  def run(code, g, exit_ok):
    """Run code in namespace g; True unless it raised. SystemExit is a normal end of a
    program (exit_ok) but a failure of a test (a solution exiting mid-test)."""
    try:
      exec_(code, g)
    except system_exit:
      return exit_ok
    except base_exception:  # noqa: BLE001 - untrusted code may raise anything
      return False
    return True
  return run


def main():
  job = marshal.loads(sys.stdin.buffer.read())
  nonce = job["nonce"]
  root = os.path.realpath(os.getcwd())
  result_fd = os.dup(1)
  null = os.open(os.devnull, os.O_RDWR)
  for fd in (0, 1, 2):
    os.dup2(null, fd)
  _set_limits(job["limits"])
  import ctypes
  libc = ctypes.CDLL(None, use_errno=True)  # dlopen(NULL) finds libc without ldconfig
  if job.get("drop_privileges", True):
    _drop_privileges(ctypes, libc)
  libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
  if os.getppid() != job["parent"]:  # the parent died before the signal was armed
    os._exit(3)
  del ctypes, libc
  for name in ("ctypes", "ctypes._endian", "_ctypes"):
    sys.modules.pop(name, None)
  # Started with -S (site's .pth processing costs ~60 ms): site-packages as plain entries.
  sys.path.extend(job.get("site_paths", ()))

  # Bound before any untrusted code runs (see the module docstring).
  write, string_io, text_io, bytes_io = os.write, io.StringIO, io.TextIOWrapper, io.BytesIO
  run = _make_runner(exec, BaseException, SystemExit)
  clean_builtins = dict(builtins.__dict__)
  assert_mode = job["mode"] == "assert"
  eq_name = "_r1jax_eq_" + nonce[:12]  # unguessable: the solution cannot rebind it
  strict_eq = make_strict_eq()
  program = compile_code(job["program"], "<solution>")
  if assert_mode:
    tests = [(str(i), compile_code(t, f"<test {i}>", eq_name))
             for i, t in enumerate(job["tests"])]
  else:
    tests = [(str(i), t.encode("utf-8")) for i, t in enumerate(job["tests"])]
  cap = job["limits"]["output_bytes"]
  del job

  def report(line):
    write(result_fd, (nonce + " " + line + "\n").encode("utf-8", "replace"))

  sys.stdout = sys.stderr = string_io()
  sys.stdin = text_io(bytes_io(b""))
  sys.addaudithook(_make_hook(root))
  for name in ("pidfd_open", "kill", "killpg", "fork", "forkpty", "system"):
    for mod in (os, sys.modules.get("posix")):
      if mod is not None and hasattr(mod, name):
        delattr(mod, name)

  if assert_mode:
    g = {"__name__": "__main__", "__builtins__": builtins}
    ok = program is not None and run(program, g, True)
    for i, code in tests:
      passed = False
      if ok and code is not None:
        sys.stdout = sys.stderr = string_io()
        # The solution's names, minus any that shadow builtins; builtins as they were.
        tg = {k: v for k, v in g.items() if k not in clean_builtins}
        tg["__builtins__"] = clean_builtins
        tg[eq_name] = strict_eq
        passed = run(code, tg, False)
      report(i + (" pass" if passed else " fail"))
  else:
    for i, stdin_bytes in tests:
      if program is None:
        report(i + " fail")
        continue
      out = bytes_io()
      sys.stdin = text_io(bytes_io(stdin_bytes), encoding="utf-8")
      sys.stdout = text_io(out, encoding="utf-8", write_through=True)
      ok = run(program, {"__name__": "__main__", "__builtins__": builtins}, True)
      text = ""
      try:
        text = out.getvalue()[:cap].hex()
      except ValueError:  # the program closed its stdout
        ok = False
      sys.stdout = sys.stderr = string_io()
      report(i + " out " + text if ok else i + " fail")
  report("done")
  os._exit(0)


if __name__ == "__main__":
  main()
