"""Multi-device checks on fake CPU devices, run in a subprocess by tests/test_mesh.py.

    python tests/multidevice_worker.py CHECKS MESH_SHAPE [MODEL] [--devices=8]

CHECKS is a check name or a comma-separated list (`all` for every one), MESH_SHAPE is
`data,fsdp,tensor` (e.g. `2,2,2`), MODEL a key of MODELS (default `even`). Several targets
share one process (and its compile of the 1-device reference): `8,1,1/1,2,4@odd`.
XLA_FLAGS must fix the device count before jax initialises, which is why this runs as its own
process. Each check prints one line
`RESULT {"check": ..., "ok": ..., ...}`; the exit status is non-zero if any check failed.

To add a check: write `def check_NAME(ctx) -> dict` and decorate it with `@check`; `ctx`
holds the mesh, the model config, 1-device reference params and a batch (see `Context`).
Raise (or `assert`) to fail; the returned dict is reported as details.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
  _n = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "8")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_n}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses
import functools
import json
import tempfile
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from r1jax import mesh as mesh_lib
from r1jax.model import transformer as tfm
from r1jax.model.config import PRESETS, ModelConfig
from r1jax.model.checkpoint_io import load_hf_dir, save_hf_dir

MODELS: dict[str, ModelConfig] = {
    # Everything divides: heads 8, kv_heads 4, vocab 256, embed 64, mlp 128. Untied with q/k/v
    # biases and Llama-3 RoPE scaling, so every kind of param is present.
    "even": ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=8,
                        num_kv_heads=4, intermediate_size=128, tie_embeddings=False,
                        qkv_bias=True, rms_norm_eps=1e-5, max_position_embeddings=256,
                        rope_theta=500000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 16}),
    # Heads 6 / kv_heads 3 / vocab 250 / mlp 90: tensor=4 (and 8) divides none of them, so
    # the rules replicate those dims; tied embeddings.
    "odd": ModelConfig(vocab_size=250, hidden_size=48, num_layers=2, num_heads=6,
                       num_kv_heads=3, intermediate_size=90, tie_embeddings=True,
                       qkv_bias=False, rms_norm_eps=1e-6, max_position_embeddings=256),
    # DeepSeek-V3 in miniature (MLA, layer 0 dense, 8 sigmoid-routed experts in 2 groups,
    # a shared expert), for expert parallelism: run it on a 4-entry mesh shape.
    "dsv3": PRESETS["tiny_mla"].replace(router_bias_update_speed=0.0),
}

CHECKS: dict[str, Callable[["Context"], dict]] = {}


def check(fn):
  CHECKS[fn.__name__.removeprefix("check_")] = fn
  return fn


@dataclasses.dataclass
class Context:
  mesh: jax.sharding.Mesh
  model: str
  cfg: ModelConfig
  ref_params: dict     # numpy params (the source of truth)
  tokens: np.ndarray   # [B, T] int32
  positions: np.ndarray
  mask: np.ndarray     # [B, T] bool, left padding on some rows
  tmpdir: str

  @functools.cached_property
  def ref_device(self):
    return jax.devices()[0]

  @functools.cached_property
  def ref_mesh(self):
    return mesh_lib.make_mesh((1, 1, 1), [self.ref_device])

  @functools.cached_property
  def hf_dir(self) -> str:
    """The reference params saved as a HF directory (several shards)."""
    d = os.path.join(self.tmpdir, "hf")
    save_hf_dir(self.ref_params, self.cfg, d, max_shard_bytes=100_000)
    return d

  @functools.cached_property
  def params(self) -> dict:
    """The params loaded from `hf_dir` straight onto `mesh`."""
    cfg, params = load_hf_dir(self.hf_dir, mesh=self.mesh)
    assert cfg == self.cfg, (cfg, self.cfg)
    return params

  def put_batch(self, x, axes=("batch", "length")):
    return jax.device_put(x, mesh_lib.named_sharding(self.mesh, axes, np.shape(x)))


def make_context(mesh_shape, model: str, tmpdir: str) -> Context:
  """Same params and batch for every mesh (seeded), a fresh sharded load per mesh."""
  cfg = MODELS[model]
  mesh = mesh_lib.make_mesh(mesh_shape)
  tmpdir = os.path.join(tmpdir, model + "_" + "x".join(map(str, mesh_shape)))
  with jax.default_device(jax.devices()[0]):
    params = jax.tree.map(np.array, tfm.init_params(cfg, 0))
  rng = np.random.RandomState(0)
  # Norm weights start at 1: randomise so a mix-up between them would show.
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if leaf.ndim == 1 or "bias" in jax.tree_util.keystr(path):
      leaf[...] = rng.normal(1.0 if leaf.ndim == 1 else 0.0, 0.1, leaf.shape)
  b, t = 8, 12
  tokens = rng.randint(0, cfg.vocab_size, (b, t)).astype(np.int32)
  mask = np.ones((b, t), bool)
  mask[1, :3] = False
  mask[5, :7] = False
  positions = np.asarray(tfm.positions_from_mask(mask))
  return Context(mesh, model, cfg, params, tokens, positions, mask, tmpdir)


def _expected_spec(axes, shape, mesh):
  """Expected PartitionSpec written out independently of mesh.logical_to_spec."""
  want = {"vocab": ("tensor",), "heads": ("tensor",), "kv_heads": ("tensor",),
          "mlp": ("tensor",), "embed": ("fsdp",), "batch": ("data", "fsdp")}
  out = []
  for name, n in zip(axes, shape):
    keep = []
    for ax in want.get(name, ()):
      size = mesh.shape[ax]
      if size > 1 and n % (size * int(np.prod([mesh.shape[a] for a in keep]))) == 0:
        keep.append(ax)
    out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
  while out and out[-1] is None:
    out.pop()
  return tuple(out)


def _norm_spec(spec: P) -> tuple:
  out = list(spec)
  while out and out[-1] is None:
    out.pop()
  return tuple(out)


# ----------------------------------------------------------------------------- checks


@check
def check_load(ctx: Context) -> dict:
  """Sharded load from a multi-shard HF dir gives exactly the saved values."""
  flat_ref = dict(jax.tree_util.tree_leaves_with_path(ctx.ref_params))
  n = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(ctx.params):
    np.testing.assert_array_equal(np.asarray(leaf), flat_ref[path], err_msg=jax.tree_util.keystr(path))
    n += 1
  return {"params": n}


@check
def check_shardings(ctx: Context) -> dict:
  """Every param's sharding is what the rules say (and a few hard-coded expectations)."""
  axes = tfm.param_axes(ctx.cfg)
  seen = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(ctx.params):
    ax = axes
    for k in path:
      ax = ax[k.key]
    got = _norm_spec(leaf.sharding.spec)
    want = _expected_spec(ax, leaf.shape, ctx.mesh)
    assert leaf.sharding.mesh.shape == ctx.mesh.shape, (path, leaf.sharding.mesh)
    assert got == want, f"{jax.tree_util.keystr(path)}: spec {got} != expected {want}"
    seen[jax.tree_util.keystr(path)] = got
  # Hard-coded for the meshes the test uses, so the expectation above is itself checked.
  d, f, t = (ctx.mesh.shape[a] for a in ("data", "fsdp", "tensor"))
  cfg = ctx.cfg
  fs = "fsdp" if f > 1 else None
  ts = lambda n: "tensor" if t > 1 and n % t == 0 else None
  hard = {
      "['embed']": (ts(cfg.vocab_size), fs),
      "['layers'][0]['q']": (fs, ts(cfg.num_heads)),
      "['layers'][0]['k']": (fs, ts(cfg.num_kv_heads)),
      "['layers'][1]['o']": (ts(cfg.num_heads), None, fs),
      "['layers'][0]['gate']": (fs, ts(cfg.intermediate_size)),
      "['layers'][1]['down']": (ts(cfg.intermediate_size), fs),
      "['final_norm']": (),
  }
  if not cfg.tie_embeddings:
    hard["['lm_head']"] = (fs, ts(cfg.vocab_size))
  for k, v in hard.items():
    v = list(v)
    while v and v[-1] is None:
      v.pop()
    assert seen[k] == tuple(v), f"{k}: {seen[k]} != {tuple(v)}"
  # Bytes actually held per device: sharded params are not replicated.
  per_dev = {}
  for leaf in jax.tree.leaves(ctx.params):
    for s in leaf.addressable_shards:
      per_dev[s.device.id] = per_dev.get(s.device.id, 0) + s.data.nbytes
  return {"specs": {k: [str(x) for x in v] for k, v in seen.items() if "[1]" not in k},
          "bytes_per_device": sorted(set(per_dev.values()))}


