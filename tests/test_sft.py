"""SFT data, packing, losses and the SFT trainer, against hand-built and naive references."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sft as sft_configs
from r1jax import distill, jsonl
from r1jax.data import records as records_lib
from r1jax.data import sft as sft_data
from r1jax.model import forward
from r1jax.model.config import PRESETS
from r1jax.model.transformer import init_params
from r1jax.tokenizer import Tokenizer

CFG = PRESETS["tiny"]
BYTES = Tokenizer.byte_level()


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, 0)


def _conv(a1="The sum is 4.", a2="Six."):
  return [{"role": "system", "content": "Be brief."},
          {"role": "user", "content": "What is 2+2?"},
          {"role": "assistant", "content": a1},
          {"role": "user", "content": "And 3+3?"},
          {"role": "assistant", "content": a2}]


# ----------------------------------------------------------------------------- masks


def test_assistant_only_mask_byte_template():
  ex = sft_data.tokenize_records([{"messages": _conv()}], BYTES,
                                 sft_data.SFTDataConfig(template="chat")).examples[0]
  # Hand-built: the byte template renders "role: content\n" per turn; the trained bytes
  # are each assistant content with its newline, then the appended EOS (no end token).
  text = ("system: Be brief.\nuser: What is 2+2?\nassistant: The sum is 4.\n"
          "user: And 3+3?\nassistant: Six.\n")
  assert bytes(ex.ids[:-1].tolist()).decode() == text
  want = np.zeros(len(text) + 1, bool)
  for span in ("The sum is 4.\n", "Six.\n"):
    i = text.index(span, text.index("assistant: "))
    want[i:i + len(span)] = True
  want[-1] = True
  assert ex.ids[-1] == BYTES.eos_id
  np.testing.assert_array_equal(ex.trainable, want)


@pytest.fixture(scope="module")
def smol_tok():
  from r1jax.model.smollm2 import smollm2_gguf_path
  return Tokenizer.from_gguf(smollm2_gguf_path())


def test_assistant_only_mask_chatml_includes_end_of_turn(smol_tok):
  ex = sft_data.tokenize_records([{"messages": _conv()}], smol_tok,
                                 sft_data.SFTDataConfig(template="chat")).examples[0]
  trained = smol_tok.decode(ex.ids[ex.trainable], skip_special_tokens=False)
  assert trained == "The sum is 4.<|im_end|>Six.<|im_end|>"
  # Every <|im_end|> of an assistant turn is trained; system/user ones are not.
  end = smol_tok.token_to_id("<|im_end|>")
  ends = np.flatnonzero(ex.ids == end)
  assert ex.trainable[ends].tolist() == [False, False, True, False, True]


def test_cold_start_rendering_and_records(smol_tok):
  samples = [{"prompt": "Calculate 2 + 3.", "completion": "<think> 2 + 3 = 5 </think> "
              "<answer> 5 </answer>", "reward": 1.2, "reward/accuracy": 1.0},
             {"prompt": "Calculate 2 + 2.", "completion": "<think> 2 + 2 = 5 </think> "
              "<answer> 5 </answer>", "reward": 0.2, "reward/accuracy": 0.0},
             {"prompt": "Calculate 1 + 1.", "completion": "2", "reward/accuracy": 1.0}]
  recs = sft_data.cold_start_records(samples)
  assert recs == [{"question": "Calculate 2 + 3.", "reasoning": "2 + 3 = 5",
                   "summary": "The answer is $\\boxed{5}$."}]
  ex = sft_data.tokenize_records(recs, smol_tok, sft_data.SFTDataConfig(
      template="cold_start")).examples[0]
  trained = smol_tok.decode(ex.ids[ex.trainable], skip_special_tokens=False)
  assert trained == "|special_token|2 + 3 = 5|special_token|The answer is $\\boxed{5}$.<|im_end|>"
  assert sft_data.to_cold_start("<think>a\nb</think>\n<answer>7</answer>") == \
      "|special_token|a\nb|special_token|7"
  # r1jax.evaluate's samples: the <think> prefill is not in the completion, the question
  # comes from the example id.
  ev = [{"id": "q1", "completion": " 4 - 1 = 3 </think> <answer>3</answer>",
         "reward/accuracy": 1.0}]
  assert sft_data.cold_start_records(ev, questions={"q1": "Calculate 4 - 1."}) == [
      {"question": "Calculate 4 - 1.", "reasoning": "4 - 1 = 3",
       "summary": "The answer is $\\boxed{3}$.", "id": "q1"}]


def test_generations_keep_correct_ones():
  rec = {"problem": "p?", "generations": ["right", "wrong", "also right"],
         "correctness_math_verify": [True, False, True]}
  convs = sft_data.record_conversations(rec, "r", sft_data.SFTDataConfig())
  assert [c[-1]["content"] for c in convs] == ["right", "also right"]


def test_prompt_completion_is_completion_only():
  ex = sft_data.tokenize_records([{"prompt": "Q", "completion": "AB"}], BYTES,
                                 sft_data.SFTDataConfig(template="plain")).examples[0]
  assert bytes(ex.ids[:-1].tolist()) == b"Q\nAB"
  assert ex.trainable.tolist() == [False, True, True, True, True]


@pytest.mark.parametrize("rec,msg", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"text": "hello"}, "unknown field layout"),
    ({"problem": "p", "generations": ["a"]}, "without correctness flags"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "bad message"),
])
def test_bad_records_name_the_record(rec, msg):
  rec = dict(rec, id="rec-7")
  with pytest.raises(sft_data.BadRecord, match=f"record 0 \\(id 'rec-7'\\).*{msg}"):
    sft_data.tokenize_records([rec], BYTES, sft_data.SFTDataConfig())
  good = {"prompt": "Q", "completion": "A"}
  out = sft_data.tokenize_records([rec, good], BYTES,
                                  sft_data.SFTDataConfig(on_bad_record="skip"))
  assert out.stats["skipped_bad"] == 1 and out.stats["examples"] == 1


def test_row_shorter_than_prompt_and_overlong():
  rec = {"prompt": "x" * 40, "completion": "y" * 10}
  plain = dict(template="plain")
  with pytest.raises(sft_data.BadRecord, match="seq_len=20 .*prompt alone is 40 tokens"):
    sft_data.tokenize_records([rec], BYTES, sft_data.SFTDataConfig(seq_len=20, **plain))
  out = sft_data.tokenize_records([rec], BYTES, sft_data.SFTDataConfig(seq_len=46, **plain))
  assert out.stats["truncated"] == 1 and len(out.examples[0].ids) == 46
  out = sft_data.tokenize_records([rec, {"prompt": "q", "completion": "a"}], BYTES,
                                  sft_data.SFTDataConfig(seq_len=46, overlong="drop", **plain))
  assert out.stats["dropped_overlong"] == 1 and out.stats["examples"] == 1


def test_tokenisation_mismatch_is_an_error(smol_tok):
  # "ab" + "c" tokenised apart differs from "abc" at once for a BPE vocabulary.
  pieces = [("Hello wor", False), ("ld", True)]
  with pytest.raises(sft_data.BadRecord, match="merge across a turn boundary"):
    sft_data.tokenize_pieces(pieces, smol_tok, "record 3")


# ----------------------------------------------------------------------------- packing


def test_best_fit_decreasing_hand_example():
  # 5 -> bin0 (room 3); 4 -> bin1 (4); 3 -> bin0 (fullest that fits, 0); 3 -> bin1 (1);
  # 2 -> new bin2 (6); 1 -> bin1 (0).
  assert sft_data.pack_best_fit_decreasing([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]
  with pytest.raises(ValueError, match="item 0 of length 9"):
    sft_data.pack_best_fit_decreasing([9], 8)


def _examples():
  rng = np.random.default_rng(0)
  out = []
  for n, p in ((11, 4), (7, 3), (9, 5)):
    ids = rng.integers(3, 256, n).astype(np.int32)
    out.append(sft_data.Tokenized(ids, np.arange(n) >= p))
  return out


def test_packed_rows_layout():
  exs = _examples()
  row = sft_data.pack_rows(exs, [[0, 1]], 20, 0)
  assert row["segment_ids"][0].tolist() == [1] * 11 + [2] * 7 + [0] * 2
  assert row["positions"][0].tolist() == list(range(11)) + list(range(7)) + [0, 0]
  assert row["targets"][0, :10].tolist() == exs[0].ids[1:].tolist()
  assert row["loss_mask"][0, 10] == 0  # the last token of a segment predicts nothing


def _naive_loss(params, exs):
  """Each example alone, full logits, numpy log-softmax: mean NLL over trained targets."""
  nll, count = 0.0, 0
  for ex in exs:
    t = jnp.asarray(ex.ids)[None]
    logits, _ = forward(params, CFG, t, jnp.arange(len(ex.ids))[None])
    lp = jax.nn.log_softmax(logits[0], -1)
    tgt = ex.ids[1:]
    sel = ex.trainable[1:]
    nll = nll - jnp.sum(jnp.where(sel, lp[jnp.arange(len(tgt)), tgt], 0.0))
    count += int(sel.sum())
  return nll / count


def test_packed_loss_and_grads_equal_unpacked_naive(params):
  exs = _examples()
  packed = sft_data.pack_rows(exs, sft_data.pack_best_fit_decreasing(
      [len(e.ids) for e in exs], 20), 20, 0)
  assert packed["tokens"].shape[0] == 2  # 11+9 share a row, 7 alone
  dcfg = distill.DistillConfig()
  f = lambda p: distill.sft_objective(p, packed, CFG, dcfg)[0]
  loss, grads = jax.jit(jax.value_and_grad(f))(params)
  ref, ref_grads = jax.jit(jax.value_and_grad(lambda p: _naive_loss(p, exs)))(params)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_segments_do_not_see_each_other(params):
  exs = _examples()
  row = sft_data.pack_rows(exs, [[0, 1]], 20, 0)
  changed = [exs[0], sft_data.Tokenized(exs[1].ids[::-1].copy(), exs[1].trainable)]
  row2 = sft_data.pack_rows(changed, [[0, 1]], 20, 0)
  h1 = distill.hidden_states(params, CFG, row)
  h2 = distill.hidden_states(params, CFG, row2)
  np.testing.assert_array_equal(h1[:11], h2[:11])
  assert not np.allclose(h1[11:18], h2[11:18])
  # and the second segment's states equal that example run alone at positions 0..6
  alone, _ = forward(params, CFG, jnp.asarray(exs[1].ids)[None], jnp.arange(7)[None],
                     return_hidden=True)
  np.testing.assert_allclose(h1[11:18], alone[0], atol=1e-5)


# ----------------------------------------------------------------------------- KD losses


def _np_logsoftmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_div(zt, zs, beta, temp, k=0):
  zt, zs = zt / temp, zs / temp
  if k:
    ids = np.argsort(-zt, axis=-1, kind="stable")[:, :k]
    zt, zs = np.take_along_axis(zt, ids, -1), np.take_along_axis(zs, ids, -1)
  lp, lq = _np_logsoftmax(zt), _np_logsoftmax(zs)
  p, q = np.exp(lp), np.exp(lq)
  if beta == 0:
    return (p * (lp - lq)).sum(-1)
  if beta == 1:
    return (q * (lq - lp)).sum(-1)
  m = beta * p + (1 - beta) * q
  return beta * (p * (lp - np.log(m))).sum(-1) + (1 - beta) * (q * (lq - np.log(m))).sum(-1)


def _jnp_div(zt, zs, beta, temp):  # full-logits jax version, only for its gradient
  lp, lq = jax.nn.log_softmax(zt / temp, -1), jax.nn.log_softmax(zs / temp, -1)
  p, q = jnp.exp(lp), jnp.exp(lq)
  if beta == 0:
    return (p * (lp - lq)).sum(-1)
  if beta == 1:
    return (q * (lq - lp)).sum(-1)
  lm = jnp.log(beta * p + (1 - beta) * q)
  return beta * (p * (lp - lm)).sum(-1) + (1 - beta) * (q * (lq - lm)).sum(-1)


@pytest.mark.parametrize("name,beta,naive_beta", [("forward_kl", None, 0.0),
                                                    ("reverse_kl", None, 1.0), ("jsd", 0.3, 0.3)])
@pytest.mark.parametrize("top_k", [0, 5])
def test_divergence_names_pick_their_divergence(name, beta, naive_beta, top_k):
  """distill.divergence (a key of DIVERGENCES) -> the naive divergence of that name."""
  rng = np.random.default_rng(2)
  ht, wt = rng.normal(size=(4, 5)), rng.normal(size=(5, 19))
  hs, ws = rng.normal(size=(4, 3)), rng.normal(size=(3, 19))
  cfg = distill.DistillConfig(divergence=name, temperature=1.5, top_k=top_k, block_v=8,
                              **({} if beta is None else {"beta": beta}))
  got = distill.kd_per_token(*(jnp.asarray(x, jnp.float32) for x in (ht, wt, hs, ws)), cfg)
  want = _np_div(ht @ wt, hs @ ws, naive_beta, 1.5, top_k)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_streamed_divergence_matches_naive_with_grad(beta, temp):
  rng = np.random.default_rng(1)
  n, dt, ds, v = 6, 5, 4, 37  # v not a multiple of the block: padded columns
  ht, wt = rng.normal(size=(n, dt)), rng.normal(size=(dt, v))
  hs, ws = rng.normal(size=(n, ds)), rng.normal(size=(ds, v))
  ht, wt, hs, ws = (jnp.asarray(x, jnp.float32) for x in (ht, wt, hs, ws))
  got = distill.streamed_divergence(ht, wt, hs, ws, beta, temp, block_v=8)
  want = _np_div(np.asarray(ht @ wt, np.float64), np.asarray(hs @ ws, np.float64), beta, temp)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  g = jax.grad(lambda h, w: distill.streamed_divergence(ht, wt, h, w, beta, temp, 8).sum(),
               argnums=(0, 1))(hs, ws)
  r = jax.grad(lambda h, w: _jnp_div(ht @ wt, h @ w, beta, temp).sum(), argnums=(0, 1))(hs, ws)
  for a, b in zip(g, r):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_top_k_divergence_matches_naive_with_grad(beta):
  rng = np.random.default_rng(2)
  n, d, v, k, temp = 5, 4, 29, 6, 1.5
  ht, wt, hs, ws = (jnp.asarray(rng.normal(size=s), jnp.float32)
                    for s in ((n, d), (d, v), (n, d), (d, v)))
  got = distill.top_k_divergence(ht, wt, hs, ws, beta, k, temp, block_v=8, block_n=2)
  want = _np_div(np.asarray(ht @ wt, np.float64), np.asarray(hs @ ws, np.float64), beta,
                 temp, k)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  ids = np.argsort(-np.asarray(ht @ wt), -1)[:, :k]

  def ref(h, w):
    return _jnp_div(jnp.take_along_axis(ht @ wt, ids, -1), jnp.take_along_axis(h @ w, ids, -1),
                    beta, temp).sum()
  g = jax.grad(lambda h, w: distill.top_k_divergence(ht, wt, h, w, beta, k, temp, 8, 2).sum(),
               argnums=(0, 1))(hs, ws)
  r = jax.grad(ref, argnums=(0, 1))(hs, ws)
  for a, b in zip(g, r):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_hinton_mixing_equals_naive(params):
  teacher = init_params(CFG, 1)
  exs = _examples()
  rows = sft_data.pack_rows(exs, [[0, 1], [2]], 20, 0)
  alpha, temp, beta = 0.3, 2.0, 0.0
  dcfg = distill.DistillConfig(alpha=alpha, beta=beta, temperature=temp, block_v=64)
  loss, m = distill.sft_objective(params, rows, CFG, dcfg, teacher, CFG)
  # naive: each example alone, full logits in numpy
  kd, ce, cnt = 0.0, 0.0, 0
  for ex in exs:
    t, pos = jnp.asarray(ex.ids)[None], jnp.arange(len(ex.ids))[None]
    zs = np.asarray(forward(params, CFG, t, pos)[0][0], np.float64)
    zt = np.asarray(forward(teacher, CFG, t, pos)[0][0], np.float64)
    sel = ex.trainable[1:]
    kd += _np_div(zt[:-1], zs[:-1], beta, temp)[sel].sum()
    ce -= _np_logsoftmax(zs[:-1])[np.arange(len(ex.ids) - 1), ex.ids[1:]][sel].sum()
    cnt += sel.sum()
  want = alpha * temp ** 2 * kd / cnt + (1 - alpha) * ce / cnt
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(m["kd"], kd / cnt, rtol=1e-4, atol=1e-7)


def test_teacher_vocabulary_must_match():
  from r1jax.sft import check_teacher
  big = CFG.replace(vocab_size=512)
  with pytest.raises(ValueError, match="teacher vocabulary .*512.*differs"):
    check_teacher(CFG, BYTES, big, Tokenizer.byte_level(512))


# ----------------------------------------------------------------------------- trainer


def _tiny(name="tiny", **train):
  c = sft_configs.get_config(name)
  c.unlock()
  c.eval.num_problems = 0
  c.train.update(train)
  return c


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_sft_resume_mid_epoch_reproduces_losses(tmp_path, monkeypatch):
  from r1jax import sft as sft_lib
  c = _tiny(num_steps=4, checkpoint_every=1)
  straight = sft_lib.train(c, str(tmp_path / "a"))
  real = sft_data.collate
  calls = []

  def crash(rows):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt("simulated crash in step 3")
    return real(rows)
  monkeypatch.setattr(sft_data, "collate", crash)
  with pytest.raises(KeyboardInterrupt):
    sft_lib.train(c, str(tmp_path / "b"))
  monkeypatch.setattr(sft_data, "collate", real)
  resumed = sft_lib.train(c, str(tmp_path / "b"))
  assert [r["step"] for r in resumed] == [3, 4]
  a = {r["step"]: r["loss"] for r in straight}
  b = {r["step"]: r["loss"] for r in _rows(tmp_path / "b" / "metrics.jsonl")}
  assert sorted(b) == [1, 2, 3, 4]
  for s in (1, 2, 3, 4):
    assert a[s] == pytest.approx(b[s], rel=1e-6), s
  assert a[4] < a[1]  # it learns


def test_tiny_distill_config_runs_with_on_policy_batches(tmp_path):
  from r1jax import sft as sft_lib
  c = _tiny("tiny_distill", num_steps=3, checkpoint_every=0)
  c.distill.on_policy = 1.0
  rows = sft_lib.train(c, str(tmp_path))
  assert all(r["on_policy"] == 1.0 and "kd" in r for r in rows)
  cfg = json.load(open(tmp_path / "model_config.json"))
  assert cfg["num_layers"] == 1  # tiny's 2 blocks, every 2nd kept


def test_on_policy_rows_sample_from_the_student(params):
  from r1jax import sft as sft_lib
  c = _tiny()
  c.distill.update(on_policy_max_new_tokens=5, on_policy_temperature=0.0)
  c.data.seq_len = 32
  ex = sft_data.Tokenized(np.arange(10, 20, dtype=np.int32), np.arange(10) >= 6)
  rows = sft_lib.on_policy_rows(params, CFG, [ex], BYTES, c, 0, jax.random.key(0), 2)
  # naive greedy continuation of the 6 prompt tokens by the student, full forward each step
  seq = list(ex.ids[:6])
  for _ in range(5):
    logits, _ = forward(params, CFG, jnp.asarray(seq)[None], jnp.arange(len(seq))[None])
    seq.append(int(jnp.argmax(logits[0, -1])))
    if seq[-1] in BYTES.eos_ids:
      break
  n = len(seq)
  assert rows["tokens"][0, :n].tolist() == seq
  assert rows["loss_mask"][0, :n - 1].tolist() == [0] * 5 + [1] * (n - 6)
  other = init_params(CFG, 5)
  rows2 = sft_lib.on_policy_rows(other, CFG, [ex], BYTES, c, 0, jax.random.key(0), 2)
  assert rows2["tokens"][0, :n].tolist() != seq


def test_layer_pruned_student_keeps_every_kth_block(params):
  from r1jax.model.loader import prune_layers
  cfg6 = CFG.replace(num_layers=6)
  p6 = init_params(cfg6, 0)
  cfg2, p2 = prune_layers(p6, cfg6, 3)
  assert cfg2.num_layers == 2
  np.testing.assert_array_equal(p2["layers"][1]["q"], p6["layers"][3]["q"])
  logits, _ = forward(p2, cfg2, jnp.asarray([[5, 6, 7]]), jnp.arange(3)[None])
  assert logits.shape == (1, 3, CFG.vocab_size)


def test_sft_run_is_a_loadable_stage(tmp_path):
  from r1jax import sft as sft_lib
  from r1jax.mesh import make_mesh
  from r1jax.model.loader import load_model
  c = _tiny(num_steps=2, checkpoint_every=2)
  sft_lib.train(c, str(tmp_path))
  cfg, p, tok = load_model(dict(source="run", path=str(tmp_path)), make_mesh((1, 1, 1)))
  assert cfg.num_layers == CFG.num_layers and tok.vocab_size == 256
  assert not np.allclose(p["embed"], init_params(CFG, 0)["embed"])  # trained params came back
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    load_model(dict(source="run", path=str(tmp_path / "nope")), make_mesh((1, 1, 1)))
  # and the run exports to a HF directory that transformers reads with the same logits
  transformers = pytest.importorskip("transformers")
  from hf_oracle import hf_logits
  from r1jax.export import export
  export(str(tmp_path), str(tmp_path / "hf"))
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
  toks = np.asarray([[5, 77, 120, 3, 9]])
  ours, _ = forward(p, cfg, jnp.asarray(toks), jnp.arange(5)[None])
  np.testing.assert_allclose(hf_logits(back, toks), ours, atol=1e-4)


@pytest.mark.parametrize("field,value,msg", [
    ("train.micro_batch_size", 3, "must divide data.batch_size"),
    ("distill.alpha", 0.5, "need a teacher"),
    ("data.template", "fancy", "data.template='fancy'"),
    ("distill.beta", 2.0, "distill.beta=2.0"),
    ("distill.on_policy", 0.5, "no teacher signal"),
])
def test_config_validation_names_the_field(field, value, msg):
  from r1jax import sft as sft_lib
  c = _tiny()
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(ValueError, match=msg):
    sft_lib.validate(c)


def test_records_from_jsonl_parquet_and_hf_disk(tmp_path):
  recs = [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
          {"prompt": "q2", "completion": "a2"}]
  path = tmp_path / "d.jsonl"
  jsonl.write(path, recs)
  assert records_lib.read_records({"kind": "jsonl", "path": str(path)}) == recs
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  pq.write_table(pa.Table.from_pylist([{"prompt": "q", "completion": "a", "id": 3}]),
                 tmp_path / "d.parquet")
  assert records_lib.read_records({"kind": "parquet", "path": str(tmp_path / "d.parquet")}) == [
      {"prompt": "q", "completion": "a", "id": 3}]
  datasets = pytest.importorskip("datasets")
  datasets.Dataset.from_list([{"problem": "p", "generations": ["x", "y"],
                               "correctness_math_verify": [False, True]}]).save_to_disk(
      str(tmp_path / "hf"))
  got = records_lib.read_records({"kind": "hf_disk", "path": str(tmp_path / "hf")})
  convs = sft_data.record_conversations(got[0], "r", sft_data.SFTDataConfig())
  assert [c[-1]["content"] for c in convs] == ["y"]
  mixed = records_lib.read_records({"kind": "mixture", "weights": [3, 1], "seed": 0, "length": 8,
                                 "sources": [{"kind": "records", "records": [{"k": 0}]},
                                             {"kind": "records", "records": [{"k": 1}]}]})
  assert sorted(r["k"] for r in mixed) == [0] * 6 + [1] * 2
