"""The command line of every entry point: flags parsed, the whole config checked before
anything is created or written, and bad input ended in one readable line.

    if __name__ == "__main__":
      define_flags()
      cli.run(main, check=lambda: validate(flags.FLAGS.config), required=("config", "workdir"))

A bad flag, an unknown config key, or any error raised by `check` (ValueError, TypeError,
KeyError, FileNotFoundError; `ConfigError` anywhere) ends the command with exit code 2 and
one line on stderr: `error: <field>=<value>: <why>`. With `--verbose` or the environment
variable R1JAX_VERBOSE=1 the error is raised instead, with its traceback. Errors that
`main` raises at run time (not bad input) keep their traceback.

`check_model` / `check_source` / `check_path` are the file checks the entry points' `validate`
functions share: the model files, data files and run directories a config names exist.
Strings starting with "@" are pipeline references (r1jax.pipeline checks those itself).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import sys
from typing import Any, Callable, Iterable, Iterator, Mapping, NoReturn, Sequence

from absl import app, flags, logging

BAD_INPUT = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError)
EXIT_BAD_INPUT = 2
VERBOSE_ENV = "R1JAX_VERBOSE"


class ConfigError(ValueError):
  """A bad value of a named field (a config key `rl.beta`, or a flag `--checkpoint`)."""

  def __init__(self, field: str, value: Any, why: str):
    self.field, self.value, self.why = field, value, why
    super().__init__(f"{field}={value!r}: {why}")


def verbose() -> bool:
  """Whether bad input should show its traceback (`--verbose` or R1JAX_VERBOSE=1)."""
  if os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes"):
    return True
  return any(a in ("--verbose", "--verbose=true", "--verbose=1", "--verbose=True")
             for a in sys.argv[1:])


def one_line(e: BaseException) -> str:
  """The message of `e` on one line (a KeyError's quotes dropped)."""
  msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
  return " ".join(str(msg).split()) or type(e).__name__


# A message that starts `field=value why` (the validate functions' own form).
_FIELD_VALUE = re.compile(r"([A-Za-z_][\w.\[\]]*)=('[^']*'|\([^)]*\)|\[[^\]]*\]|\{[^}]*\}"
                          r"|[^\s:;,]+)[:;]?\s+(.*)")


def error_line(e: BaseException) -> str:
  """`error: <field>=<value>: <why>` (or `error: <message>` when it names no field)."""
  msg = one_line(e)
  m = _FIELD_VALUE.fullmatch(msg)
  return "error: " + (f"{m.group(1)}={m.group(2)}: {m.group(3)}" if m else msg)


def fail(e: BaseException) -> NoReturn:
  """End the command on bad input: one line and exit code 2 (re-raised when verbose)."""
  if verbose():
    raise e
  print(error_line(e), file=sys.stderr, flush=True)
  sys.exit(EXIT_BAD_INPUT)


# ------------------------------------------------------------------ flags

# Config keys that moved: old -> new (`grpo` became `rl`, the algorithm's knobs, and `train`,
# the loop's). An override of an old key stops with one line naming the new place.
_RL_KNOBS = ("epsilon", "epsilon_high", "beta", "loss_aggregation", "advantage_norm",
             "advantage_eps", "std_ddof", "kl_estimator", "policy_loss", "dual_clip_c", "tis",
             "tis_cap", "router_aux_coef", "router_replay")
_LOOP_KNOBS = ("prompts_per_step", "micro_batch_size", "mu", "dynamic_sampling",
               "max_sampling_rounds", "packing", "pack_row_len", "logprob_impl")
MOVED_KEYS = {**{f"grpo.{k}": f"rl.{k}" for k in _RL_KNOBS},
              **{f"grpo.{k}": f"train.{k}" for k in _LOOP_KNOBS},
              "grpo.advantage_estimator": "rl.algorithm (gae is ppo, reinforce_pp_baseline is "
                                          "reinforce_pp)",
              "ppo.kl_in": "rl.kl_in", "grpo": "rl (algorithm knobs) and train (loop knobs)"}


class MovedKeyError(ConfigError):
  """An override of a config key that moved (`MOVED_KEYS`): `<old>: moved to <new>`."""

  def __init__(self, field: str, new: str):
    super().__init__(field, None, f"moved to {new}")
    self.args = (f"{field}: moved to {new}",)


def moved_key(path: str) -> MovedKeyError | None:
  """The error for an override of `path` if it (or its tail, as in a pipeline's
  stages.<name>.config.grpo.beta) is a moved key."""
  parts = path.split(".")
  for i in range(len(parts)):
    for old in (".".join(parts[i:i + 2]), parts[i]):
      if old in MOVED_KEYS:
        head = ".".join(parts[:i] + [""])
        return MovedKeyError(head + old, head + MOVED_KEYS[old])
  return None


def check_moved(c: Mapping[str, Any]) -> None:
  """Raise MovedKeyError when config `c` (a ConfigDict or dict) still holds a moved key."""
  for old, new in MOVED_KEYS.items():
    group, _, key = old.partition(".")
    if group in c and (not key or key in (c[group] or {})):
      raise MovedKeyError(old, new)


def _overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
  """The (path, value) of each `--<config flag>.<path>=<value>` in argv."""
  return [(m.group(1), m.group(2)) for m in (re.match(r"--\w+\.([\w.]+)=?(.*)", a)
                                             for a in argv) if m]


def flag_error(e: Exception, argv: Sequence[str]) -> ConfigError:
  """A flag-parsing error as a ConfigError naming the flag (or config key) and value."""
  if isinstance(e, flags.UnrecognizedFlagError):
    value = e.flagvalue.split("=", 1)[1] if "=" in (e.flagvalue or "") else e.flagvalue
    return ConfigError(f"--{e.flagname}", value, "unknown command-line flag")
  if isinstance(e, (AttributeError, KeyError)):  # ml_collections: an unknown config key
    msg = str(e)
    hint = re.search(r'Did you mean "(\w+)"', msg)
    # The override whose key the message quotes (the first key of its path not in the config).
    found = [(path, path.split(".")[:i], key, value) for path, value in _overrides(argv)
             for i, key in enumerate(path.split("."))
             if re.search(rf"\\?'{key}\\?'", msg)]
    if not found:
      return ConfigError("config", " ".join(argv[1:]), "unknown config key: " + one_line(e))
    path, parents, key, value = found[0]
    if moved_key(path):
      return moved_key(path)
    why = "unknown config key" + ("" if path.endswith(key) else f" {'.'.join(parents + [key])}")
    if hint:
      why += f"; did you mean {'.'.join(parents + [hint.group(1)])}?"
    return ConfigError(path, value, why)
  m = re.match(r"flag --([\w.]+)=(.*?): (.*)", str(e), re.S)
  if m:
    name, value, why = m.groups()
    if "Traceback" in why:  # a config file's get_config() raised: keep its last line
      why = why.strip().splitlines()[-1]
    why = re.sub(r"^\w+(Error|Exception): ", "", " ".join(why.split()))
    name = name.split(".", 1)[1] if "." in name else "--" + name
    return ConfigError(name, value, why)
  return ConfigError("flags", " ".join(argv[1:]), one_line(e))


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's flag parsing, with a bad flag, config file or config key ending in one line."""
  try:
    rest = flag_values(list(argv))
  except (flags.Error, AttributeError, KeyError) as e:
    fail(flag_error(e, argv) if not verbose() else e)
  for name in flag_values:
    if not hasattr(type(flag_values[name]), "config_filename"):
      continue  # not a config file's flag (`config_flags.DEFINE_config_file`)
    value = flag_values[name].value
    try:  # a config file that failed to load holds an object that raises on any access
      if value is not None:
        value.get("_", None)
    except OSError as e:
      why = [l.strip() for l in str(e).splitlines() if l.strip()][-1]
      fail(ConfigError(f"--{name}", flag_values[name].config_filename, why)
           if not verbose() else e)
  return rest


def run(main: Callable[[], Any], check: Callable[[], Any] | None = None, *,
        required: Iterable[str] = ()) -> None:
  """`app.run` for an entry point: parse the flags, require the `required` flags, run
  `check()` (validation, before anything is written: its errors are bad input), then
  `main()`. Orbax's INFO logs are off unless --verbosity is given."""
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, f"Tracebacks for bad input too (or {VERBOSE_ENV}=1).")

  def body(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      fail(ConfigError("arguments", " ".join(argv[1:]), "unexpected; every input is a --flag"))
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    for name in required:
      if flags.FLAGS[name].value in (None, ""):
        fail(ConfigError(f"--{name}", flags.FLAGS[name].value, "required"))
    try:
      if check is not None:
        check()
    except BAD_INPUT as e:
      fail(e)
    try:
      main()
    except ConfigError as e:
      fail(e)

  app.run(body, flags_parser=parse_flags)


# ------------------------------------------------------------------ file checks


def _ref(path: Any) -> bool:
  return isinstance(path, str) and path.startswith("@")


def check_path(path: Any, field: str, *, is_dir: bool = False, what: str = "") -> None:
  """`path` (or each of a list of paths) exists (and is a directory if `is_dir`)."""
  for p in ([path] if isinstance(path, (str, os.PathLike)) else list(path or [None])):
    if _ref(p):
      continue
    if not p:
      raise ConfigError(field, p, f"needs a path{what and ' (' + what + ')'}")
    if not os.path.exists(p):
      raise ConfigError(field, str(p), "does not exist" + (f" ({what})" if what else ""))
    if is_dir and not os.path.isdir(p):
      raise ConfigError(field, str(p), "is not a directory" + (f" ({what})" if what else ""))


FILE_KINDS = ("jsonl", "parquet", "hf_disk")
# Off inside `reading_no_data()`: r1jax.aot compiles from shapes and reads no data file.
_DATA_FILES = contextvars.ContextVar("r1jax_check_data_files", default=True)


@contextlib.contextmanager
def reading_no_data() -> Iterator[None]:
  """Within it, `check_source` and `check_data_path` check kinds and fields, not files."""
  token = _DATA_FILES.set(False)
  try:
    yield
  finally:
    _DATA_FILES.reset(token)


def check_data_path(path: Any, field: str, **kw: Any) -> None:
  """`check_path` for a data file (skipped inside `reading_no_data()`)."""
  if _DATA_FILES.get():
    check_path(path, field, **kw)


def check_source(spec: Mapping[str, Any] | None, field: str,
                 kinds: Sequence[str] | None = None) -> None:
  """A data source spec names a known kind (of `kinds`; default: r1jax.data's loaders and
  "mixture") and, for file kinds, files that exist; a mixture's sources likewise."""
  if spec is None:
    return
  spec = dict(spec)
  kind = spec.get("kind")
  if kinds is None:
    from r1jax.data.sources import LOADERS
    kinds = sorted([*LOADERS, "mixture"])
  if kind not in kinds:
    raise ConfigError(f"{field}.kind", kind, f"unknown; choose one of {list(kinds)}")
  if kind == "mixture":
    for i, s in enumerate(spec.get("sources") or []):
      check_source(s, f"{field}.sources[{i}]", kinds)
  elif kind in FILE_KINDS:
    check_data_path(spec.get("path"), f"{field}.path", is_dir=kind == "hf_disk")


def check_model(spec: Mapping[str, Any] | None, field: str = "model") -> None:
  """A model spec (`r1jax.model.loader`) names a known source and the files it reads."""
  if not spec or not spec.get("source"):
    return
  from r1jax.model.config import PRESETS
  from r1jax.model.loader import SOURCES
  src = spec["source"]
  if src not in SOURCES:
    raise ConfigError(f"{field}.source", src, f"unknown; choose one of {list(SOURCES)}")
  from r1jax.model.config import runtime_fields
  for key, value in runtime_fields(spec).items():  # dtype, remat, attention_chunk, ...
    try:
      PRESETS["tiny"].replace(**{key: value})
    except ValueError as e:
      raise ConfigError(f"{field}.{key}", value, str(e)) from None
  if src == "preset" and spec.get("preset") not in PRESETS:
    raise ConfigError(f"{field}.preset", spec.get("preset"),
                      f"not a preset; choose one of {sorted(PRESETS)}")
  if src == "gguf":
    check_path(spec.get("path"), f"{field}.path", what="a GGUF file")
  if src == "hf_dir":
    check_path(spec.get("path"), f"{field}.path", is_dir=True, what="a HF model directory")
  if src == "run" and not _ref(spec.get("path")):
    check_path(spec.get("path"), f"{field}.path", is_dir=True, what="an r1jax run directory")
    for f in ("config.json", "model_config.json"):
      if not os.path.exists(os.path.join(spec["path"], f)):
        raise ConfigError(f"{field}.path", spec["path"], f"has no {f} (not an r1jax run "
                          "directory)")


def check_checkpoint(path: str, field: str = "--checkpoint") -> None:
  """`path` is a trainer workdir, its checkpoints/ directory or one step directory."""
  from r1jax.checkpoint import resolve_checkpoint
  try:
    resolve_checkpoint(path)
  except FileNotFoundError:
    raise ConfigError(field, path, "no checkpoint there (want a run directory, its "
                      "checkpoints/ directory, or one step directory inside it)") from None