@check
def check_save(ctx: Context) -> dict:
  """save_hf_dir from the sharded params writes the same tensors as from the host copy."""
  from r1jax.model import hf_layout
  from r1jax.model.checkpoint_io import SafetensorsDir
  out = os.path.join(ctx.tmpdir, "saved_from_mesh")
  files = save_hf_dir(ctx.params, ctx.cfg, out, max_shard_bytes=150_000)
  want = dict(hf_layout.params_to_hf(ctx.ref_params, ctx.cfg))
  with SafetensorsDir(out) as st:
    assert st.names() == set(want), sorted(st.names() ^ set(want))
    for name, w in want.items():
      np.testing.assert_array_equal(st.read(name), w, err_msg=name)
  return {"files": files}


_REF_CACHE: dict = {}


def _reference(ctx: Context, name: str, fn):
  """1-device result of `fn(params_on_one_device)`, computed once per model and process."""
  key = (ctx.model, name)
  if key not in _REF_CACHE:
    p = jax.device_put(ctx.ref_params, ctx.ref_device)
    _REF_CACHE[key] = jax.tree.map(np.asarray, fn(p))
  return _REF_CACHE[key]


def _ref_forward(ctx: Context):
  return _reference(ctx, "forward", lambda p: jax.jit(
      lambda p, t, pos, m: tfm.forward(p, ctx.cfg, t, pos, m)[0])(
          p, ctx.tokens, ctx.positions, ctx.mask))


