"""Continuous batching: the same samples as the static sampler (greedy, T=1, top-k) under
fixed keys with uneven lengths and more samples than slots; greedy also against an
uncached reference; the tiny config trains with it; the rollout bench runs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import r1_zero
from r1jax import train as train_lib
from r1jax.model import PRESETS, forward, init_params
from r1jax.sampling import SamplingConfig, generate, pad_prompts

CFG = PRESETS["tiny"]
N, G = 14, 3


@pytest.fixture(scope="module")
def setup():
  params = init_params(CFG, 0)
  rs = np.random.RandomState(0)
  prompts = [rs.randint(3, CFG.vocab_size, rs.randint(3, 20)).tolist() for _ in range(5)]
  toks, mask = pad_prompts(prompts, 0, 24)
  limits = rs.randint(1, N + 4, len(prompts) * G)  # some above N: capped by max_new_tokens
  limits[:3] = (2, N, 1)
  return params, prompts, toks, mask, limits


def _gen(setup, key, **kw):
  params, _, toks, mask, limits = setup
  kw = dict(max_new_tokens=N, num_samples=G, pad_id=1, **kw)
  return jax.tree.map(np.asarray, generate(params, CFG, toks, mask, jax.random.key(key),
                                           SamplingConfig(**kw), max_lengths=limits))


@pytest.fixture(scope="module")
def greedy_reference(setup):
  """Greedy decoding by the uncached forward pass over one right-padded sequence."""
  params, length = setup[0], 48
  fwd = jax.jit(lambda t, m: forward(params, CFG, t, np.arange(length)[None], m)[0][0])

  def ref(prompt, n, eos):
    seq = list(prompt)
    for _ in range(n):
      t = np.zeros((1, length), np.int32)
      t[0, :len(seq)] = seq
      logits = np.asarray(fwd(t, (np.arange(length) < len(seq))[None]))[len(seq) - 1]
      seq.append(int(np.argmax(logits)))
      if seq[-1] in eos:
        break
    return seq[len(prompt):]

  return ref


EOS = tuple(range(3, 23))  # 20 of the 256 tokens: random-model samples end at uneven steps


def test_greedy_matches_uncached_reference_with_uneven_lengths(setup, greedy_reference):
  _, prompts, _, _, limits = setup
  out = _gen(setup, 0, temperature=0.0, eos_ids=EOS, mode="continuous", num_slots=4, kv_block=8)
  ends = []
  for r in range(len(prompts) * G):
    want = greedy_reference(prompts[r // G], min(limits[r], N), EOS)
    ln = int(out.lengths[r])
    assert out.tokens[r, :ln].tolist() == want, r
    assert (out.tokens[r, ln:] == 1).all() and out.mask[r].tolist() == [1] * ln + [0] * (N - ln)
    ends.append(ln)
  assert len(set(ends)) > 4 and min(ends) == 1 and max(ends) == N  # really uneven


# kv_block 8: the prompt (24) + 14 new tokens in 5 blocks, read up to the longest filled slot;
# 0: the whole cache at every step.
@pytest.mark.parametrize("kw,slots", [(dict(temperature=0.0), ((4, 8), (4, 0))),
                                      (dict(temperature=1.0), ((1, 8), (4, 8), (32, 8), (4, 0))),
                                      (dict(temperature=0.8, top_k=7), ((4, 8),))])
def test_continuous_returns_the_static_samples(setup, kw, slots):
  static = _gen(setup, 3, eos_ids=EOS, **kw)
  assert len(set(static.lengths.tolist())) > 4
  if kw["temperature"]:  # EOS, not only the length limits, ends some samples
    assert (static.lengths < np.minimum(setup[4], N)).sum() >= 2
  for s, kv_block in slots:  # fewer slots than the 15 samples (and more)
    cont = _gen(setup, 3, eos_ids=EOS, mode="continuous", num_slots=s, kv_block=kv_block, **kw)
    np.testing.assert_array_equal(cont.tokens, static.tokens, err_msg=f"slots={s} {kv_block}")
    np.testing.assert_array_equal(cont.lengths, static.lengths)
    np.testing.assert_array_equal(cont.mask, static.mask)
    np.testing.assert_allclose(cont.logprobs, static.logprobs, atol=1e-5)
  if kw["temperature"]:  # a different key gives different samples
    assert (_gen(setup, 4, eos_ids=EOS, **kw).tokens != static.tokens).any()


@pytest.fixture
def nan_cache_tail(monkeypatch):
  """Continuous sampling with its slots' cache created full of NaN instead of zeros (jit
  caches cleared before and after, so the sampler is traced with it, and then without)."""
  from r1jax import continuous

  def nan_cache(pcache, slots, length):
    c = real(pcache, slots, length)
    nan = lambda x: jnp.full_like(x, jnp.nan)
    return c._replace(k=tuple(map(nan, c.k)), v=tuple(map(nan, c.v)))

  real = continuous._empty_cache
  jax.clear_caches()
  monkeypatch.setattr(continuous, "_empty_cache", nan_cache)
  yield
  monkeypatch.undo()
  jax.clear_caches()


def test_slots_never_attend_past_their_filled_length(setup, nan_cache_tail):
  """NaN in every never-written cache slot: a slot that read one (even at weight 0: 0 * NaN)
  would change its samples. Slots are refilled, so shorter slots sit beside longer ones."""
  kw = dict(temperature=1.0, eos_ids=EOS, mode="continuous", num_slots=4)
  static = _gen(setup, 3, temperature=1.0, eos_ids=EOS)
  cont = _gen(setup, 3, kv_block=8, **kw)
  np.testing.assert_array_equal(cont.tokens, static.tokens)
  np.testing.assert_allclose(cont.logprobs, static.logprobs, atol=1e-5)
  whole = _gen(setup, 3, kv_block=0, **kw)  # the check can fail: the whole cache reads NaN
  assert np.isnan(whole.logprobs).any() or (whole.tokens != static.tokens).any()


def test_attention_blocks_grow_past_eight():
  from r1jax.continuous import _block_len
  assert _block_len(128, 288) == 128  # 3 blocks (384 slots)
  assert _block_len(128, 1056) == 256  # 8.25 blocks of 128 -> 5 of 256
  assert _block_len(128, 1024 + 32768) == 33 * 128  # 8 blocks of 4224
  assert _block_len(128, 100) == 0 and _block_len(0, 500) == 0  # one block: the whole cache


def test_bad_mode_and_slots_are_named():
  with pytest.raises(ValueError, match="sampling.mode"):
    SamplingConfig(mode="paged")
  with pytest.raises(ValueError, match="num_slots=4"):
    SamplingConfig(num_slots=4)  # static mode ignores it
  with pytest.raises(ValueError, match="kv_block must be >= 0"):
    SamplingConfig(mode="continuous", kv_block=-1)
  with pytest.raises(ValueError, match="cache_chunks=2"):
    SamplingConfig(mode="continuous", cache_chunks=2)
  c = r1_zero.get_config("tiny")
  c.sampling.mode = "paged"
  with pytest.raises(ValueError, match="sampling.mode"):
    train_lib.validate(c)


def test_tiny_config_trains_with_continuous_batching(tmp_path):
  c = r1_zero.get_config("tiny")
  c.unlock()
  c.train.num_steps = 2
  c.train.eval_every = 0
  c.sampling.mode = "continuous"
  c.sampling.num_slots = 3
  train_lib.train(c, str(tmp_path))
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["completion_len_mean"] > 0 for r in rows)


def test_rollout_bench_runs(tmp_path):
  from r1jax.bench import rollout
  res = rollout.main(["--model=tiny", "--prompts=2", "--samples=2", "--max_new_tokens=12",
                      "--median=3", "--slots=2", "--kv_blocks=4,0",
                      f"--json_out={tmp_path / 'r.json'}"])
  static, *cont = res["rows"]
  assert [c["kv_block"] for c in cont] == [4, 0]
  assert all(c["same_tokens"] and c["tok_s"] > 0 for c in cont) and static["tok_s"] > 0
  assert res["useful_tokens"] == rollout.lengths(4, 3, 1.0, 12).sum()
  assert (tmp_path / "r.json").exists()


def test_continuous_on_a_mesh_matches_static_on_one_device():
  """Slots over data, heads over tensor on 8 fake CPU devices: the same samples at T=1
  (attention in blocks of 8 cache slots)."""
  import subprocess
  import sys
  import textwrap
  script = textwrap.dedent("""
    import json, numpy as np, jax, jax.numpy as jnp
    from r1jax import mesh as mesh_lib
    from r1jax.model import PRESETS, init_params
    from r1jax.model.loader import shard_params
    from r1jax.sampling import SamplingConfig, generate, pad_prompts
    cfg = PRESETS["tiny"]
    params = init_params(cfg, 0)
    rs = np.random.RandomState(0)
    toks, mask = pad_prompts([rs.randint(3, 256, rs.randint(3, 20)).tolist() for _ in range(3)])
    kw = dict(max_new_tokens=8, temperature=1.0, num_samples=2, eos_ids=tuple(range(3, 40)))
    ref = generate(params, cfg, toks, mask, jax.random.key(0), SamplingConfig(**kw))
    mesh = mesh_lib.make_mesh((2, 2, 2))
    with mesh_lib.use_mesh(mesh):  # 3 slots: rounded up to 4, a multiple of the data axis
      out = generate(shard_params(params, cfg, mesh), cfg, toks, mask, jax.random.key(0),
                     SamplingConfig(**kw, mode="continuous", num_slots=3, kv_block=8))
    print("RESULT " + json.dumps([np.asarray(ref.lengths).tolist(),
                                  bool((np.asarray(out.tokens) == np.asarray(ref.tokens)).all()),
                                  float(np.abs(np.asarray(out.logprobs) - ref.logprobs).max())]))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                        timeout=600)
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert line, proc.stderr[-3000:]
  lengths, same, err = json.loads(line[0][7:])
  assert len(set(lengths)) > 2 and same and err < 1e-4, (lengths, err)


def test_top_p_draw_of_a_row_does_not_depend_on_the_other_rows():
  """Top-p samples among the top candidates when they cover the nucleus, else over the whole
  vocabulary: which one must be the row's own choice, or a slot's token would depend on its
  neighbours."""
  from r1jax import sampling
  rs = np.random.RandomState(0)
  logits = rs.randn(16, 256).astype(np.float32)
  logits[::2, :3] += 8.0  # peaked rows: 4 candidates cover the nucleus; flat rows: they do not
  scfg = SamplingConfig(temperature=1.0, top_p=0.9, top_p_candidates=4)
  keys = jax.random.split(jax.random.key(0), 16)
  choose = jax.jit(lambda l, k: sampling._choose(l, k, scfg)[0])
  batch = np.asarray(choose(logits, keys))
  alone = [int(choose(logits[i:i + 1], keys[i:i + 1])[0]) for i in range(16)]
  assert batch.tolist() == alone
