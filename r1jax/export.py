"""Export trained params from an Orbax checkpoint to a HF transformers directory.

    python -m r1jax.export --workdir=DIR --out=OUT [--step=N] [--tokenizer_dir=HF_DIR]
        [--dtype=bfloat16] [--max_shard_bytes=2e9]

Reads DIR/model_config.json (`dataclasses.asdict(ModelConfig)`, written by the trainer) and
restores the params (of the trainers' TrainState item "state", or an item "params") of the
Orbax CheckpointManager under DIR/checkpoints (latest step unless
--step), sharded FSDP-style over the local devices, then streams it to OUT as config.json +
safetensors. Tokenizer / generation-config files are copied from --tokenizer_dir (typically the
HF directory the run started from), together with its bos/eos/pad token ids.
"""

from __future__ import annotations

import os
from typing import Any

from absl import flags, logging

from r1jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so that importing this module defines no flags."""
  flags.DEFINE_string("workdir", None, "Training workdir (has checkpoints/ and model_config.json).")
  flags.DEFINE_string("out", None, "Output HF directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step to export (default: latest).")
  flags.DEFINE_string("tokenizer_dir", None, "Directory to copy tokenizer/generation files from.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Saved dtype.")
  flags.DEFINE_float("max_shard_bytes", 2e9, "Maximum bytes per safetensors shard.")
  flags.DEFINE_string("model_config", None, "model_config.json (default: WORKDIR/model_config.json).")

def restore_params(workdir: str, cfg, step: int | None = None, mesh=None) -> tuple[int, Any]:
  """(step, params) from item "params" of the CheckpointManager in WORKDIR/checkpoints."""
  import jax
  import orbax.checkpoint as ocp

  from r1jax import mesh as mesh_lib
  from r1jax.model.transformer import param_axes, param_shapes

  ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"no checkpoints directory at {ckpt_dir}")
  mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    steps = mngr.all_steps()
    if not steps:
      raise FileNotFoundError(f"no finalised checkpoint steps in {ckpt_dir}")
    step = mngr.latest_step() if step is None else step
    if step not in steps:
      raise ValueError(f"step {step} not in {ckpt_dir}; available: {sorted(steps)}")
    if mesh is None:  # FSDP over every local device keeps per-device memory small
      mesh = mesh_lib.make_mesh((1, -1, 1))
    shardings = mesh_lib.tree_shardings(mesh, param_axes(cfg), param_shapes(cfg))
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            param_shapes(cfg), shardings)
    if os.path.isdir(os.path.join(ckpt_dir, str(step), "state")):
      # A trainer's checkpoint (r1jax.train / r1jax.sft): the params of its TrainState.
      from r1jax.checkpoint import restore_params as restore_state_params
      return step, restore_state_params(os.path.join(ckpt_dir, str(step)), abstract)[0]
    restored = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract)))
    return step, restored["params"]
  finally:
    mngr.close()


def export(workdir: str, out: str, *, step: int | None = None, tokenizer_dir: str | None = None,
           dtype: str = "float32", max_shard_bytes: float = 2e9,
           model_config: str | None = None) -> list[str]:
  from r1jax.model.checkpoint_io import load_model_config, save_hf_dir

  cfg_path = model_config or os.path.join(workdir, "model_config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{cfg_path} not found (the trainer writes dataclasses.asdict(ModelConfig) there)")
  cfg = load_model_config(cfg_path)
  step, params = restore_params(workdir, cfg, step)
  logging.info("restored step %d from %s", step, workdir)
  files = save_hf_dir(params, cfg, out, tokenizer_dir=tokenizer_dir, dtype=dtype,
                      max_shard_bytes=max_shard_bytes)
  logging.info("wrote %s: %s", out, files)
  return files


def check(workdir: str, step: int | None = None, tokenizer_dir: str | None = None,
          model_config: str | None = None) -> None:
  """The inputs exist: a run directory with model_config.json and checkpoints/ (holding
  `step`), the tokenizer directory."""
  cli.check_path(workdir, "--workdir", is_dir=True, what="a training run directory")
  cfg_path = model_config or os.path.join(workdir, "model_config.json")
  if not os.path.exists(cfg_path):
    raise cli.ConfigError("--model_config" if model_config else "--workdir", model_config or workdir,
                          f"{cfg_path} not found (the trainer writes it)")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  have = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) \
      if os.path.isdir(ckpt_dir) else []
  if not have:
    raise cli.ConfigError("--workdir", workdir, f"no checkpoint steps in {ckpt_dir}")
  if step is not None and step not in have:
    raise cli.ConfigError("--step", step, f"no step {step} in {ckpt_dir}; available: {have}")
  if tokenizer_dir:
    cli.check_path(tokenizer_dir, "--tokenizer_dir", is_dir=True)


def main() -> None:
  files = export(FLAGS.workdir, FLAGS.out, step=FLAGS.step, tokenizer_dir=FLAGS.tokenizer_dir,
                 dtype=FLAGS.dtype, max_shard_bytes=FLAGS.max_shard_bytes,
                 model_config=FLAGS.model_config)
  print(f"exported {len(files)} files to {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, check=lambda: check(FLAGS.workdir, FLAGS.step, FLAGS.tokenizer_dir,
                                    FLAGS.model_config), required=("workdir", "out"))