@check
def check_forward(ctx: Context) -> dict:
  """Sharded jitted forward == 1-device forward; the logits come out batch-sharded."""
  ref = _ref_forward(ctx)
  with mesh_lib.use_mesh(ctx.mesh):
    fn = jax.jit(lambda p, t, pos, m: tfm.forward(p, ctx.cfg, t, pos, m)[0])
    out = fn(ctx.params, ctx.put_batch(ctx.tokens), ctx.put_batch(ctx.positions),
             ctx.put_batch(ctx.mask))
  err = float(np.abs(np.asarray(out) - ref)[ctx.mask].max())
  assert err <= 1e-4, f"max abs diff {err}"
  return {"max_abs_diff": err, "logits_spec": str(out.sharding.spec)}


@check
def check_expert_sharded(ctx: Context) -> dict:
  """MoE expert weights are split over the `expert` mesh axis (E / expert per device)."""
  n = ctx.mesh.shape["expert"]
  out = {}
  for i in ctx.cfg.moe_layers:
    for name in ("experts_gate", "experts_up", "experts_down", "router_bias"):
      x = ctx.params["layers"][i][name]
      spec = x.sharding.spec
      assert spec[0] == "expert" or n == 1, (name, spec)
      shard = x.sharding.shard_shape(x.shape)
      assert shard[0] == x.shape[0] // n, (name, shard, x.shape)
      out[f"{i}.{name}"] = str(spec)
  return out


def _loss(params, cfg, tokens, positions, mask):
  logits, _ = tfm.forward(params, cfg, tokens, positions, mask)
  logp = jax.nn.log_softmax(logits[:, :-1], -1)
  tgt = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
  w = (mask[:, 1:] & mask[:, :-1]).astype(jnp.float32)
  return -(tgt * w).sum() / w.sum()


