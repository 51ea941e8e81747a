"""SmolLM2-135M from the wheel: cached greedy decoding equals transformers' generate."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.model import gguf
from r1jax.model.smollm2 import smollm2_gguf_path
from r1jax.sampling import SamplingConfig, generate, pad_prompts
from r1jax.tokenizer import Tokenizer

PROMPTS = ["Question: Tom has 7 apples and buys 5 more. How many apples does he have?\nAnswer:", "The capital of France is",
           "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def models():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path = smollm2_gguf_path()
  reader = gguf.open_gguf(path)
  cfg, params = gguf.load_gguf(reader)
  tok = Tokenizer.from_gguf(reader)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=torch.float32).eval()
  return cfg, params, tok, hf


def test_greedy_cached_decoding_matches_transformers(models):
  import torch
  cfg, params, tok, hf = models
  ids = [tok.encode(p) for p in PROMPTS]
  n = 24
  toks, mask = pad_prompts(ids, tok.pad_id, bucket=16)  # left-padded batch of 3
  out = generate(params, cfg, jnp.asarray(toks), jnp.asarray(mask), jax.random.key(0),
                 SamplingConfig(max_new_tokens=n, temperature=0.0,
                                eos_ids=tuple(sorted(tok.eos_ids)), pad_id=tok.pad_id))
  ours, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  hf_eos = hf.generation_config.eos_token_id
  hf_eos = set(hf_eos if isinstance(hf_eos, list) else [hf_eos])
  assert hf_eos <= set(tok.eos_ids)
  for i, p in enumerate(ids):
    with torch.no_grad():  # one prompt at a time, unpadded: transformers' own default path
      ref = hf.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False,
                        pad_token_id=tok.pad_id)[0, len(p):].numpy().tolist()
    got = ours[i, :lengths[i]].tolist()
    assert got == ref, (PROMPTS[i], tok.decode(got), tok.decode(ref))
  assert lengths.max() == n, "at least one prompt should run to the length limit"


def test_eos_stops_row_and_masks_rest(models):
  cfg, params, tok, _ = models
  ids = [tok.encode(PROMPTS[2])]
  toks, mask = pad_prompts(ids, tok.pad_id, bucket=16)
  out = generate(params, cfg, jnp.asarray(toks), jnp.asarray(mask), jax.random.key(1),
                 SamplingConfig(max_new_tokens=64, temperature=0.0,
                                eos_ids=tuple(sorted(tok.eos_ids)), pad_id=tok.pad_id))
  row, length = np.asarray(out.tokens[0]), int(out.lengths[0])
  assert length < 64, "the instruct model should end its haiku with <|im_end|>"
  assert row[length - 1] in tok.eos_ids
  assert not set(row[:length - 1].tolist()) & set(tok.eos_ids)
  assert (row[length:] == tok.pad_id).all()
  assert np.asarray(out.mask[0]).sum() == length
