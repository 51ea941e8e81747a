"""The sampler: greedy parity with an uncached reference, bucketing without recompiles,
shared prefill, and top-p / top-k / full-vocabulary sampling against exact references."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from r1jax import sampling
from r1jax.model import PRESETS, forward, init_params
from r1jax.sampling import SamplingConfig, filter_logits, generate, pad_prompts

CFG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, 0)


def _prompts(seed, n, lo=3, hi=20):
  rs = np.random.RandomState(seed)
  return [rs.randint(3, CFG.vocab_size, rs.randint(lo, hi)).tolist() for _ in range(n)]


def _run(params, prompts, **kw):
  toks, mask = pad_prompts(prompts, 0, 24)  # one prompt length: prompts are shorter
  kw.setdefault("temperature", 0.0)
  out = generate(params, CFG, jnp.asarray(toks), jnp.asarray(mask),
                 jax.random.key(kw.pop("seed", 0)), SamplingConfig(**kw))
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def reference_fn(params):
  """Greedy decoding with the uncached forward pass over one right-padded sequence."""
  length = 64
  fwd = jax.jit(lambda t, m: forward(params, CFG, t, jnp.arange(length)[None], m)[0][0])

  def ref(prompt, n, eos=()):
    seq, toks, lps = list(prompt), [], []
    for _ in range(n):
      t = np.zeros((1, length), np.int32)
      t[0, :len(seq)] = seq
      m = (np.arange(length) < len(seq))[None]
      logits = np.asarray(fwd(jnp.asarray(t), jnp.asarray(m)))[len(seq) - 1]
      tok = int(np.argmax(logits))
      lps.append(float(jax.nn.log_softmax(logits)[tok]))
      toks.append(tok)
      seq.append(tok)
      if tok in eos:
        break
    return toks, lps

  return ref


def test_greedy_matches_uncached_reference(params, reference_fn):
  prompts = _prompts(0, 3)
  n = 12
  first = _run(params, prompts, max_new_tokens=n)
  eos = (int(first.tokens[0, 4]), int(first.tokens[2, 7]))  # tokens the model does emit
  for kw in (dict(), dict(num_samples=2), dict(fuse_weights=False), dict(cache_chunks=3),
             dict(prefill_chunk=8)):
    out = _run(params, prompts, max_new_tokens=n, eos_ids=eos, pad_id=1, **kw)
    g = kw.get("num_samples", 1)
    for i, p in enumerate(prompts):
      want, lps = reference_fn(p, n, eos)
      for j in range(g):
        r = i * g + j
        length = int(out.lengths[r])
        assert out.tokens[r, :length].tolist() == want, (kw, i)
        np.testing.assert_allclose(out.logprobs[r, :length], lps, atol=2e-5)
        assert (out.tokens[r, length:] == 1).all() and (out.logprobs[r, length:] == 0).all()
        assert out.mask[r].tolist() == [1] * length + [0] * (n - length)
  assert out.lengths.min() < n, "an EOS should end at least one row early"


@pytest.mark.parametrize("fuse", [True, False])
def test_bf16_decode_matches_rounded_fp32_reference(params, fuse):
  """decode_dtype=bfloat16: teacher-forced through an fp32 forward of the bf16-rounded
  weights, every sampled token's log-prob agrees and every greedy pick is (near) the argmax."""
  prompts, n = _prompts(3, 3), 12
  out = _run(params, prompts, max_new_tokens=n, decode_dtype="bfloat16", fuse_weights=fuse)
  rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(x.dtype), params)
  for i, p in enumerate(prompts):
    seq = np.asarray(p + out.tokens[i].tolist(), np.int32)[None]
    logits = np.asarray(forward(rounded, CFG, jnp.asarray(seq), jnp.arange(seq.shape[1])[None],
                                jnp.ones(seq.shape, bool))[0][0], np.float64)
    logits = logits[len(p) - 1:-1]  # the logits that chose each completion token
    lsm = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                             keepdims=True))
    lsm -= logits.max(-1, keepdims=True)
    picked = lsm[np.arange(n), out.tokens[i]]
    np.testing.assert_allclose(out.logprobs[i], picked, atol=0.03)
    gap = logits.max(-1) - logits[np.arange(n), out.tokens[i]]
    assert gap.max() < 0.03 * max(1.0, np.abs(logits).max()), gap
  with pytest.raises(ValueError, match="decode_dtype"):
    SamplingConfig(decode_dtype="int8")