@check
def check_grad_step(ctx: Context) -> dict:
  """Jitted forward+grad+SGD update on the mesh: loss/grads match 1 device, shardings kept."""
  lr = 0.1
  ref_loss, ref_g = _reference(ctx, "loss_grad", lambda p: jax.jit(
      jax.value_and_grad(_loss), static_argnums=1)(p, ctx.cfg, ctx.tokens, ctx.positions,
                                                   ctx.mask))
  shardings = jax.tree.map(lambda x: x.sharding, ctx.params)

  def step(params, tokens, positions, mask):
    loss, g = jax.value_and_grad(_loss)(params, ctx.cfg, tokens, positions, mask)
    new = jax.tree.map(lambda p, g: p - lr * g, params, g)
    return new, loss, g

  with mesh_lib.use_mesh(ctx.mesh):
    fn = jax.jit(step, out_shardings=(shardings, None, shardings), donate_argnums=0)
    params = jax.tree.map(jnp.copy, ctx.params)
    new, loss, g = fn(params, ctx.put_batch(ctx.tokens), ctx.put_batch(ctx.positions),
                      ctx.put_batch(ctx.mask))
    new2, loss2, _ = fn(new, ctx.put_batch(ctx.tokens), ctx.put_batch(ctx.positions),
                        ctx.put_batch(ctx.mask))
  loss_err = abs(float(loss) - float(ref_loss))
  assert loss_err <= 1e-5, f"loss {float(loss)} vs 1-device {float(ref_loss)}"
  gerr = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)))
  gscale = max(float(np.abs(np.asarray(b)).max()) for b in jax.tree.leaves(ref_g))
  assert gerr <= 1e-4 * max(1.0, gscale), f"grad max abs diff {gerr} (scale {gscale})"
  for a, s in zip(jax.tree.leaves(new2), jax.tree.leaves(shardings)):
    assert a.sharding.is_equivalent_to(s, a.ndim), (a.sharding, s)
  assert float(loss2) < float(loss), (float(loss), float(loss2))
  return {"loss": float(loss), "loss_after_step": float(loss2), "loss_abs_diff": loss_err,
          "grad_max_abs_diff": gerr}


def _grpo_batch(ctx: Context):
  from r1jax import rl
  b, t = ctx.tokens.shape
  g, n = 2, 4  # 2 completions of 4 tokens for each of the b prompts
  rng = np.random.RandomState(1)
  comp = rng.randint(0, ctx.cfg.vocab_size, (b * g, n)).astype(np.int32)
  cmask = np.ones((b * g, n), np.int32)
  cmask[3, 2:] = 0
  adv = np.linspace(-1.0, 2.0, b * g).astype(np.float32)  # non-zero mean: a non-zero loss
  return rl.Batch(prompt_tokens=ctx.tokens, prompt_mask=ctx.mask, completion_tokens=comp,
                    completion_mask=cmask, advantages=adv, old_logp=None, ref_logp=None)


@check
def check_grpo_step(ctx: Context) -> dict:
  """The trainer's jitted GRPO step (token-mean, micro-batched, donated) matches 1 device.

  SGD rather than AdamW: Adam's normalisation turns reduction-order noise in near-zero
  gradients into lr-sized differences, which would hide real errors in the tolerance.
  """
  import optax
  from r1jax import memory, rl, steps
  gcfg = rl.RLConfig(beta=0.0, logprob_impl="xla", loss_aggregation="token-mean")
  tx = optax.sgd(0.5)
  loss_fn = lambda p, batch: rl.grpo_loss(p, batch, gcfg, ctx.cfg)
  batch = _grpo_batch(ctx)
  # 2 micro-batches where each still splits over the data-parallel devices (with fewer
  # prompts than devices XLA reshards by full rematerialisation; the trainer warns).
  dp = mesh_lib.batch_parallel_size(ctx.mesh)
  n_micro = 2 if (batch.prompt_tokens.shape[0] // 2) % dp == 0 else 1
  train_step = steps.make_train_step(loss_fn, tx, n_micro, rl.micro_batch_weight(gcfg))

  def run(params, put):
    state = memory.init_state(params, tx)
    state, m = steps.jit_train_step(train_step, state)(state, jax.tree.map(put, batch))
    return state, m

  ref_state, ref_m = _reference(ctx, "grpo_step", lambda p: run(p, jnp.asarray))
  with mesh_lib.use_mesh(ctx.mesh):
    state, m = run(jax.tree.map(jnp.copy, ctx.params),
                   lambda x: ctx.put_batch(x, ("batch",) + (None,) * (np.ndim(x) - 1)))
  assert abs(float(ref_m["loss"])) > 1e-3, "advantages should make the loss non-zero"
  for k in ("loss", "grad_norm"):
    assert abs(float(m[k]) - float(ref_m[k])) <= 1e-5 * max(1.0, abs(float(ref_m[k]))), (
        k, float(m[k]), float(ref_m[k]))
  perr = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)))
  assert perr <= 1e-5, f"updated params differ by {perr}"
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ctx.params)):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
  return {"loss": float(m["loss"]), "param_max_abs_diff": perr, "n_micro": n_micro}


