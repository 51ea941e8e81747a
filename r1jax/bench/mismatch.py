"""Sampler/trainer log-prob gap: the sampler's log-probs vs the trainer's for the same tokens.

    python -m r1jax.bench.mismatch                     # SmolLM2-135M, default task prompts
    python -m r1jax.bench.mismatch --prompts=16 --new_tokens=64

For decode_dtype "" (float32, the model's dtype) and "bfloat16" it samples G completions per
prompt of the default config (configs/r1_zero.py) and compares the log-probs returned by
`sampling.generate` with `rl.completion_logprobs` (the float32 trainer forward): mean and
max |diff| over completion tokens and the k3 estimate of KL(sampler || trainer), as the
trainer logs them (`mismatch/*`), plus the mean truncated-IS weight min(pi_old/pi_sampler, 2).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time

import jax
import numpy as np
from absl import app, flags



def define_flags() -> None:
  """The CLI's flags, defined only when run as a program."""
  flags.DEFINE_integer("prompts", 8, "Number of prompts.")
  flags.DEFINE_integer("new_tokens", 64, "New tokens per completion.")
  flags.DEFINE_integer("samples", 4, "Completions per prompt.")


def main(argv) -> None:
  del argv
  from configs import r1_zero
  from r1jax import data as data_lib
  from r1jax import rl
  from r1jax import policy_loss as pl
  from r1jax.mesh import make_mesh, use_mesh
  from r1jax.model.loader import load_model
  from r1jax.sampling import generate, pad_prompts
  from r1jax.run import sampling_config

  c = r1_zero.get_config()
  mesh = make_mesh((1, 1, 1))
  model_cfg, params, tok = load_model(c.model, mesh)
  src = data_lib.make_source(dict(c.data.source))
  render = data_lib.make_renderer(c.data, tok)
  prompts = [render(src[i]) for i in range(flags.FLAGS.prompts)]
  ptoks, pmask = pad_prompts([tok.encode(p) for p in prompts], tok.pad_id, c.data.prompt_bucket)
  base = dataclasses.replace(sampling_config(c, eos_ids=tuple(sorted(tok.eos_ids)),
                                             pad_id=tok.pad_id),
                             num_samples=flags.FLAGS.samples, max_new_tokens=flags.FLAGS.new_tokens)
  logp_fn = jax.jit(functools.partial(rl.completion_logprobs, model_cfg=model_cfg,
                                      temperature=base.temperature))
  rows = []
  with use_mesh(mesh):
    for dt in ("", "bfloat16"):
      scfg = dataclasses.replace(base, decode_dtype=dt)
      t0 = time.time()
      out = jax.device_get(generate(params, model_cfg, ptoks, pmask, jax.random.key(0), scfg))
      t_sample = time.time() - t0
      lp = logp_fn(params, prompt_tokens=ptoks, prompt_mask=pmask,
                   completion_tokens=out.tokens, completion_mask=out.mask)
      m = {k: float(v) for k, v in pl.mismatch_metrics(lp, out.logprobs, out.mask).items()}
      w = pl.tis_weights(lp, out.logprobs, out.mask, "token", 2.0)
      m["tis_token_weight_mean"] = float((np.asarray(w) * out.mask).sum() / out.mask.sum())
      m.update(decode_dtype=dt or "float32", tokens=int(out.mask.sum()), sample_s=t_sample)
      rows.append(m)
      print(json.dumps(m), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
