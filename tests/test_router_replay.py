"""Router replay (`rl.router_replay`; verl's "router replay", R3): the sampler returns the
experts every token was routed to, and the trainer's forwards route through exactly those.

Checks: a forward given its own experts is the same forward (values and router gradient);
the sampler's experts are the top-k of a naive numpy router over layer 0's hidden state;
static and continuous sampling return the same expert arrays; where the sampler's policy
routes some tokens differently from the trainer's (a slightly perturbed router, decoded in
bf16), replay makes the trainer's expert sets the sampler's and shrinks the log-prob gap; the
packed step replays as the padded one; the config errors; and the train step with replay
compiles for TPU. A `:tiny_moe` GRPO run with replay: tests/test_moe.py
(`test_tiny_moe_grpo_run_trains[True]`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import rl, packed_rl, packing
from r1jax.model import PRESETS, forward, init_params, positions_from_mask
from r1jax.model.layers import MASKED, rms_norm, rope_inv_freq
from r1jax.model.transformer import _gqa
from r1jax.sampling import SamplingConfig, generate, pad_prompts

CFG = PRESETS["tiny_moe"]
G = 2
# The model forward, jitted (cfg static), with its experts: (logits, None, experts). Ids of -1
# route freely, so one compilation serves the free and the replayed forward.
fwd = jax.jit(lambda params, cfg, toks, pos, mask, experts: forward(
    params, cfg, toks, pos, mask, experts=experts, return_experts=True), static_argnums=1)
logprobs = jax.jit(rl.completion_logprobs, static_argnums=1)


def _free(cfg, b: int, t: int):
  """Expert ids that replay nothing: [b, L_moe, t, k] of -1."""
  return jnp.full((b, len(cfg.moe_layers), t, cfg.num_experts_per_tok), -1, jnp.int16)
SCFG = SamplingConfig(max_new_tokens=12, num_samples=G, temperature=1.0, eos_ids=(7,),
                      return_experts=True)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, 0)


@pytest.fixture(scope="module")
def prompts():
  rs = np.random.RandomState(0)
  return pad_prompts([list(rs.randint(8, 256, size=n)) for n in (5, 9, 12, 7)], 0, 4)


def _perturbed_router(params, scale: float = 0.03):
  """The sampler's policy: every router moved by `scale` of its own std (a stale or
  differently rounded copy, as an inference engine holds)."""
  layers = {i: dict(params["layers"][i]) for i in range(CFG.num_layers)}
  for i, layer in layers.items():
    r = layer["router"]
    layer["router"] = r + scale * r.std() * jax.random.normal(jax.random.key(7 + i), r.shape)
  return {**params, "layers": layers}


def _sequences(ptoks, pmask, out):
  """Rows [prompt | completion] as one forward sees them, and the sampler's experts along."""
  toks = np.concatenate([np.repeat(ptoks, G, 0), out.tokens], 1)
  mask = np.concatenate([np.repeat(pmask, G, 0), out.mask], 1).astype(bool)
  return toks, mask, np.concatenate([out.prompt_experts, out.experts], 2)


def _trainer_experts(params, toks, mask, replay=None):
  replay = _free(CFG, *toks.shape) if replay is None else replay
  _, _, chosen = fwd(params, CFG, jnp.asarray(toks), positions_from_mask(mask), mask, replay)
  return np.asarray(chosen)


def _differing_sets(a, b):
  """How many recorded (row, layer, token) expert sets differ between a and b."""
  recorded = b[..., 0] >= 0
  return int(((np.sort(a, -1) != np.sort(b, -1)).any(-1) & recorded).sum())


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("preset", ["tiny_moe", "tiny_mla"])
def test_forward_given_its_own_experts_is_the_same_forward(preset):
  cfg = PRESETS[preset]  # tiny_mla: sigmoid scores + bias, expert groups, a shared expert
  p = init_params(cfg, 1)
  toks = jnp.asarray(np.random.RandomState(1).randint(0, 256, (2, 10)))
  mask = jnp.asarray(np.arange(10)[None] >= np.array([[0], [3]]))  # row 1 left-padded
  pos = positions_from_mask(mask)
  logits, _, experts = fwd(p, cfg, toks, pos, mask, _free(cfg, 2, 10))
  assert experts.shape == (2, len(cfg.moe_layers), 10, cfg.num_experts_per_tok)
  assert experts.dtype == jnp.int16 and (np.asarray(experts)[1, :, :3] == -1).all()
  again, _, chosen = fwd(p, cfg, toks, pos, mask, experts)
  np.testing.assert_array_equal(chosen, experts)
  np.testing.assert_allclose(again, logits, atol=1e-6)

  # The gate weights are recomputed from the router: it gets the same gradient.
  @jax.jit
  def router_grad(experts):
    f = lambda q: jnp.std(jnp.where(mask[..., None], fwd(q, cfg, toks, pos, mask, experts)[0], 0))
    g = jax.grad(f)(p)
    return [g["layers"][i]["router"] for i in cfg.moe_layers]
  for a, b in zip(router_grad(_free(cfg, 2, 10)), router_grad(experts)):
    assert float(jnp.abs(a).max()) > 0
    np.testing.assert_allclose(a, b, atol=1e-6)

  # Other experts are used when replayed: the forward follows them.
  other = jnp.where(experts >= 0, (experts + 1) % cfg.num_experts, -1).astype(experts.dtype)
  moved, _, chosen = fwd(p, cfg, toks, pos, mask, other)
  np.testing.assert_array_equal(chosen, other)
  assert float(jnp.abs(moved - logits)[mask].max()) > 1e-3


