"""The SFT benchmark's KD memory part: streamed KD needs less scratch than full logits."""

import pytest

from r1jax.bench import sft as bench


def test_kd_memory_streamed_below_naive():
  # naive holds two [n, v] float32 logit tensors (and their softmaxes); streamed a block each
  n, d, v = 256, 16, 8192
  m = bench.kd_memory(n, d, v=v, block_v=512)
  assert m["naive"] >= 2 * n * v * 4
  assert m["streamed"] < m["naive"] / 4


def test_memory_only_report(capsys):
  rep = bench.main(["--memory_only", "--n=128", "--d=16"])
  assert rep["kd_memory_n128"]["streamed"] < rep["kd_memory_n128"]["naive"]
  assert "KD fwd+bwd scratch, N=128" in capsys.readouterr().out


def test_unknown_dtype_is_refused():
  with pytest.raises(SystemExit, match="float16"):
    bench.main(["--dtypes=float16", "--records=1", "--n=8", "--d=8"])
