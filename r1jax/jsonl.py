"""JSONL files: whole-row appends, atomic rewrites, torn-line repair, and rewinding.

Every JSON-lines file the library writes goes through here. A row is
`json.dumps(record, ensure_ascii=False)` plus a newline, in UTF-8.
`append(path, lines)` writes rows as one `os.write` on an O_APPEND descriptor, so a row is
never interleaved or split by another writer. `write(path, records)` replaces a file
through a temporary file and an atomic rename, so a failure or a kill midway leaves the old
file as it was. A run killed while appending may leave a half-written last line:
`repair(path)` cuts it off before more rows are appended, and `read(path, drop_torn=True)`
skips it. `rewind(path, step)` makes a log what it was when checkpoint `step` was written:
it drops a torn last line and every row whose "step" is after `step` (step 0, a fresh
start: every row).
"""

from __future__ import annotations

import gzip
import json
import os
from typing import Any, Iterable


def dumps(record: Any) -> str:
  """One JSONL row (without its newline)."""
  return json.dumps(record, ensure_ascii=False)


def append(path: str | os.PathLike, lines: Iterable[str]) -> None:
  """Append the given JSON lines (without newlines) in one write; creates the file (empty
  when there are no lines), as opening it for appending does."""
  data = "".join(line + "\n" for line in lines).encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    view = memoryview(data)
    while view:
      view = view[os.write(fd, view):]
  finally:
    os.close(fd)


def append_records(path: str | os.PathLike, records: Iterable[Any]) -> None:
  """Append records as rows, all in one write."""
  append(path, [dumps(r) for r in records])


def _replace(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
  """Write `chunks` to a temporary file beside `path`, then rename it over `path`; on any
  error the temporary file is removed and `path` is untouched."""
  tmp = f"{os.fspath(path)}.tmp"
  try:
    with open(tmp, "wb") as f:
      for chunk in chunks:
        f.write(chunk)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write(path: str | os.PathLike, records: Iterable[Any]) -> None:
  """Replace `path` with one row per record, atomically."""
  _replace(path, ((dumps(r) + "\n").encode() for r in records))


def repair(path: str | os.PathLike) -> bool:
  """Cut a last line that has no newline (a write cut short by a crash); True if cut."""
  if not os.path.exists(path):
    return False
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)
      return True
  return False


def read(path: str | os.PathLike, *, drop_torn: bool = False) -> list[Any]:
  """The rows of a .jsonl (or .jsonl.gz) file; blank lines are skipped and a bad row is an
  error naming the file and line. With `drop_torn`, a last line without a newline (torn by
  a crash) is skipped, as `repair` would cut it."""
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  out = []
  with opener(path, "rt", encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if drop_torn and not line.endswith("\n"):
        break
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from None
  return out


def rewind(path: str | os.PathLike, step: int) -> int:
  """Keep the rows of steps <= `step` (none if step == 0); returns how many were dropped."""
  if not os.path.exists(path):
    return 0
  with open(path, "rb") as f:
    data = f.read()
  lines = data.split(b"\n")
  tail = lines.pop()  # b"" when the file ends with a newline, else a half-written row
  kept, dropped = [], int(bool(tail))
  for line in lines:
    try:
      row_step = json.loads(line).get("step", 0) if line.strip() else None
    except (ValueError, AttributeError):
      row_step = None
    if row_step is not None and step > 0 and row_step <= step:
      kept.append(line)
    else:
      dropped += 1
  if dropped:
    _replace(path, (line + b"\n" for line in kept))
  return dropped