# ----------------------------------------------------------------------------- the sampler


def test_sampled_experts_are_a_naive_routers_top_k(params, prompts):
  """Layer 0's recorded experts, prompt (prefill) and completion (decode steps), against a
  float64 softmax top-k over its MLP input (the hidden state after attention and norm)."""
  ptoks, pmask = prompts
  out = generate(params, CFG, ptoks, pmask, jax.random.key(0), SCFG)
  toks, mask, recorded = _sequences(ptoks, pmask, out)
  layer = params["layers"][0]
  x = jnp.take(params["embed"], jnp.asarray(toks), axis=0)
  causal = np.tril(np.ones((toks.shape[1],) * 2, bool))[None] & mask[:, None, :]
  bias = jnp.asarray(np.where(causal, 0.0, MASKED), jnp.float32)
  attn, _ = _gqa(rms_norm(x, layer["attn_norm"], CFG.rms_norm_eps), layer, CFG,
                 positions_from_mask(mask), rope_inv_freq(CFG), bias, None, None, lambda w: w)
  hn = np.asarray(rms_norm(x + attn, layer["mlp_norm"], CFG.rms_norm_eps), np.float64)
  logits = hn @ np.asarray(layer["router"], np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  order = np.argsort(-probs, -1, kind="stable")
  naive = np.sort(order[..., :CFG.num_experts_per_tok], -1)
  k = CFG.num_experts_per_tok
  margin = np.take_along_axis(probs, order[..., k - 1:k], -1) - np.take_along_axis(
      probs, order[..., k:k + 1], -1)
  got = recorded[:, 0]
  check = (got[..., 0] >= 0) & (margin[..., 0] > 1e-5)  # no near-tie in float32
  assert check.sum() > 0.95 * (got[..., 0] >= 0).sum() > 100
  np.testing.assert_array_equal(np.sort(got, -1)[check], naive[check])
  # Exactly the inputs were routed: real prompt tokens and every completion token but the last.
  lengths = np.asarray(out.lengths)
  p = ptoks.shape[1]
  want = mask.copy()
  want[np.arange(len(lengths)), p + lengths - 1] = False
  np.testing.assert_array_equal(got[..., 0] >= 0, want)


def test_static_and_continuous_sampling_return_the_same_experts(params, prompts):
  ptoks, pmask = prompts
  caps = np.array([12, 3, 7, 12, 5, 9])  # uneven lengths: slots refill at different steps
  static = generate(params, CFG, ptoks[:3], pmask[:3], jax.random.key(3), SCFG, caps)
  cont = generate(params, CFG, ptoks[:3], pmask[:3], jax.random.key(3),
                  dataclasses.replace(SCFG, mode="continuous", num_slots=2), caps)
  assert len(set(np.asarray(static.lengths))) > 2
  np.testing.assert_array_equal(cont.tokens, static.tokens)
  np.testing.assert_array_equal(cont.experts, static.experts)
  np.testing.assert_array_equal(cont.prompt_experts, static.prompt_experts)
  assert static.experts.shape == (3 * G, 2, SCFG.max_new_tokens, 2)
  plain = generate(params, CFG, ptoks[:3], pmask[:3], jax.random.key(3),
                   dataclasses.replace(SCFG, return_experts=False), caps)
  assert plain.experts is None and plain.prompt_experts is None
  np.testing.assert_array_equal(plain.tokens, static.tokens)


# ----------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def mismatched(params, prompts):
  """Samples of a perturbed-router policy decoded in bf16, scored by the float32 trainer."""
  ptoks, pmask = prompts
  scfg = dataclasses.replace(SCFG, decode_dtype="bfloat16", eos_ids=())
  return generate(_perturbed_router(params), CFG, ptoks, pmask, jax.random.key(0), scfg)


def test_replay_gives_the_trainer_the_samplers_experts(params, prompts, mismatched):
  ptoks, pmask = prompts
  out = mismatched
  toks, mask, recorded = _sequences(ptoks, pmask, out)
  free = _differing_sets(_trainer_experts(params, toks, mask), recorded)
  replayed = _differing_sets(_trainer_experts(params, toks, mask, recorded), recorded)
  assert free > 0 and replayed == 0, (free, replayed)

  m = out.mask.astype(bool)
  gap = {}
  unset = _free(CFG, 4, ptoks.shape[1]), _free(CFG, 4 * G, out.tokens.shape[1])
  for replay in (False, True):
    pe, ce = (out.prompt_experts[::G], out.experts) if replay else unset
    lp = logprobs(params, CFG, ptoks, pmask, out.tokens, out.mask, prompt_experts=pe, experts=ce)
    d = np.abs(np.asarray(lp) - np.asarray(out.logprobs))[m]
    gap[replay] = (float(d.mean()), float(d.max()))
  print(f"\nrouting sets that differ: {free} of {(recorded[..., 0] >= 0).sum()} without replay, "
        f"0 with; |trainer - sampler| log-prob mean, max: {gap[False]} -> {gap[True]}")
  assert gap[True][0] < 0.6 * gap[False][0] and gap[True][1] < 0.5 * gap[False][1], gap


def test_packed_step_replays_as_the_padded_one(params, prompts, mismatched):
  ptoks, pmask = prompts
  out = mismatched
  batch = rl.Batch(ptoks, pmask, np.asarray(out.tokens), np.asarray(out.mask),
                     np.ones(len(out.tokens), np.float32), None, None,
                     prompt_experts=np.asarray(out.prompt_experts)[::G],
                     experts=np.asarray(out.experts))
  padded_lp = jax.jit(rl.batch_logprobs, static_argnums=2)
  want = np.asarray(padded_lp(params, batch, CFG))
  packed, layout = packing.pack_batch(batch, 0)
  assert packed.experts.shape[:3] == (len(packed.tokens), 2, packed.tokens.shape[1])
  got = packing.unpack(np.asarray(jax.jit(packed_rl.batch_logprobs, static_argnums=2)(
      params, packed, CFG)), layout)
  np.testing.assert_allclose(got, want * out.mask, atol=1e-5)
  free = np.asarray(padded_lp(params, batch._replace(
      prompt_experts=np.full_like(batch.prompt_experts, -1),
      experts=np.full_like(batch.experts, -1)), CFG))
  assert np.abs(free - want)[out.mask.astype(bool)].max() > 1e-3  # replay did change them


def test_train_batch_carries_the_samplers_experts(prompts, mismatched):
  """The trainer's batch (train.build_batch): prompt experts once per group, completion
  experts trimmed with the completion columns; without replay, none."""
  from r1jax.train import build_batch
  ptoks, pmask = prompts
  out = jax.device_get(mismatched)
  batch = build_batch(ptoks, pmask, out, np.zeros(len(out.tokens)), bucket=4)
  n = batch.completion_tokens.shape[1]
  np.testing.assert_array_equal(batch.prompt_experts, out.prompt_experts[::G])
  np.testing.assert_array_equal(batch.experts, out.experts[:, :, :n])
  wider = build_batch(np.pad(ptoks, ((0, 0), (3, 0))), np.pad(pmask, ((0, 0), (3, 0))), out,
                      np.zeros(len(out.tokens)))  # a wider prompt bucket: -1 on the left
  assert (wider.prompt_experts[:, :, :3] == -1).all()
  plain = build_batch(ptoks, pmask, out._replace(experts=None, prompt_experts=None),
                      np.zeros(len(out.tokens)))
  assert plain.experts is None and plain.prompt_experts is None


def test_router_replay_config_errors(tmp_path):
  from configs import r1_zero
  from r1jax import train as train_lib
  with pytest.raises(ValueError, match="rl.router_replay=True needs a mixture-of-experts"):
    rl.RLConfig(router_replay=True).check_replay(PRESETS["tiny"])
  rl.RLConfig(router_replay=True).check_replay(CFG)
  c = r1_zero.get_config("tiny_moe")
  c.rl.router_replay, c.tools.enabled = True, True
  with pytest.raises(ValueError, match="rl.router_replay=True with tools.enabled=True"):
    train_lib.validate(c)


def test_train_step_with_router_replay_compiles_for_tpu():
  """The `:tiny_moe` train step with replay on, compiled for one v5e chip (libtpu, on CPU)."""
  from configs import r1_zero
  from r1jax import aot, hardware, programs
  from r1jax.mesh import use_mesh
  c = r1_zero.get_config("tiny_moe")
  c.rl.router_replay = True
  chip, devices = hardware.topology_devices("v5e:1x1")
  mesh = aot.make_mesh(tuple(c.mesh.shape), devices, "v5e:1x1")
  with use_mesh(mesh):
    step = {p.name: p for p in programs.rl_programs(c, mesh, 16)}["train_step"]
    batch = step.args[1]
    assert batch.experts.shape == (8, 2, c.sampling.max_new_tokens, 2)
    assert batch.prompt_experts.dtype == jnp.int16
    r = aot.compile_program(step, chip)
  assert 0 < r["total_bytes"] < chip.hbm_bytes and r["flops"] > 0
