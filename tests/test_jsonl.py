"""r1jax.jsonl: atomic rewrites, whole-row appends, torn-line repair."""

import os

import pytest

from r1jax import jsonl


def test_write_then_read_same_bytes(tmp_path):
  path = tmp_path / "a.jsonl"
  jsonl.write(path, [{"q": "é", "n": 1}, {"q": "b"}])
  assert path.read_bytes() == '{"q": "é", "n": 1}\n{"q": "b"}\n'.encode()
  assert jsonl.read(path) == [{"q": "é", "n": 1}, {"q": "b"}]
  assert os.listdir(tmp_path) == ["a.jsonl"]  # no temporary file left


def test_write_failing_midway_keeps_the_old_file(tmp_path):
  path = tmp_path / "a.jsonl"
  jsonl.write(path, [{"old": 1}])
  with pytest.raises(TypeError):
    jsonl.write(path, [{"new": 1}, {"bad": object()}])  # the second row cannot be serialised
  assert path.read_bytes() == b'{"old": 1}\n'
  assert os.listdir(tmp_path) == ["a.jsonl"]


def test_torn_last_line_dropped_on_read_and_repair(tmp_path):
  path = tmp_path / "a.jsonl"
  jsonl.append_records(path, [{"a": 1}, {"a": 2}])
  with open(path, "ab") as f:
    f.write(b'{"a": 3, "b"')  # a write cut short by a kill
  assert jsonl.read(path, drop_torn=True) == [{"a": 1}, {"a": 2}]
  with pytest.raises(ValueError, match=r"a\.jsonl:3: invalid JSON"):
    jsonl.read(path)
  assert jsonl.repair(path)
  assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
  assert not jsonl.repair(path)  # a whole file is left alone
  jsonl.append_records(path, [{"a": 4}])
  assert jsonl.read(path) == [{"a": 1}, {"a": 2}, {"a": 4}]


def test_rewind_keeps_rows_up_to_the_step(tmp_path):
  path = tmp_path / "m.jsonl"
  jsonl.append_records(path, [{"step": 1}, {"step": 2}, {"step": 3}])
  assert jsonl.rewind(path, 2) == 1
  assert jsonl.read(path) == [{"step": 1}, {"step": 2}]
