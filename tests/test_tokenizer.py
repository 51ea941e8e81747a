"""Tokenizer: the GGUF-built SmolLM2 tokenizer against HF transformers' tokenizer loaded from
the same GGUF; chat templates; from_hf_dir (tokenizer.json and sentencepiece); byte-level."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from r1jax.model.smollm2 import smollm2_gguf_path
from r1jax.tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer

R1_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: Using the numbers [19, 36, 55, "
    "7], create an equation that equals 65. Assistant: <think>")

# Strings on which transformers' GGUF tokenizer and SmolLM2's own tokenizer agree.
TEXTS = [
    "Hello world", "  leading spaces", "trailing spaces   ", "tabs\tand\nnewlines\n\n\n",
    "12345 + 678 = 7023", "3.14159e-10, -42, 1,000,000", "(19 - 7) * 55 / 36 = 18.33",
    "héllo wörld — ünïcödé Ελληνικά русский 日本語 中文 한국어", "emoji 🙂🚀 and a\u00a0nbsp\u200bzw",
    "def f(x):\n    return x**2  # square\n\nprint(f(3))\n", "if (a && b || !c) { x += 1; }",
    "<think>\nLet me think: 2 + 2 = 4.\n</think>\n<answer>4</answer>",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "text<|endoftext|>more",
    R1_TEMPLATE, "", " ", "\n", "    ", "It's   they're we'll I'M", "\\boxed{\\frac{1}{2}}",
]
# A whitespace run before a digit: SmolLM2's tokenizer.json isolates digits first
# (Digits(individual_digits=True) + ByteLevel; llama.cpp "smollm" does the same), so "  1" is
# ["ĠĠ", "1"]; transformers' GGUF import lacks the digit split and gives ["Ġ", "Ġ", "1"].
DIVERGENT = ["x  12", "a\n\n1", "1.5  +  2", "\t\t7", "answer:\n\n   42"]


def _gguf_path():
  try:
    return smollm2_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.from_gguf(_gguf_path())


@pytest.fixture(scope="module")
def hf_tok():
  transformers = pytest.importorskip("transformers")
  path = _gguf_path()
  return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                    gguf_file=os.path.basename(path))


@pytest.fixture(scope="module")
def hf_fixed(hf_tok):
  """transformers' GGUF tokenizer with SmolLM2's original pre-tokenizer restored."""
  from tokenizers import Tokenizer as HFTokenizer
  from tokenizers import pre_tokenizers
  tk = HFTokenizer.from_str(hf_tok.backend_tokenizer.to_str())
  tk.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
  return tk


@pytest.fixture(scope="module")
def hf_dir(hf_tok, tmp_path_factory):
  d = tmp_path_factory.mktemp("smollm2_tok")
  hf_tok.save_pretrained(d)
  return d


def _hf_ids(hf_tok, s):
  return hf_tok(s, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- GGUF


@pytest.mark.slow
def test_special_ids(tok, hf_tok):
  assert tok.vocab_size == len(hf_tok) == 49152
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (
      hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id, hf_tok.unk_token_id)
  assert tok.id_to_token(tok.eos_id) == "<|im_end|>"
  assert tok.eos_ids == {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")}
  assert tok.special_ids == set(hf_tok.all_special_ids) | set(range(17))
  assert tok.add_bos is False


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_matches_transformers(tok, hf_tok, hf_fixed, text):
  ids = tok.encode(text)
  assert ids == _hf_ids(hf_tok, text)
  assert ids == hf_fixed.encode(text, add_special_tokens=False).ids
  for skip in (True, False):
    assert tok.decode(ids, skip_special_tokens=skip) == hf_tok.decode(
        ids, skip_special_tokens=skip)
  assert tok.decode(ids, skip_special_tokens=False) == text  # byte-level BPE is lossless


@pytest.mark.slow
@pytest.mark.parametrize("text", DIVERGENT)
def test_digit_split_follows_smollm2_not_transformers_gguf(tok, hf_tok, hf_fixed, text):
  ids = tok.encode(text)
  assert ids == hf_fixed.encode(text, add_special_tokens=False).ids
  assert ids != _hf_ids(hf_tok, text)  # transformers' GGUF import differs here (see DIVERGENT)
  assert tok.decode(ids) == text


@pytest.mark.slow
def test_think_tags_and_specials(tok):
  ids = tok.encode("<|im_start|>assistant\n<think>x</think><|im_end|>")
  assert ids[0] == tok.token_to_id("<|im_start|>") and ids[-1] == tok.eos_id
  assert tok.decode(ids) == "assistant\n<think>x</think>"
  assert tok.encode("hi", add_bos=True)[0] == tok.bos_id
  assert tok.batch_encode(["a b", "c"], add_bos=True) == [tok.encode("a b", True),
                                                          tok.encode("c", True)]
  batch = np.array([tok.encode("one two"), tok.encode("six ten")])
  assert tok.batch_decode(batch) == ["one two", "six ten"]
  assert tok.decode(np.array(tok.encode("x = 1"), np.int32)) == "x = 1"


CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are a careful mathematician."},
     {"role": "user", "content": "Solve x^2 = 4. Show work in <think> </think>."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>greet</think>Hello!"},
     {"role": "user", "content": "Count: 1 2 3  4"}],
    [{"role": "user", "content": R1_TEMPLATE}],
]


@pytest.mark.slow
@pytest.mark.parametrize("chat", range(len(CHATS)))
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches_transformers(tok, hf_tok, hf_fixed, chat, gen):
  ours = tok.apply_chat_template(CHATS[chat], add_generation_prompt=gen)
  ref = hf_tok.apply_chat_template(CHATS[chat], tokenize=False, add_generation_prompt=gen)
  assert ours == ref
  assert tok.encode(ours) == hf_fixed.encode(ref, add_special_tokens=False).ids


@pytest.mark.slow
def test_from_hf_dir_saved_by_transformers(tok, hf_tok, hf_dir):
  assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(hf_dir))
  d = Tokenizer.from_hf_dir(hf_dir)
  assert (d.bos_id, d.eos_id, d.pad_id, d.unk_id, d.eos_ids, d.vocab_size) == (
      tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.eos_ids, tok.vocab_size)
  for text in TEXTS + DIVERGENT:  # the saved tokenizer.json is transformers' own
    assert d.encode(text) == _hf_ids(hf_tok, text), text
    assert d.decode(d.encode(text)) == hf_tok.decode(_hf_ids(hf_tok, text), skip_special_tokens=True)
  for chat in CHATS:
    assert d.apply_chat_template(chat) == tok.apply_chat_template(chat)


@pytest.mark.slow
def test_from_hf_dir_template_in_config_and_generation_eos(hf_dir, tmp_path):
  import shutil
  shutil.copy(os.path.join(hf_dir, "tokenizer.json"), tmp_path / "tokenizer.json")
  template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}"
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": {"content": "<|im_start|>"}, "eos_token": "<|endoftext|>",
      "chat_template": [{"name": "default", "template": template}]}))
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2, 5]}))
  d = Tokenizer.from_hf_dir(tmp_path)
  assert (d.bos_id, d.eos_id, d.pad_id) == (1, 0, 0)
  assert d.eos_ids == {0, 2, 5}
  assert d.apply_chat_template([{"role": "user", "content": "x"}]) == "[user]x<|endoftext|>"


def test_from_hf_dir_sentencepiece(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  corpus = ["the quick brown fox jumps over the lazy dog", "1 + 2 = 3", "<think> hmm </think>",
            "a conversation between user and assistant"] * 50
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=60,
      model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
  os.rename(tmp_path / "sp.model", tmp_path / "tokenizer.model")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
      "chat_template": "{% for m in messages %}{{ bos_token }}{{ m['content'] }}{{ eos_token }}"
                       "{% endfor %}"}))
  d = Tokenizer.from_hf_dir(tmp_path)
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
  assert (d.bos_id, d.eos_id, d.unk_id, d.add_bos) == (1, 2, 0, True)
  assert d.eos_ids == {2}
  text = "the lazy fox jumps"
  assert d.encode(text) == sp.encode(text)
  assert d.encode(text, add_bos=True) == [1] + sp.encode(text)
  chat = d.apply_chat_template([{"role": "user", "content": text}])
  assert chat == f"<s>{text}</s>"
  ids = d.encode(chat)
  assert ids == [1] + sp.encode(text) + [2]
  assert d.decode(ids) == text
  assert d.decode(ids, skip_special_tokens=False) == chat


# ----------------------------------------------------------------------------- byte-level


def test_byte_level_roundtrip():
  tok = Tokenizer.byte_level()
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 256)
  assert tok.eos_ids == {2}
  for text in ["<think>", "</think> <answer>42</answer>", "0123456789", "+-*/=()^%<>.,",
               "abcxyzABCXYZ", "héllo 日本 🙂", "\n\t ", ""]:
    ids = tok.encode(text)
    assert all(3 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
  assert tok.encode("A1+") == [65, 49, 43]
  ids = tok.encode("hi", add_bos=True) + [tok.eos_id, tok.pad_id]
  assert ids[0] == 1
  assert tok.decode(ids) == "hi"
  assert tok.decode(ids, skip_special_tokens=False) == "<bos>hi<eos><pad>"
  assert tok.batch_decode(np.array([[104, 105, 2], [33, 0, 0]])) == ["hi", "!"]
  assert tok.decode([0xE6, 0x97]) == "\ufffd"  # a cut multi-byte character does not raise
  with pytest.raises(ValueError):
    tok.encode("\x01")
  assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
  assert tok.apply_chat_template([{"role": "user", "content": "2+2?"}]) == "user: 2+2?\nassistant: "
  with pytest.raises(ValueError):
    Tokenizer.byte_level(128)


# ----------------------------------------------------------------------------- synthetic GGUF


def _write_tok_gguf(path, pre):
  """A GGUF holding only a byte-level BPE tokenizer: 256 byte tokens, digit and space merges,
  <|endoftext|> (control), <|im_end|> (control) and <think> (user-defined)."""
  import gguf
  from tokenizers.pre_tokenizers import ByteLevel
  alphabet = sorted(ByteLevel.alphabet(), key=lambda c: c.encode("utf-8"))
  merges = ["1 2", "12 3", "4 5", "Ġ Ġ", "Ġ 1"]
  tokens = alphabet + ["12", "123", "45", "ĠĠ", "Ġ1", "<|endoftext|>", "<|im_end|>", "<think>"]
  types = [1] * (len(tokens) - 3) + [3, 3, 4]
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(merges)
  w.add_bos_token_id(tokens.index("<|endoftext|>"))
  w.add_eos_token_id(tokens.index("<|im_end|>"))
  w.add_add_bos_token(True)
  w.add_chat_template("{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}")
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return tokens


@pytest.mark.parametrize("pre,pieces,pieces2", [
    ("smollm", ["Ġ", "1", "2", "3", "4", "5"], ["ĠĠ", "1"]),  # digits isolated first
    ("qwen2", ["Ġ", "1", "2", "3", "4", "5"], ["Ġ", "Ġ", "1"]),  # \p{N}: one digit per piece
    ("llama-bpe", ["Ġ", "123", "45"], ["Ġ", "Ġ", "1"]),        # \p{N}{1,3}
    ("gpt2", ["Ġ", "123", "45"], ["Ġ", "Ġ1"]),                 # ' ?\p{N}+', merges by rank
])
def test_gguf_pre_tokenizer_dispatch(tmp_path, pre, pieces, pieces2):
  tokens = _write_tok_gguf(tmp_path / "t.gguf", pre)
  tok = Tokenizer.from_gguf(tmp_path / "t.gguf")
  for text, expect in ((" 12345", pieces), ("  1", pieces2)):
    ids = tok.encode(text)
    assert [tokens[i] for i in ids] == expect, text
    assert tok.decode(ids) == text
  ids = tok.encode("a<think>b<|im_end|>", add_bos=True)
  assert [tokens[i] for i in ids] == ["<|endoftext|>", "a", "<think>", "b", "<|im_end|>"]
  assert tok.decode(ids) == "a<think>b"  # control tokens dropped, user-defined kept
  assert tok.eos_ids == {tokens.index("<|im_end|>"), tokens.index("<|endoftext|>")}
  assert tok.add_bos and tok.vocab_size == len(tokens)
  assert tok.apply_chat_template([{"role": "user", "content": "q"}]) == "q<|im_end|>"
