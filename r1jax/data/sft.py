"""SFT data: records -> conversations -> token ids with loss masks -> packed rows.

Record layouts (`layout="auto"` recognises them by their keys):
  messages           {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
                     (OpenR1-Math-220k, Mixture-of-Thoughts, our rejection sampler's output)
  prompt_completion  {"prompt": str | messages, "completion": str | messages}
  generations        {"problem"|"question"|"prompt": str, "generations": [str, ...],
                      "correctness_math_verify"|"correctness"|...: [bool, ...]}: one
                     conversation per correct generation
  cold_start         {"problem"|"question"|"prompt": str, "reasoning": str, "summary": str}

Rendering (`template`): "chat" (the model's chat template, messages as given), "cold_start"
(the R1 readable format `|special_token|<reasoning>|special_token|<summary>`, converted from
`<think>` tags, with the cold-start instruction in the user turn, as
`r1jax.data.templates.render_prompt` renders evaluation prompts), "r1_zero" / "plain"
(text templates, single turn).

Loss masks: every assistant turn's tokens count, its end-of-turn token included (so the
model learns to stop); system and user tokens and template glue never do. The turns are
tokenised piece by piece and checked against tokenising the whole conversation at once: a
mismatch (a BPE merge across a turn boundary) is an error naming the record.

Packing: best-fit-decreasing into rows of `seq_len` tokens; each example is a segment with
its own id (1, 2, ...; 0 is padding) and positions restarting at 0, so attention never crosses
segments (`forward(..., segment_ids=...)`).
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from r1jax.data.records import read_records, summary_text
from r1jax.data.templates import (
  COLD_START_INSTRUCTION, COLD_START_TOKEN, R1_ZERO_TEMPLATE, _sentence)

LAYOUTS = ("auto", "messages", "prompt_completion", "generations", "cold_start")
SFT_TEMPLATES = ("chat", "cold_start", "r1_zero", "plain")
CORRECTNESS_KEYS = ("correctness_math_verify", "correctness", "correct", "is_correct",
                    "correctness_llama")
ROLES = ("system", "user", "assistant", "tool")


class BadRecord(ValueError):
  """A record that cannot become a training example (the message names it)."""


@dataclasses.dataclass(frozen=True)
class SFTDataConfig:
  layout: str = "auto"
  template: str = "chat"
  system_prompt: str = ""
  seq_len: int = 512  # packed row length
  overlong: str = "truncate"  # truncate | drop: examples longer than a row
  on_bad_record: str = "error"  # error | skip (skipped records are counted)
  correctness_key: str = ""  # generations layout: the flag list ("" = first known key)
  completion_only: bool = True  # prompt/completion pairs: loss on the completion only

  def __post_init__(self):
    for name, value, allowed in (("layout", self.layout, LAYOUTS),
                                 ("template", self.template, SFT_TEMPLATES),
                                 ("overlong", self.overlong, ("truncate", "drop")),
                                 ("on_bad_record", self.on_bad_record, ("error", "skip"))):
      if value not in allowed:
        raise ValueError(f"sft data.{name}={value!r}; choose from {allowed}")
    if self.seq_len < 2:
      raise ValueError(f"data.seq_len={self.seq_len} must be >= 2")


def _question(rec: Mapping, where: str) -> str:
  for k in ("problem", "question", "prompt", "query", "instruction", "input"):
    if isinstance(rec.get(k), str):
      return rec[k]
  raise BadRecord(f"{where}: no question field (tried problem/question/prompt/...) in "
                  f"keys {sorted(rec)}")


def detect_layout(rec: Mapping) -> str | None:
  if "messages" in rec:
    return "messages"
  if "generations" in rec:
    return "generations"
  if "completion" in rec and "prompt" in rec:
    return "prompt_completion"
  if "reasoning" in rec and "summary" in rec:
    return "cold_start"
  return None


def _as_messages(x: Any, role: str, where: str) -> list[dict]:
  if isinstance(x, str):
    return [{"role": role, "content": x}]
  if isinstance(x, Sequence) and all(isinstance(m, Mapping) for m in x):
    return [dict(m) for m in x]
  raise BadRecord(f"{where}: expected text or a list of messages, got {type(x).__name__}")


def record_conversations(rec: Mapping, where: str, cfg: SFTDataConfig) -> list[list[dict]]:
  """The conversations one record yields (several for a `generations` record)."""
  layout = cfg.layout if cfg.layout != "auto" else detect_layout(rec)
  if layout is None:
    raise BadRecord(f"{where}: unknown field layout, keys {sorted(rec)}; want messages, "
                    "prompt+completion, generations (+ correctness flags) or "
                    "reasoning+summary")
  if layout == "messages":
    convs = [_as_messages(rec.get("messages"), "user", where)]
  elif layout == "prompt_completion":
    if "prompt" not in rec or "completion" not in rec:
      raise BadRecord(f"{where}: prompt_completion layout needs prompt and completion, "
                      f"got keys {sorted(rec)}")
    convs = [_as_messages(rec["prompt"], "user", where)
             + _as_messages(rec["completion"], "assistant", where)]
  elif layout == "cold_start":
    text = f"{COLD_START_TOKEN}{rec['reasoning'].strip()}{COLD_START_TOKEN}{rec['summary'].strip()}"
    convs = [[{"role": "user", "content": _question(rec, where)},
              {"role": "assistant", "content": text}]]
  else:  # generations
    gens = rec.get("generations")
    if not isinstance(gens, Sequence) or isinstance(gens, str):
      raise BadRecord(f"{where}: generations must be a list of strings")
    keys = [cfg.correctness_key] if cfg.correctness_key else list(CORRECTNESS_KEYS)
    key = next((k for k in keys if k in rec), None)
    if key is None:
      raise BadRecord(f"{where}: generations without correctness flags (looked for {keys})")
    flags = rec[key]
    if len(flags) != len(gens):
      raise BadRecord(f"{where}: {len(gens)} generations but {len(flags)} {key} flags")
    q = _question(rec, where)
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": g}]
             for g, ok in zip(gens, flags) if ok]
  for conv in convs:
    for m in conv:
      if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
        raise BadRecord(f"{where}: bad message {str(m)[:80]!r} (want role in {ROLES} and "
                        "text content)")
    if not any(m["role"] == "assistant" for m in conv):
      raise BadRecord(f"{where}: no assistant turn")
  return convs


# ----------------------------------------------------------------------------- rendering

_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.DOTALL)
_ANSWER = re.compile(r"</?answer>")


def to_cold_start(text: str) -> str:
  """`<think>R</think> S` (S may hold <answer> tags) -> `|special_token|R|special_token|S`.
  Text already in the cold-start format, or without a think block, is returned as is."""
  if text.lstrip().startswith(COLD_START_TOKEN):
    return text
  m = _THINK.match(text)
  if not m:
    return text
  summary = _ANSWER.sub("", m.group(2)).strip()
  return f"{COLD_START_TOKEN}{m.group(1).strip()}{COLD_START_TOKEN}{summary}"


def _styled(conv: list[dict], template: str, system_prompt: str) -> list[dict]:
  conv = [dict(m) for m in conv]
  if system_prompt and conv[0]["role"] != "system":
    conv.insert(0, {"role": "system", "content": system_prompt})
  if template == "cold_start":
    for m in conv:
      if m["role"] == "user":
        m["content"] = f"{m['content'].strip()}\n\n{COLD_START_INSTRUCTION}"
      elif m["role"] == "assistant":
        m["content"] = to_cold_start(m["content"])
  return conv


def render_pieces(conv: list[dict], tokenizer, template: str, system_prompt: str = "",
                  where: str = "record") -> list[tuple[str, bool]]:
  """Conversation -> consecutive (text, trainable) pieces whose concatenation is the whole
  rendered conversation. Trainable pieces are the assistant turns (from after the
  generation prompt through the end of the turn)."""
  if template in ("r1_zero", "plain"):
    turns = [m for m in conv if m["role"] != "system"]
    if [m["role"] for m in turns] != ["user", "assistant"]:
      raise BadRecord(f"{where}: template {template!r} takes one user and one assistant "
                      f"turn, got roles {[m['role'] for m in conv]}")
    q, a = turns[0]["content"].strip(), turns[1]["content"]
    if template == "r1_zero":  # the separating space starts the answer, as BPE splits it
      return [(R1_ZERO_TEMPLATE.format(prompt=_sentence(q)), False), (" " + a.strip(), True)]
    return [(q, False), ("\n" + a.strip(), True)]
  conv = _styled(conv, template, system_prompt)
  chat = tokenizer.apply_chat_template
  pieces, done = [], ""
  for i, m in enumerate(conv):
    if m["role"] != "assistant":
      continue
    before = chat(conv[:i], add_generation_prompt=True)
    through = chat(conv[:i + 1], add_generation_prompt=False)
    if not before.startswith(done) or not through.startswith(before):
      raise BadRecord(f"{where}: the chat template does not render turn {i} as a prefix "
                      "extension of the earlier turns; cannot locate the assistant tokens")
    pieces += [(before[len(done):], False), (through[len(before):], True)]
    done = through
  rest = chat(conv, add_generation_prompt=False)[len(done):]
  if rest:
    pieces.append((rest, False))
  return [(t, tr) for t, tr in pieces if t]


@dataclasses.dataclass
class Tokenized:
  ids: np.ndarray  # [n] int32
  trainable: np.ndarray  # [n] bool: this token is a training target


def tokenize_pieces(pieces: list[tuple[str, bool]], tokenizer, where: str = "record"
                    ) -> Tokenized:
  """Tokenise each piece; the concatenation must equal tokenising the whole text at once.

  In a trainable piece, tokens after its last end-of-turn token (e.g. the newline after
  `<|im_end|>`) are not trained; a turn without any end token gets the tokenizer's EOS
  appended (trained), so the model still learns to stop.
  """
  ids, mask = [], []
  for text, trainable in pieces:
    t = tokenizer.encode(text)
    m = [trainable] * len(t)
    if trainable:
      ends = [j for j, x in enumerate(t) if x in tokenizer.eos_ids]
      if ends:
        m = [j <= ends[-1] for j in range(len(t))]
    ids += t
    mask += m
  whole = tokenizer.encode("".join(t for t, _ in pieces))
  if whole != ids:
    k = next((j for j, (a, b) in enumerate(zip(whole, ids)) if a != b), min(len(whole), len(ids)))
    raise BadRecord(f"{where}: tokenising turn by turn differs from tokenising the whole "
                    f"conversation at token {k} (a merge across a turn boundary); cannot "
                    "place the loss mask")
  if not any(x in tokenizer.eos_ids for x, m in zip(ids, mask) if m) and tokenizer.eos_id is not None:
    ids.append(tokenizer.eos_id)  # a template without end-of-turn tokens (or r1_zero/plain)
    mask.append(True)
  return Tokenized(np.asarray(ids, np.int32), np.asarray(mask, bool))


@dataclasses.dataclass
class SFTExamples:
  """Tokenised examples plus what was skipped, truncated or dropped (metrics)."""
  examples: list[Tokenized]
  stats: dict[str, int]


def tokenize_records(records: Sequence[Mapping], tokenizer, cfg: SFTDataConfig) -> SFTExamples:
  """All records -> tokenised examples that fit a row (after truncation), with counts."""
  out: list[Tokenized] = []
  stats = dict(records=len(records), examples=0, skipped_bad=0, truncated=0, dropped_overlong=0,
               dropped_no_target=0, trainable_tokens=0, tokens=0)
  for i, rec in enumerate(records):
    where = f"record {i} (id {rec.get('id', rec.get('uuid', i))!r})"
    try:
      convs = record_conversations(rec, where, cfg)
      toks = [tokenize_pieces(render_pieces(c, tokenizer, cfg.template, cfg.system_prompt,
                                            where), tokenizer, where) for c in convs]
    except BadRecord:
      if cfg.on_bad_record == "error":
        raise
      stats["skipped_bad"] += 1
      continue
    for t in toks:
      prompt_len = int(np.argmax(t.trainable[1:])) + 1 if t.trainable[1:].any() else len(t.ids)
      if len(t.ids) > cfg.seq_len:
        if cfg.overlong == "drop":
          stats["dropped_overlong"] += 1
          continue
        t = Tokenized(t.ids[:cfg.seq_len], t.trainable[:cfg.seq_len])
        stats["truncated"] += 1
      # Token 0 is never a target (nothing precedes it in its segment).
      if not t.trainable[1:].any():
        msg = (f"{where}: no trainable token within data.seq_len={cfg.seq_len} (the prompt "
               f"alone is {prompt_len} tokens)")
        if cfg.on_bad_record == "error":
          raise BadRecord(msg)
        stats["dropped_no_target"] += 1
        continue
      out.append(t)
      stats["trainable_tokens"] += int(t.trainable[1:].sum())
      stats["tokens"] += len(t.ids)
  stats["examples"] = len(out)
  if not out:
    raise ValueError(f"no usable SFT example among {len(records)} records ({stats})")
  return SFTExamples(out, stats)


# ----------------------------------------------------------------------------- packing


def pack_best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
  """Bins (lists of item indices) of total length <= capacity: longest item first, each
  into the fullest bin that still has room (best fit); O(n log n)."""
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  bins: list[list[int]] = []
  free: list[tuple[int, int]] = []  # sorted (room left, bin index)
  for i in order:
    n = lengths[i]
    if n > capacity:
      raise ValueError(f"item {i} of length {n} exceeds the row length {capacity}")
    j = bisect.bisect_left(free, (n, -1))
    if j < len(free):
      room, b = free.pop(j)
      bins[b].append(i)
      if room - n > 0:
        bisect.insort(free, (room - n, b))
    else:
      bins.append([i])
      if capacity - n > 0:
        bisect.insort(free, (capacity - n, len(bins) - 1))
  return bins


def pack_rows(examples: Sequence[Tokenized], bins: Sequence[Sequence[int]], seq_len: int,
              pad_id: int) -> dict[str, np.ndarray]:
  """Packed rows [R, seq_len]: tokens, targets (next token in the same segment), loss_mask
  (the target is trained), positions (restart per segment), segment_ids (0 = padding)."""
  r = len(bins)
  tokens = np.full((r, seq_len), pad_id, np.int32)
  targets = np.zeros((r, seq_len), np.int32)
  loss_mask = np.zeros((r, seq_len), np.float32)
  positions = np.zeros((r, seq_len), np.int32)
  segs = np.zeros((r, seq_len), np.int32)
  for row, items in enumerate(bins):
    at = 0
    for s, i in enumerate(items, start=1):
      ex = examples[i]
      n = len(ex.ids)
      tokens[row, at:at + n] = ex.ids
      targets[row, at:at + n - 1] = ex.ids[1:]
      loss_mask[row, at:at + n - 1] = ex.trainable[1:]
      positions[row, at:at + n] = np.arange(n)
      segs[row, at:at + n] = s
      at += n
  return dict(tokens=tokens, targets=targets, loss_mask=loss_mask, positions=positions,
              segment_ids=segs)


class PackedRows:
  """Random-access source of packed rows (grain-friendly: picklable, index -> row dict)."""

  def __init__(self, examples: Sequence[Tokenized], seq_len: int, pad_id: int,
               pack: bool = True):
    self.examples, self.seq_len, self.pad_id = list(examples), seq_len, pad_id
    lengths = [len(e.ids) for e in self.examples]
    self.bins = (pack_best_fit_decreasing(lengths, seq_len) if pack
                 else [[i] for i in range(len(lengths))])

  def __len__(self) -> int:
    return len(self.bins)

  def __getitem__(self, index: int) -> dict:
    row = pack_rows(self.examples, [self.bins[index]], self.seq_len, self.pad_id)
    return {k: v[0] for k, v in row.items()}


def collate(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """A list of row dicts (one grain batch) -> stacked [B, L] arrays."""
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def load_sft_dataset(source: Mapping[str, Any], tokenizer, cfg: SFTDataConfig,
                     pack: bool = True) -> tuple[PackedRows, dict[str, int]]:
  """Read, tokenise and pack an SFT source spec; returns (rows, data stats)."""
  data = tokenize_records(read_records(source), tokenizer, cfg)
  rows = PackedRows(data.examples, cfg.seq_len, tokenizer.pad_id, pack)
  stats = dict(data.stats, rows=len(rows),
               fill=round(data.stats["tokens"] / max(len(rows) * cfg.seq_len, 1), 4))
  return rows, stats


def cold_start_records(samples: Sequence[Mapping], min_reward: float = 1.0,
                       summary: Callable[[str, str], str] | None = None,
                       questions: Mapping[str, str] | None = None) -> list[dict]:
  """Reasoning traces -> cold-start records {"question", "reasoning", "summary"} for the
  correct ones.

  `samples` are dicts with `completion` (with or without the `<think>` prefill), a score
  (`reward/accuracy`, else `reward`) and the question (`question` / `problem` / `prompt`, or
  `questions[sample["id"]]`): an R1-Zero run's samples.jsonl, or the samples.jsonl that
  `python -m r1jax.evaluate` writes; a sample whose `reward/format` is below 1 is skipped.
  The reasoning is the think block; the summary states
  the answer (the text after the block without answer tags) in a box, or is
  `summary(reasoning, answer)`. Duplicate traces are kept once.
  """
  out, seen = [], set()
  for s in samples:
    score = s.get("reward/accuracy", s.get("reward", 0.0))
    if score is None or float(score) < min_reward or float(s.get("reward/format", 1.0)) < 1.0:
      continue  # wrong, or the tags were malformed (when the sample says)
    text = s.get("completion", "")
    if "<think>" not in text.split("</think>")[0]:
      text = "<think>" + text  # the prompt prefilled the opening tag
    m = _THINK.match(text)
    if not m or not m.group(1).strip():
      continue
    reasoning = m.group(1).strip()
    answer = _ANSWER.sub("", m.group(2)).strip()
    if not answer:
      continue
    q = (questions or {}).get(s.get("id")) or s.get("question") or s.get("problem") or \
        s.get("prompt", "")
    key = (q, reasoning, answer)
    if key in seen:
      continue
    seen.add(key)
    out.append({"question": q, "reasoning": reasoning,
                "summary": summary(reasoning, answer) if summary else summary_text(answer),
                **({"id": s["id"]} if "id" in s else {})})
  return out


__all__ = [
  "BadRecord", "LAYOUTS", "PackedRows", "SFTDataConfig", "SFT_TEMPLATES",
  "Tokenized", "cold_start_records", "collate", "detect_layout", "load_sft_dataset",
  "pack_best_fit_decreasing", "pack_rows", "record_conversations", "render_pieces",
  "to_cold_start", "tokenize_pieces", "tokenize_records",
]
