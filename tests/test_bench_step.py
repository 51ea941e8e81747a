"""The GRPO step benchmark runs (r1jax side, tiny model) and counts the model's FLOPs."""

import pytest

from r1jax.bench import step as bench
from r1jax.bench import step_trl
from r1jax.model import PRESETS


def test_step_flops_by_hand():
  cfg = PRESETS["tiny"]  # D=64, L=2, H=4, Hkv=2, Dh=16, F=128, V=256, tied
  weights = 2 * (64 * (4 + 2 * 2) * 16 + 4 * 16 * 64 + 3 * 64 * 128) + 64 * 256
  attn = 4 * 2 * 4 * 16
  b, g, p, n = 2, 3, 5, 4
  fwd = b * p * (2 * weights + attn * 3) + b * g * n * (2 * weights + attn * (5 + 2.5))
  f = bench.step_flops(cfg, b, g, p, n, beta=0.04)
  assert f["generate"] == pytest.approx(fwd) and f["reference"] == pytest.approx(fwd)
  assert f["policy"] == pytest.approx(3 * fwd)
  assert bench.step_flops(cfg, b, g, p, n, beta=0.0)["reference"] == 0


def test_train_matmuls_by_hand():
  cfg = PRESETS["tiny"]  # D=64, L=2, H=4, Hkv=2, Dh=16, F=128, V=256
  layer = lambda m, c: [(m, 64, 64, c), (m, 64, 32, 2 * c), (m, 64, 64, c), (m, 64, 128, 2 * c),
                        (m, 128, 64, c)]
  # 2 prompts of 5 tokens x 3 samples of 4 new tokens: 10 prompt tokens and 6 x 3 completion
  # tokens through the 2 layers, 6 x 4 rows through the unembedding (1 block of 256)
  assert bench.train_matmuls(cfg, 2, 3, 5, 4, 1) == layer(10, 2) + layer(18, 2) + [(24, 64, 256, 1)]
  # 2 micro-batches of one prompt group each: half the rows, twice the count
  assert bench.train_matmuls(cfg, 2, 3, 5, 4, 2) == layer(5, 4) + layer(9, 4) + [(12, 64, 256, 2)]


@pytest.mark.parametrize("rows,g,mbs,want", [
    (8, 4, 8, 1),     # 2x4: one micro-batch of 8
    (32, 8, 8, 4),    # 4x8 with the default 8 rows: one group each
    (32, 8, 0, 1),    # 0: the whole batch
    (32, 8, 20, 2),   # 20 rows -> 2 whole groups (16)
    (24, 8, 16, 3),   # 2 groups do not divide 3 groups -> 1 group each
    (32, 8, 4, 4),    # fewer rows than a group -> one group
    (32, 8, 64, 1)])
def test_micro_batches_by_hand(rows, g, mbs, want):
  assert bench.micro_batches(rows, g, mbs) == want


def test_bench_runs_r1jax_alone(tmp_path, capsys):
  res = bench.main(["--model=tiny", "--shapes=2x2x4", "--betas=0.04", "--prompt_len=6",
                    "--micro_batch_size=2", "--trl_python=", "--rate_size=256",
                    f"--json_out={tmp_path / 'out.json'}"])
  (row,) = res["rows"]
  (r,) = row["r1jax"]
  assert r["lengths"] == 4  # every completion full length
  assert r["micro_batches"] == 2  # one group each, as the trainer would split
  assert r["total"] > 0 and r["generate"] > 0 and r["reference"] > 0 and r["policy"] > 0
  assert row["trl"] == [] and res["rate_gflops"] > 0 and row["matmul_floor"] > 0
  out = capsys.readouterr().out
  assert "cpu flags:" in out and "| 2x2x4 | 0.04 | r1jax static+padded |" in out
  assert (tmp_path / "out.json").exists()


def test_forward_flops_of_uneven_lengths_by_hand():
  cfg = PRESETS["tiny"]
  weights = 2 * (64 * (4 + 2 * 2) * 16 + 4 * 16 * 64 + 3 * 64 * 128) + 64 * 256
  attn = 4 * 2 * 4 * 16
  # 1 prompt of 5 tokens, 2 samples of 1 and 3 tokens: token t of a completion attends to
  # 5 + t keys, so 6 and 6 + 7 + 8
  want = 5 * (2 * weights + attn * 3) + 4 * 2 * weights + attn * (6 + 6 + 7 + 8)
  assert bench.forward_flops(cfg, 1, 2, 5, 3, [1, 3]) == pytest.approx(want)
  assert bench.forward_flops(cfg, 1, 2, 5, 3, [3, 3]) == pytest.approx(
      bench.forward_flops(cfg, 1, 2, 5, 3))


def test_long_tail_rows_train_on_the_forced_lengths(capsys):
  res = bench.main(["--model=tiny", "--shapes=2x4x16", "--betas=0.04", "--prompt_len=6",
                    "--micro_batch_size=4", "--trl_python=", "--rate_size=128",
                    "--lengths=lognormal", "--median=4", "--sigma=1",
                    "--r1jax_modes=static+padded,continuous+packed", "--num_slots=3"])
  (row,) = res["rows"]
  lens = row["lengths"]
  assert len(lens) == 8 and max(lens) <= 16 and len(set(lens)) > 2
  padded, packed = row["r1jax"]
  assert padded["mode"] == "static+padded" and packed["mode"] == "continuous+packed"
  for r in (padded, packed):
    assert r["useful"] == sum(lens) == row["useful"] and r["lengths"] == min(lens)
  # padded: 8 rows trimmed to the power-of-two bucket of the longest (at least 16 wide)
  assert padded["train_shape"] == f"8x{max(16, 1 << (max(lens) - 1).bit_length())}"
  # packed: rows of the power of two holding prompt + 16 tokens
  assert packed["train_shape"].endswith("x32")
  assert "best r1jax" not in capsys.readouterr().out  # no TRL row to compare with


def test_trl_side_forced_lengths_end_each_row_on_time():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, eos_token_id=2, pad_token_id=0)
  model = transformers.LlamaForCausalLM(cfg).eval()
  want = [1, 4, 2, 7]
  step_trl._force_lengths(model, want, 2, torch, transformers)
  ids = torch.randint(3, 50, (4, 5))
  out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                       max_new_tokens=8, pad_token_id=0, eos_token_id=2)[:, 5:]
  for row, n in zip(out.tolist(), want):
    assert row[n - 1] == 2 and 2 not in row[:n - 1]  # EOS is exactly the n-th token
    assert all(t == 0 for t in row[n:])  # then padding
