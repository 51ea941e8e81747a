"""The tokenizer backends behind `r1jax.tokenizer.Tokenizer`.

Each one encodes text to ids and back without adding special tokens, and knows its
special ids and vocabulary size:
* `HFBackend`: a `tokenizers.Tokenizer` (tokenizer.json, or built from GGUF metadata);
* `SentencePieceBackend`: a sentencepiece model, with special tokens in the text split
  out and matched whole;
* `ByteBackend`: UTF-8 bytes as ids, for the tiny random test model.
"""

from __future__ import annotations

from typing import Mapping, Sequence


class HFBackend:
  """A `tokenizers.Tokenizer`."""

  def __init__(self, tk):
    self.tk = tk
    self.special_ids = {i for i, t in tk.get_added_tokens_decoder().items() if t.special}

  def encode(self, text: str) -> list[int]:
    return self.tk.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    return self.tk.decode(ids, skip_special_tokens=skip_special_tokens)

  def decode_batch(self, seqs: list[list[int]], skip_special_tokens: bool) -> list[str]:
    return self.tk.decode_batch(seqs, skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self.tk.token_to_id(token)

  def id_to_token(self, i: int) -> str | None:
    return self.tk.id_to_token(i)

  @property
  def vocab_size(self) -> int:
    return self.tk.get_vocab_size(with_added_tokens=True)


class SentencePieceBackend:
  """A sentencepiece model; special tokens in the text are split out and matched whole."""

  def __init__(self, model_file: str, added: Mapping[int, tuple[str, bool]] | None = None):
    import re

    import sentencepiece as spm
    self.sp = spm.SentencePieceProcessor(model_file=model_file)
    n = self.sp.get_piece_size()
    self.special_ids = {i for i in range(n) if self.sp.is_control(i) or self.sp.is_unknown(i)}
    self.added = dict(added or {})  # id -> (content, special)
    self.special_ids |= {i for i, (_, special) in self.added.items() if special}
    self._by_text = {c: i for i, (c, _) in self.added.items()}
    for i in range(n):
      if self.sp.is_control(i):
        self._by_text.setdefault(self.sp.id_to_piece(i), i)
    words = sorted(self._by_text, key=len, reverse=True)
    self._split = re.compile("(" + "|".join(map(re.escape, words)) + ")") if words else None

  def encode(self, text: str) -> list[int]:
    if self._split is None:
      return list(self.sp.encode(text))
    out = []
    for part in self._split.split(text):
      if not part:
        continue
      if part in self._by_text:
        out.append(self._by_text[part])
      else:
        out.extend(self.sp.encode(part))
    return out

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]

  def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    n = self.sp.get_piece_size()
    out, run = [], []
    for i in ids:
      if skip_special_tokens and i in self.special_ids:
        continue
      if i in self.added or (i < n and self.sp.is_control(i)):
        out.append(self.sp.decode(run))
        run = []
        out.append(self.added[i][0] if i in self.added else self.sp.id_to_piece(i))
      else:
        run.append(i)
    out.append(self.sp.decode(run))
    return "".join(out)

  def decode_batch(self, seqs, skip_special_tokens):
    return [self.decode(s, skip_special_tokens) for s in seqs]

  def token_to_id(self, token: str) -> int | None:
    if token in self._by_text:
      return self._by_text[token]
    i = self.sp.piece_to_id(token)
    return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i

  def id_to_token(self, i: int) -> str | None:
    if i in self.added:
      return self.added[i][0]
    return self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else None

  @property
  def vocab_size(self) -> int:
    return max([self.sp.get_piece_size()] + [i + 1 for i in self.added])


class ByteBackend:
  """UTF-8 bytes as ids: id b is byte b, except ids 0, 1, 2 which are <pad>, <bos>, <eos>
  (bytes NUL, SOH, STX never occur in text; encoding them raises)."""

  SPECIALS = ("<pad>", "<bos>", "<eos>")

  def __init__(self):
    self.special_ids = set(range(len(self.SPECIALS)))

  def encode(self, text: str) -> list[int]:
    ids = list(text.encode("utf-8"))
    if any(i < len(self.SPECIALS) for i in ids):
      raise ValueError("byte-level tokenizer cannot encode bytes 0x00-0x02 (reserved ids)")
    return ids

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]

  def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    out, run = [], bytearray()
    for i in ids:
      if i in self.special_ids:
        if not skip_special_tokens:
          out.append(run.decode("utf-8", errors="replace"))
          run = bytearray()
          out.append(self.SPECIALS[i])
      elif 0 <= i < 256:
        run.append(i)
    out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)

  def decode_batch(self, seqs, skip_special_tokens):
    return [self.decode(s, skip_special_tokens) for s in seqs]

  def token_to_id(self, token: str) -> int | None:
    if token in self.SPECIALS:
      return self.SPECIALS.index(token)
    b = token.encode("utf-8")
    return b[0] if len(b) == 1 and b[0] >= len(self.SPECIALS) else None

  def id_to_token(self, i: int) -> str | None:
    if i in self.special_ids:
      return self.SPECIALS[i]
    return bytes([i]).decode("latin-1") if 0 <= i < 256 else None

  @property
  def vocab_size(self) -> int:
    return 256