def test_batch_bucketing_same_tokens_and_no_recompile(params):
  assert [sampling.batch_bucket(b) for b in (1, 7, 9, 13, 17, 33, 100)] == [
      1, 7, 10, 14, 20, 40, 112]
  assert sampling.batch_bucket(3, 8) == 8 and sampling.batch_bucket(5, 1, multiple=4) == 8
  prompts = _prompts(1, 5)
  for t in (0.0, 1.0):
    exact = _run(params, prompts, max_new_tokens=10, batch_bucket=1, temperature=t)
    padded = _run(params, prompts, max_new_tokens=10, batch_bucket=8, temperature=t)
    for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(padded)):  # no experts: None
      assert a.shape == b.shape
      np.testing.assert_allclose(a, b, atol=1e-5)
  size = sampling._generate._cache_size()
  other = _run(params, _prompts(2, 3), max_new_tokens=10, batch_bucket=8)  # same bucket
  assert other.tokens.shape == (3, 10)
  assert sampling._generate._cache_size() == size, "a batch of the same bucket recompiled"
  _run(params, _prompts(2, 9), max_new_tokens=10, batch_bucket=8)  # the next bucket
  assert sampling._generate._cache_size() == size + 1


def test_shared_prefill_equals_independent_prefill(params):
  prompts = _prompts(3, 2)
  g = 3
  shared = _run(params, prompts, max_new_tokens=8, num_samples=g)
  repeated = _run(params, [p for p in prompts for _ in range(g)], max_new_tokens=8)
  np.testing.assert_array_equal(shared.tokens, repeated.tokens)
  np.testing.assert_allclose(shared.logprobs, repeated.logprobs, atol=1e-6)

  # Sampled: G samples sharing one prefill vs G copies of the prompt, different seeds; both
  # match the exact distribution of the first token and agree on the second token's.
  prompt, n = prompts[0], 2048
  kw = dict(max_new_tokens=2, temperature=1.0)
  a = _run(params, [prompt], num_samples=n, seed=1, **kw)
  b = _run(params, [prompt] * n, seed=2, **kw)
  logits = forward(params, CFG, jnp.asarray([prompt]), jnp.arange(len(prompt))[None])[0][0, -1]
  p = np.asarray(jax.nn.softmax(logits), np.float64)
  p /= p.sum()
  for out in (a, b):
    counts = np.bincount(out.tokens[:, 0], minlength=CFG.vocab_size)
    assert stats.chisquare(counts, p * n).pvalue > 1e-3
  both = np.concatenate([a.tokens[:, 1], b.tokens[:, 1]])
  vals = np.unique(both)
  table = np.stack([[np.sum(x == v) for v in vals] for x in (a.tokens[:, 1], b.tokens[:, 1])])
  assert stats.chi2_contingency(table).pvalue > 1e-3


def _numpy_filter(logits, top_p, top_k):
  out = np.array(logits, np.float64)
  for row in out:
    order = np.argsort(-row, kind="stable")
    s = row[order]
    cutoff = -np.inf
    if top_k > 0:
      cutoff = max(cutoff, s[min(top_k, len(s)) - 1])
    if top_p < 1:
      e = np.exp(s - s.max())
      probs = e / e.sum()
      mass, last = 0.0, 0
      for j, q in enumerate(probs):  # smallest prefix whose mass reaches top_p
        last = j
        mass += q
        if mass >= top_p:
          break
      cutoff = max(cutoff, s[last])
    row[row < cutoff] = -np.inf
  return out


@pytest.mark.parametrize("top_p,top_k,v", [(1.0, 3, 50), (0.9, 0, 50), (0.5, 0, 50), (0.3, 5, 50),
                                            (0.95, 40, 50), (1e-6, 0, 50), (0.95, 0, 5000),
                                            (0.6, 1000, 5000)])