@check
def check_sample(ctx: Context) -> dict:
  """The sampler on the mesh (params as trained, batch over data axes) == 1 device, greedy."""
  from r1jax.sampling import SamplingConfig, generate
  scfg = SamplingConfig(max_new_tokens=6, temperature=0.0, num_samples=2)
  tokens, mask = ctx.tokens, ctx.mask

  ref = _reference(ctx, "sample", lambda p: generate(p, ctx.cfg, jnp.asarray(tokens),
                                                      jnp.asarray(mask), jax.random.key(0),
                                                      scfg).tokens)
  with mesh_lib.use_mesh(ctx.mesh):
    out = generate(ctx.params, ctx.cfg, ctx.put_batch(tokens), ctx.put_batch(mask),
                   jax.random.key(0), scfg)
  got = np.asarray(out.tokens)
  assert (got == np.asarray(ref)).all(), (got, ref)
  return {"tokens_spec": str(out.tokens.sharding.spec)}


@check
def check_sample_bf16(ctx: Context) -> dict:
  """bf16 decode weights and KV cache on the mesh: the sampled tokens' log-probs match 1 device
  (greedy picks may flip only on bf16-level near-ties)."""
  from r1jax.sampling import SamplingConfig, generate
  scfg = SamplingConfig(max_new_tokens=6, temperature=0.0, num_samples=2,
                        decode_dtype="bfloat16")
  tokens, mask = ctx.tokens, ctx.mask
  ref = _reference(ctx, "sample_bf16", lambda p: generate(
      p, ctx.cfg, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), scfg))
  with mesh_lib.use_mesh(ctx.mesh):
    out = generate(ctx.params, ctx.cfg, ctx.put_batch(tokens), ctx.put_batch(mask),
                   jax.random.key(0), scfg)
  agree = float(np.mean(np.asarray(out.tokens) == np.asarray(ref.tokens)))
  assert agree >= 0.9, agree
  first = np.abs(np.asarray(out.logprobs)[:, 0] - np.asarray(ref.logprobs)[:, 0]).max()
  assert first <= 0.02, first  # the first token comes from the same prompt, no flips yet
  return {"token_agreement": agree, "first_logprob_max_abs_diff": float(first)}


# ----------------------------------------------------------------------------- main


def run(checks: list[str], targets: list[tuple[tuple[int, ...], str]]) -> int:
  failed = 0
  with tempfile.TemporaryDirectory() as tmp:
    for mesh_shape, model in targets:
      ctx = make_context(mesh_shape, model, tmp)
      for name in checks:
        t0 = time.perf_counter()
        res: dict[str, Any] = {"check": name, "mesh": list(mesh_shape), "model": model}
        try:
          res.update(ok=True, details=CHECKS[name](ctx))
        except Exception as e:  # report every check, fail at the end
          failed += 1
          res.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        res["seconds"] = round(time.perf_counter() - t0, 2)
        print("RESULT " + json.dumps(res, default=str), flush=True)
  return 1 if failed else 0


def parse_targets(spec: str, default_model: str = "even") -> list[tuple[tuple[int, ...], str]]:
  """'2,2,2' or '8,1,1/1,2,4@odd' -> [((2, 2, 2), 'even'), ...]."""
  out = []
  for item in spec.split("/"):
    shape, _, model = item.partition("@")
    model = model or default_model
    if model not in MODELS:
      raise SystemExit(f"unknown model {model!r}; known: {list(MODELS)}")
    out.append((tuple(int(x) for x in shape.replace("x", ",").split(",")), model))
  return out


def main(argv: list[str]) -> int:
  args = [a for a in argv[1:] if not a.startswith("--")]
  if len(args) < 2:
    print(__doc__)
    print("checks:", ", ".join(CHECKS), "| models:", ", ".join(MODELS))
    return 2
  checks = list(CHECKS) if args[0] == "all" else args[0].split(",")
  unknown = [c for c in checks if c not in CHECKS]
  if unknown:
    print(f"unknown checks {unknown}; known: {list(CHECKS)}")
    return 2
  targets = parse_targets(args[1], args[2] if len(args) > 2 else "even")
  print(f"devices={jax.device_count()} targets={targets}", flush=True)
  return run(checks, targets)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
