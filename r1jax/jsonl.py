"""Crash-safe JSONL files: whole-row appends, and rewinding to a checkpoint on restart.

A run killed at any point may leave its JSONL logs with rows for steps after its last
checkpoint and a half-written last line. `rewind(path, step)` makes such a file what it
was when checkpoint `step` was written: it drops a trailing partial line and every row
whose "step" is after `step` (step 0, a fresh start: every row). It rewrites the file via
a temporary file and an atomic rename, so a kill during the rewind loses nothing.
`append(path, rows)` writes rows as one `os.write` on an O_APPEND descriptor, so a row
is never interleaved or split by another writer.
"""

from __future__ import annotations

import json
import os
from typing import Iterable


def append(path: str, lines: Iterable[str]) -> None:
  """Append the given JSON lines (without newlines) in one write."""
  data = "".join(line + "\n" for line in lines).encode()
  if not data:
    return
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    view = memoryview(data)
    while view:
      view = view[os.write(fd, view):]
  finally:
    os.close(fd)


def rewind(path: str, step: int) -> int:
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
    tmp = path + ".rewind"
    with open(tmp, "wb") as f:
      f.write(b"".join(line + b"\n" for line in kept))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return dropped