def test_filter_logits_matches_numpy(top_p, top_k, v):
  logits = np.array(jax.random.normal(jax.random.key(v), (16, v)) * 3)
  logits[0, :4] = 5.0  # ties at the top
  logits[1, ::3] = -np.inf  # masked tokens
  logits[2] *= 0.01  # nearly flat
  got = np.asarray(filter_logits(jnp.asarray(logits), top_p, top_k))
  want = _numpy_filter(logits, top_p, top_k)
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  np.testing.assert_allclose(got[~np.isinf(got)], want[~np.isinf(want)], rtol=1e-6)


def _sample_many(logits_row, scfg, n=20000, seed=0):
  logits = jnp.broadcast_to(jnp.asarray(logits_row, jnp.float32), (n, len(logits_row)))
  keys = jax.random.split(jax.random.key(seed), n)
  tok, lp = jax.jit(lambda l, k: sampling._choose(l, k, scfg))(logits, keys)
  return np.asarray(tok), np.asarray(lp)


@pytest.mark.parametrize("temperature,top_p,top_k,cands", [
    (0.7, 0.8, 0, 64),  # nucleus inside the candidates
    (1.0, 0.97, 0, 4),  # candidates too few: the exact full-sort fallback
    (1.0, 0.9, 6, 64),  # top-k and top-p
    (1.0, 1.0, 5, 64),  # top-k only
    (1.3, 1.0, 0, 64),  # the full distribution, drawn block by block
])
def test_token_sampling_matches_exact_distribution(temperature, top_p, top_k, cands):
  v = 600  # not a multiple of the sampler's block size
  row = np.asarray(jax.random.normal(jax.random.key(1), (v,)) * 2.5)
  scfg = SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k,
                        top_p_candidates=cands)
  tok, lp = _sample_many(row, scfg)
  scaled = row / temperature
  filtered = _numpy_filter(scaled[None], top_p, top_k)[0]
  p = np.exp(filtered - filtered.max())
  p /= p.sum()
  assert np.all(p[tok] > 0), "sampled a token outside the top-k / nucleus"
  counts = np.bincount(tok, minlength=v)
  support = p > 0
  if support.sum() > 1:
    expected = p[support] * len(tok)
    big = expected >= 5  # pool the rare tokens into one bin
    obs = np.append(counts[support][big], counts[support][~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    obs, exp = (obs, exp) if exp[-1] > 0 else (obs[:-1], exp[:-1])
    assert stats.chisquare(obs, exp).pvalue > 1e-3
  log_softmax = scaled - scaled.max() - np.log(np.exp(scaled - scaled.max()).sum())
  np.testing.assert_allclose(lp, log_softmax[tok], atol=1e-4)


def test_greedy_token_choice_is_first_argmax():
  logits = jnp.asarray([[0.0, 3.0, 3.0, 1.0], [-1.0, -1.0, -2.0, -1.0]])
  tok, lp = sampling._choose(logits, jax.random.split(jax.random.key(0), 2),
                             SamplingConfig(temperature=0.0))
  assert tok.tolist() == [1, 0]
  np.testing.assert_allclose(lp, jax.nn.log_softmax(logits)[jnp.arange(2), tok], atol=1e-6)


def test_sampling_on_a_mesh_matches_one_device(tmp_path):
  """Batch over data, heads over tensor on 8 fake CPU devices: same greedy tokens."""
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
    scfg = SamplingConfig(max_new_tokens=8, temperature=0.0, num_samples=2)
    ref = generate(params, cfg, jnp.asarray(toks), jnp.asarray(mask), jax.random.key(0), scfg)
    res = {}
    for shape in [(2, 2, 2), (4, 2, 1)]:
      mesh = mesh_lib.make_mesh(shape)
      with mesh_lib.use_mesh(mesh):
        out = generate(shard_params(params, cfg, mesh), cfg, toks, mask, jax.random.key(0), scfg)
      res[str(shape)] = [bool((np.asarray(out.tokens) == np.asarray(ref.tokens)).all()),
                         float(np.abs(np.asarray(out.logprobs) - np.asarray(ref.logprobs)).max())]
    print("RESULT " + json.dumps(res))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                        timeout=600)
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert line, proc.stderr[-3000:]
  for shape, (same, err) in json.loads(line[0][7:]).items():
    assert same and err < 1e-4, (shape, err)
