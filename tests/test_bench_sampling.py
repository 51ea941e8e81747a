"""The rollout benchmark runs end to end on SmolLM2 and its FLOP count is the model's."""

import pytest

from r1jax.bench import sampling as bench
from r1jax.bench.roofline import flops_per_token
from r1jax.model import gguf
from r1jax.model.smollm2 import smollm2_gguf_path

pytest.importorskip("transformers")


def test_flops_per_token_counts_smollm2_weights():
  cfg, params = gguf.load_gguf(smollm2_gguf_path())
  # Every [D, *] / [*, D] matrix of the layers plus the (tied) unembedding, 2 FLOPs each.
  layers = params["layers"]
  layers = layers.values() if isinstance(layers, dict) else layers
  matmul = sum(v.size for layer in layers for k, v in layer.items()
               if k in ("q", "k", "v", "o", "gate", "up", "down")) + params["embed"].size
  attn = 4 * cfg.num_layers * cfg.num_heads * cfg.hd * (32 + 64.5)
  assert flops_per_token(cfg, 32, 128) == pytest.approx(2 * matmul + attn)


def test_benchmark_runs_and_reports_both(tmp_path):
  res = bench.main(["--batches=2", "--new_tokens=6", "--prompt_len=8", "--repeats=1",
                    "--impls=r1jax,transformers", "--dtype=bfloat16", "--mem_bw_gbs=1000",
                    f"--json_out={tmp_path / 'out.json'}"])
  (row,) = res["rows"]
  assert row["batch"] == 2 and row["new_tokens"] == 6
  for impl in ("r1jax", "transformers"):
    assert row[impl]["tok_s"] > 0, row
  assert row["r1jax"]["gflop_s"] > 0 and 0 < row["r1jax"]["roofline_fraction"] < 1
  assert (tmp_path / "out.json").exists()
