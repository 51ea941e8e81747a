"""Tokenizers behind one small interface, plus chat templates.

    tok = Tokenizer.from_gguf("model.gguf")      # vocab/merges/specials/template from GGUF metadata
    tok = Tokenizer.from_hf_dir("path/")         # tokenizer.json (or sentencepiece tokenizer.model)
    tok = Tokenizer.byte_level()                 # 256 ids, for the tiny random test model

    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))
    text = tok.decode(ids)                       # special tokens dropped by default

`eos_ids` is the set of ids that end a completion (the file's EOS plus the usual end-of-turn /
end-of-text tokens present in the vocabulary, e.g. SmolLM2's <|im_end|> and <|endoftext|>).
`vocab_size` is the tokenizer's size; a model's embedding may be larger (padded vocabularies).

Encoding never adds special tokens by itself except BOS with `add_bos=True`; special tokens
written in the text (as chat templates do) are matched whole, as HF tokenizers do.
The backends (HF tokenizers, sentencepiece, bytes) are in `r1jax.tokenizer_backends`.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Iterable, Mapping, Sequence

from r1jax.tokenizer_backends import ByteBackend, HFBackend, SentencePieceBackend

# Tokens that end a generation when present (and special) in a vocabulary.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>",
              "<｜end▁of▁sentence｜>", "</s>", "<end_of_turn>", "<eos>")

# GGUF `tokenizer.ggml.pre` -> how llama.cpp splits text before BPE (llama-vocab.cpp).
_GPT2_PRE = ("gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion", "granite-docling")
_GPT2_DIGITS_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                    "minerva-7b")
_LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
               "lfm2", "dbrx", "smaug-bpe")
_QWEN2_PRE = ("qwen2", "deepseek-r1-qwen", "stablelm2", "hunyuan", "megrez")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
_CONTROL, _USER_DEFINED = 3, 4

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")


def _compile_template(template: str):
  """Jinja environment as HF transformers renders chat templates (sandboxed, trim/lstrip)."""
  import datetime

  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(template)


def _ids_list(ids: Any) -> list[int]:
  if hasattr(ids, "tolist"):
    ids = ids.tolist()
  return [int(i) for i in ids]


class Tokenizer:
  """encode/decode, special ids, and chat-template rendering. Build with a classmethod."""

  def __init__(self, backend, *, bos_id: int | None, eos_id: int | None,
               pad_id: int | None = None, unk_id: int | None = None,
               eos_ids: Iterable[int] = (), chat_template: str | None = None,
               add_bos: bool = False, name: str = ""):
    self._backend = backend
    self.bos_id = bos_id
    self.eos_id = eos_id
    self.pad_id = pad_id if pad_id is not None else eos_id
    self.unk_id = unk_id
    ends = set(eos_ids) | ({eos_id} if eos_id is not None else set())
    for t in END_TOKENS:
      i = backend.token_to_id(t)
      if i is not None and i in backend.special_ids:
        ends.add(i)
    self.eos_ids = frozenset(ends)
    self.chat_template = chat_template
    self.add_bos = add_bos  # what the model's own tokenizer does by default (informational)
    self.name = name
    self._template = None

  def __repr__(self) -> str:
    return (f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, "
            f"eos={self.eos_id}, eos_ids={sorted(self.eos_ids)}, pad={self.pad_id})")

  # -- encode / decode

  @property
  def vocab_size(self) -> int:
    return self._backend.vocab_size

  @property
  def special_ids(self) -> frozenset[int]:
    return frozenset(self._backend.special_ids)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self._backend.encode(text)
    return self._with_bos(ids) if add_bos else ids

  def batch_encode(self, texts: Sequence[str], add_bos: bool = False) -> list[list[int]]:
    out = self._backend.encode_batch(texts)
    return [self._with_bos(ids) for ids in out] if add_bos else out

  def _with_bos(self, ids: list[int]) -> list[int]:
    if self.bos_id is None:
      raise ValueError(f"tokenizer {self.name!r} has no BOS token")
    return [self.bos_id] + ids

  def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
    return self._backend.decode(_ids_list(ids), skip_special_tokens)

  def batch_decode(self, seqs: Iterable[Any], skip_special_tokens: bool = True) -> list[str]:
    return self._backend.decode_batch([_ids_list(s) for s in seqs], skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self._backend.token_to_id(token)

  def id_to_token(self, i: int) -> str | None:
    return self._backend.id_to_token(int(i))

  def _token(self, i: int | None) -> str | None:
    return None if i is None else self.id_to_token(i)

  # -- chat template

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                          add_generation_prompt: bool = True, **kwargs) -> str:
    """Render `messages` with the model's Jinja chat template (as HF transformers does,
    with bos_token/eos_token/pad_token/unk_token available to the template)."""
    if self.chat_template is None:
      raise ValueError(f"tokenizer {self.name!r} has no chat template")
    if self._template is None:
      self._template = _compile_template(self.chat_template)
    variables = {"bos_token": self._token(self.bos_id), "eos_token": self._token(self.eos_id),
                 "pad_token": self._token(self.pad_id), "unk_token": self._token(self.unk_id)}
    variables = {k: v for k, v in variables.items() if v is not None}
    variables.update(kwargs)
    return self._template.render(messages=[dict(m) for m in messages],
                                 add_generation_prompt=add_generation_prompt, **variables)

  # -- constructors

  @classmethod
  def byte_level(cls, vocab_size: int = 256) -> "Tokenizer":
    """UTF-8 bytes: id = byte value for bytes 3..255; ids 0/1/2 are <pad>/<bos>/<eos>.

    Any text without NUL/SOH/STX round-trips exactly (including non-ASCII, as multi-byte
    sequences). For models with `vocab_size >= 256` (the `tiny` preset has exactly 256).
    The chat template is a plain "role: content" one (`DEFAULT_CHAT_TEMPLATE`).
    """
    if vocab_size < 256:
      raise ValueError(f"byte-level tokenizer needs vocab_size >= 256, got {vocab_size}")
    return cls(ByteBackend(), bos_id=1, eos_id=2, pad_id=0, unk_id=None,
               chat_template=DEFAULT_CHAT_TEMPLATE, name="byte_level")

  @classmethod
  def from_gguf(cls, path) -> "Tokenizer":
    """Byte-level BPE (`tokenizer.ggml.model == "gpt2"`) tokenizer from GGUF metadata.

    Vocabulary, merges, token types (control -> special added tokens, user-defined -> plain
    added tokens such as <think>), BOS/EOS/PAD/UNK ids, `add_bos_token` and
    `tokenizer.chat_template` come from the file. The text splitting before BPE follows
    llama.cpp for `tokenizer.ggml.pre`: e.g. "smollm" isolates every digit and then applies
    the GPT-2 regex, exactly like SmolLM2's own tokenizer.json (Digits(individual_digits) +
    ByteLevel). Note: transformers' GGUF import (5.x) has no "smollm" entry and uses the
    GPT-2 split alone, which differs on a whitespace run followed by a digit ("  1").
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from r1jax.model.gguf import gguf_field, open_gguf
    reader = open_gguf(path)
    f = lambda key, default=None: gguf_field(reader, f"tokenizer.{key}", default)
    model = f("ggml.model")
    if model != "gpt2":
      raise NotImplementedError(
          f"GGUF tokenizer.ggml.model={model!r}: only byte-level BPE ('gpt2': SmolLM2, Qwen2.5, "
          "Llama 3, ...) is supported; use Tokenizer.from_hf_dir for sentencepiece models")
    tokens = f("ggml.tokens")
    types = f("ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in f("ggml.merges", [])]
    pre = f("ggml.pre", "default")

    vocab = {}
    for i, t in enumerate(tokens):
      vocab.setdefault(t, i)  # a few files repeat a token; the first id wins, as in llama.cpp
    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in _LLAMA3_PRE,
                     fuse_unk=False, byte_fallback=False)
    tk = HFTokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _GPT2_DIGITS_PRE:
      tk.pre_tokenizer = pre_tokenizers.Sequence(
          [pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in _LLAMA3_PRE or pre in _QWEN2_PRE:
      split = _LLAMA3_SPLIT if pre in _LLAMA3_PRE else _QWEN2_SPLIT
      tk.pre_tokenizer = pre_tokenizers.Sequence(
          [pre_tokenizers.Split(Regex(split), behavior="isolated"),
           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
      if pre not in _GPT2_PRE:
        warnings.warn(f"GGUF tokenizer.ggml.pre={pre!r} is not known here; splitting text "
                      "with the GPT-2 regex")
      tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    control = [AddedToken(t, normalized=False, special=True)
               for t, ty in zip(tokens, types) if ty == _CONTROL]
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types) if ty == _USER_DEFINED]
    if control:
      tk.add_special_tokens(control)
    if user:
      tk.add_tokens(user)
    if tk.get_vocab_size(with_added_tokens=True) != len(tokens):
      warnings.warn(f"tokenizer built from GGUF has {tk.get_vocab_size(True)} ids, the file "
                    f"lists {len(tokens)} tokens (repeated tokens keep their first id)")
    name = gguf_field(reader, "general.name") or os.path.basename(os.fspath(getattr(
        reader, "path", "gguf")))
    return cls(HFBackend(tk), bos_id=f("ggml.bos_token_id"), eos_id=f("ggml.eos_token_id"),
               pad_id=f("ggml.padding_token_id"), unk_id=f("ggml.unknown_token_id"),
               chat_template=f("chat_template"), add_bos=bool(f("ggml.add_bos_token", False)),
               name=name)

  @classmethod
  def from_hf_dir(cls, path: str | os.PathLike) -> "Tokenizer":
    """From a HF tokenizer directory: `tokenizer.json` (preferred) or a sentencepiece
    `tokenizer.model`, with special tokens and the chat template from
    `tokenizer_config.json` (or `chat_template.jinja` / `chat_template.json`,
    `special_tokens_map.json`) and extra EOS ids from `generation_config.json`."""
    path = os.fspath(path)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"tokenizer directory not found: {path}")

    def load_json(name):
      p = os.path.join(path, name)
      if os.path.exists(p):
        with open(p, encoding="utf-8") as fh:
          return json.load(fh)
      return {}

    config = load_json("tokenizer_config.json")
    special_map = load_json("special_tokens_map.json")
    content = lambda v: v.get("content") if isinstance(v, dict) else v

    added = {int(i): (d["content"], bool(d.get("special", True)))
             for i, d in (config.get("added_tokens_decoder") or {}).items()}
    if os.path.exists(os.path.join(path, "tokenizer.json")):
      from tokenizers import Tokenizer as HFTokenizer
      backend = HFBackend(HFTokenizer.from_file(os.path.join(path, "tokenizer.json")))
    elif os.path.exists(os.path.join(path, "tokenizer.model")):
      backend = SentencePieceBackend(os.path.join(path, "tokenizer.model"), added)
    else:
      raise FileNotFoundError(f"{path} has neither tokenizer.json nor tokenizer.model")

    def special_id(key):
      tok = content(config.get(key)) or content(special_map.get(key))
      if tok is None:
        return None
      i = backend.token_to_id(tok)
      if i is None:
        raise ValueError(f"{key}={tok!r} from {path} is not in the vocabulary")
      return i

    template = config.get("chat_template")
    jinja_file = os.path.join(path, "chat_template.jinja")
    if template is None and os.path.exists(jinja_file):
      with open(jinja_file, encoding="utf-8") as fh:
        template = fh.read()
    if template is None:
      template = load_json("chat_template.json").get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]
      named = {t["name"]: t["template"] for t in template}
      template = named.get("default", next(iter(named.values()), None))

    gen_eos = load_json("generation_config.json").get("eos_token_id")
    gen_eos = [] if gen_eos is None else [gen_eos] if isinstance(gen_eos, int) else gen_eos
    return cls(backend, bos_id=special_id("bos_token"), eos_id=special_id("eos_token"),
               pad_id=special_id("pad_token"), unk_id=special_id("unk_token"),
               eos_ids=gen_eos, chat_template=template,
               add_bos=bool(config.get("add_bos_token", False)),
               name=os.path.basename(os.path.normpath(path)))
