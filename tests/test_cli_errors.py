"""Bad input at the command line: every entry point ends with exit code 2 and one line
`error: <field>=<value>: <why>` on stderr, before it creates or writes anything; the
traceback only with --verbose or R1JAX_VERBOSE=1.

The cases run as real subprocesses (`python -m r1jax.X`), started together by one
module fixture (each is mostly interpreter and JAX start-up), and checked one test each.
"""

import os
import subprocess
import sys
import time

import pytest

from r1jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING = "/nonexistent/r1jax-test/data.jsonl"

# A config file whose data source names a file that does not exist (no flag can swap a
# source's kind: its keys differ per kind).
_MISSING_SOURCE = """from configs import {module}


def get_config():
  c = {module}.get_config("tiny")
  c.data.source = dict(kind="jsonl", path={path!r})
  return c
"""

# Real subprocesses, one or two per entry point: (case, module, args, text the error line
# must hold). OUT in args is the case's own run directory (or output), which must not
# exist afterwards; CFG is the fixture's folder of config files.
CASES = [
    ("train_unknown_key", "r1jax.train",
     ["--config=configs/r1_zero.py:tiny", "--workdir=OUT", "--config.rl.epsilonx=1"],
     "rl.epsilonx='1': unknown config key; did you mean rl.epsilon?"),
    ("train_policy_loss", "r1jax.train",
     ["--config=configs/r1_zero.py:tiny", "--workdir=OUT", "--config.rl.policy_loss=nonsense"],
     "rl.policy_loss='nonsense': unknown; choose one of"),
    ("train_unknown_algorithm", "r1jax.train",
     ["--config=configs/r1_zero.py:tiny", "--workdir=OUT", "--config.rl.algorithm=gae"],
     "error: rl.algorithm='gae': unknown; choose one of ('grpo', 'rloo', 'reinforce_pp', 'ppo')"),
    ("train_ignored_knob", "r1jax.train",
     ["--config=configs/r1_zero.py:tiny", "--workdir=OUT", "--config.rl.algorithm=rloo",
      "--config.rl.advantage_norm=std"],
     "error: rl.advantage_norm='std': ignored unless rl.algorithm='grpo'; leave it unset"),
    ("train_old_key", "r1jax.train",
     ["--config=configs/r1_zero.py:tiny", "--workdir=OUT", "--config.grpo.epsilon=0.3"],
     "error: grpo.epsilon: moved to rl.epsilon"),
    ("aot_old_key", "r1jax.aot",
     ["--config=configs/r1_zero.py:tiny", "--json=OUT/aot.json", "--config.grpo.mu=2"],
     "error: grpo.mu: moved to train.mu"),
    ("pipeline_old_key", "r1jax.pipeline",
     ["--config=configs/r1.py:tiny", "--workdir=OUT",
      "--config.stages.reasoning_rl.config.ppo.kl_in=loss"],
     "error: stages.reasoning_rl.config.ppo.kl_in: moved to stages.reasoning_rl.config.rl.kl_in"),
    ("train_missing_data", "r1jax.train", ["--config=CFG/r1_zero_missing.py", "--workdir=OUT"],
     f"error: data.source.path='{MISSING}': does not exist"),
    ("train_router_replay_dense", "r1jax.train",
     ["--config=configs/r1_zero.py:tiny", "--workdir=OUT", "--config.rl.router_replay=True"],
     "error: rl.router_replay=True: needs a mixture-of-experts model (this one has "
     "num_experts=0)"),
    ("train_router_aux_dense", "r1jax.train",
     ["--config=configs/r1_zero.py:tiny", "--workdir=OUT", "--config.rl.router_aux_coef=0.01"],
     "error: rl.router_aux_coef=0.01: needs a mixture-of-experts model"),
    ("train_attention_chunk", "r1jax.train",
     ["--config=configs/r1_zero.py:tiny", "--workdir=OUT", "--config.model.attention_chunk=-1"],
     "error: model.attention_chunk=-1: ModelConfig.attention_chunk must be an int >= 0"),
    ("train_lora_ppo", "r1jax.train",
     ["--config=configs/r1_zero.py:tiny", "--workdir=OUT", "--config.rl.algorithm=ppo",
      "--config.lora.rank=4"],
     "error: lora.rank > 0 with rl.algorithm='ppo': the PPO critic starts from full weights"),
    ("sft_unknown_divergence", "r1jax.sft",
     ["--config=configs/sft.py:tiny", "--workdir=OUT", "--config.distill.divergence=tv"],
     "error: distill.divergence='tv': unknown; choose one of ('forward_kl', 'reverse_kl', "
     "'jsd')"),
    ("sft_ignored_beta", "r1jax.sft",
     ["--config=configs/sft.py:tiny", "--workdir=OUT", "--config.distill.beta=0.5"],
     "error: distill.beta=0.5: ignored unless distill.divergence='jsd'; leave it unset"),
    ("sft_missing_data", "r1jax.sft", ["--config=CFG/sft_missing.py", "--workdir=OUT"],
     f"data.source.path='{MISSING}': does not exist"),
    ("rm_missing_data", "r1jax.reward_model",
     ["--config=configs/reward_model.py:tiny", "--workdir=OUT",
      f"--config.data.train.path={MISSING}"], f"data.train.path='{MISSING}': does not exist"),
    ("rm_ignored_knob", "r1jax.reward_model",
     ["--config=configs/reward_model.py:tiny", "--workdir=OUT", "--config.objective=orm",
      "--config.data.train.path=pyproject.toml", "--config.loss.center_coef=0.1"],
     "error: loss.center_coef=0.1: ignored unless objective='bt'"),
    ("rm_unknown_objective", "r1jax.reward_model",
     ["--config=configs/reward_model.py:tiny", "--workdir=OUT", "--config.objective=nonsense",
      "--config.data.train.path=pyproject.toml"],
     "error: objective='nonsense': choose one of ('bt', 'orm')"),
    ("rs_missing_data", "r1jax.rejection_sample",
     ["--config=CFG/rejection_sample_missing.py", "--out=OUT/sft.jsonl"],
     f"error: data.source.path='{MISSING}': does not exist"),
    ("rs_unknown_reward", "r1jax.rejection_sample",
     ["--config=configs/rejection_sample.py:tiny", "--out=OUT/sft.jsonl",
      "--config.rewards.correct=nonsense"], "error: rewards.correct='nonsense': is not a reward"),
    ("eval_old_key", "r1jax.evaluate",
     ["--config=configs/r1_zero.py:tiny", "--output_dir=OUT", "--config.grpo.beta=0.1"],
     "error: grpo.beta: moved to rl.beta"),
    ("rs_missing_checkpoint", "r1jax.rejection_sample",
     ["--config=configs/rejection_sample.py:tiny", "--out=OUT/sft.jsonl",
      "--checkpoint=/nonexistent/run"], "--checkpoint='/nonexistent/run': no checkpoint there"),
    ("eval_missing_checkpoint", "r1jax.evaluate",
     ["--config=configs/r1_zero.py:tiny", "--output_dir=OUT", "--checkpoint=/nonexistent/run"],
     "--checkpoint='/nonexistent/run': no checkpoint there"),
    ("export_missing_run", "r1jax.export", ["--workdir=/nonexistent/run", "--out=OUT"],
     "--workdir='/nonexistent/run': does not exist"),
    ("pipeline_unknown_stage", "r1jax.pipeline",
     ["--config=configs/r1.py:tiny", "--workdir=OUT", "--stages=sft,nonsense"],
     "--stages='sft,nonsense': names 'nonsense'; the config has"),
    ("pipeline_config_missing", "r1jax.pipeline",
     ["--config=configs/nonexistent.py", "--workdir=OUT"],
     "--config='configs/nonexistent.py': [Errno 2] No such file or directory"),
    ("aot_unknown_stage", "r1jax.aot",
     ["--config=configs/r1.py:tiny", "--json=OUT/aot.json", "--stage=nonsense"],
     "--stage='nonsense': names 'nonsense'"),
]
# Bad input with the traceback asked for, by the environment and by the flag.
VERBOSE = [
    ("verbose_env", "r1jax.pipeline",
     ["--config=configs/r1.py:tiny", "--workdir=OUT", "--stages=nonsense"], {cli.VERBOSE_ENV: "1"}),
    ("verbose_flag", "r1jax.pipeline",
     ["--config=configs/r1.py:tiny", "--workdir=OUT", "--stages=nonsense", "--verbose"], {}),
]


def _start(case, module, args, tmp, env_extra):
  out = os.path.join(tmp, case)
  args = [a.replace("OUT", out).replace("CFG", tmp) for a in args]
  env = {k: v for k, v in os.environ.items() if k != cli.VERBOSE_ENV}
  env.update(JAX_PLATFORMS="cpu", **env_extra)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
  proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return out, proc


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """{case: (rc, stdout, stderr, out path)} of every case, a few running at a time."""
  tmp = str(tmp_path_factory.mktemp("cli"))
  for module in ("sft", "r1_zero", "rejection_sample"):
    with open(os.path.join(tmp, f"{module}_missing.py"), "w") as f:
      f.write(_MISSING_SOURCE.format(module=module, path=MISSING))
  todo = [(c, m, a, {}) for c, m, a, _ in CASES] + VERBOSE
  running, done = {}, {}
  while todo or running:
    while todo and len(running) < 4:
      case, module, args, env = todo.pop(0)
      running[case] = _start(case, module, args, tmp, env)
    for case, (out, proc) in list(running.items()):
      if proc.poll() is not None:
        stdout, stderr = proc.communicate()
        done[case] = (proc.returncode, stdout, stderr, out)
        del running[case]
    time.sleep(0.05)
  return done


@pytest.mark.parametrize("case,module,args,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(results, case, module, args, expect):
  rc, _, stderr, out = results[case]
  lines = stderr.strip().splitlines()
  assert rc == cli.EXIT_BAD_INPUT and len(lines) == 1, (rc, stderr[-3000:])
  assert lines[0].startswith("error: ") and expect in lines[0], lines[0]
  assert not os.path.exists(out), f"{module} created {out}"


@pytest.mark.parametrize("case", [v[0] for v in VERBOSE])
def test_verbose_shows_the_traceback(results, case):
  rc, _, stderr, out = results[case]
  assert rc not in (0, cli.EXIT_BAD_INPUT), stderr[-3000:]
  assert "Traceback (most recent call last)" in stderr and "ConfigError" in stderr
  assert not os.path.exists(out)


@pytest.mark.parametrize("msg,line", [
    ("eval.num_samples=0 must be >= 1", "error: eval.num_samples=0: must be >= 1"),
    ("data.template='fancy'; choose one of ('a',)", "error: data.template='fancy': choose one of ('a',)"),
    ("mesh.shape=(1, 1, 1) does not divide 4", "error: mesh.shape=(1, 1, 1): does not divide 4"),
    ("train.num_steps and train.num_epochs are both 0:\n nothing",
     "error: train.num_steps and train.num_epochs are both 0: nothing"),
])
def test_existing_messages_become_one_field_line(msg, line):
  assert cli.error_line(ValueError(msg)) == line
  assert cli.error_line(cli.ConfigError("a.b", "x", "why")) == "error: a.b='x': why"


# In process: each entry point's own check on more bad values (the CLI prints exactly
# `cli.error_line` of what it raises). (case, config, override, check, expected line).
def _cfg(name, arg="tiny"):
  import importlib
  return importlib.import_module(f"configs.{name}").get_config(arg)


def _set(c, dotted, value):
  *head, last = dotted.split(".")
  for k in head:
    c = c[k]
  c[last] = value


def _check(entry):
  import importlib
  if entry == "aot":
    return importlib.import_module("r1jax.aot").check
  if entry == "evaluate":
    return lambda c, **flags: importlib.import_module("r1jax.evaluate").validate(c, None, **flags)
  return importlib.import_module(f"r1jax.{entry}").validate


TABLE = [
    ("train", "r1_zero", "rl.epsilon", 2.0, "error: rl.epsilon=2.0: must be in [0, 1)"),
    ("train", "r1_zero", "rl.advantage_norm", "z", "error: rl.advantage_norm='z': unknown"),
    ("train", "r1_zero", "rl.algorithm", "reinforce_pp_baseline",
     "error: rl.algorithm='reinforce_pp_baseline': unknown; choose one of"),
    ("train", "r1_zero", "rl.dual_clip_c", 2.0,
     "error: rl.dual_clip_c=2.0: ignored unless rl.policy_loss='dual_clip'; leave it unset"),
    ("train", "r1_zero", "rl.tis_cap", 2.0,
     "error: rl.tis_cap=2.0: ignored unless rl.tis='token' or 'sequence'; leave it unset"),
    ("train", "r1_zero", "rl.kl_in", "reward",
     "error: rl.kl_in='reward': ignored unless rl.algorithm='ppo'; leave it unset"),
    ("train", "r1_zero", "ppo.gamma", 0.9,
     "error: ppo.gamma=0.9: ignored unless rl.algorithm='ppo' (the critic's knobs)"),
    ("train", "r1_zero", "grpo", {"beta": 0.1}, "error: grpo.beta: moved to rl.beta"),
    ("train", "r1_zero", "data.source", dict(kind="jsonl", path=MISSING),
     f"error: data.source.path='{MISSING}': does not exist"),
    ("train", "r1_zero", "model", dict(source="gguf", path=MISSING),
     f"error: model.path='{MISSING}': does not exist (a GGUF file)"),
    ("train", "r1_zero", "model", dict(source="run", path="/nonexistent/run"),
     "error: model.path='/nonexistent/run': does not exist (an r1jax run directory)"),
    ("sft", "sft", "distill.on_policy", 2.0, "error: distill.on_policy=2.0: must be in [0, 1]"),
    ("sft", "sft", "data.source", dict(kind="nonsense"), "error: data.source.kind='nonsense': unknown"),
    ("sft", "sft", "model", dict(source="hf_dir", path="/nonexistent/model"),
     "error: model.path='/nonexistent/model': does not exist (a HF model directory)"),
    ("reward_model", "reward_model", "objective", "nonsense", "error: objective='nonsense': choose"),
    ("rejection_sample", "rejection_sample", "batch_prompts", 0,
     "error: batch_prompts=0: must be >= 1"),
    ("evaluate", "r1_zero", "--num_samples", 0, "error: eval.num_samples=0: must be >= 1"),
    ("pipeline", "r1", "stages.reasoning_rl.config.rl.policy_loss", "nonsense",
     "error: stages.reasoning_rl.config.rl.policy_loss='nonsense': unknown"),
    ("pipeline", "r1", "stages.reward_model.config.data.batch_size", 0,
     "error: stage 'reward_model': data.batch_size=0 must be >= 1"),
    ("aot", "r1_zero", "rl.beta", -1.0, "error: rl.beta=-1.0: must be >= 0"),
    ("aot", "r1_zero", "ppo.lam", 0.9, "error: ppo.lam=0.9: ignored unless rl.algorithm='ppo'"),
    ("pipeline", "r1", "stages.all_scenario_rl.config.rl.algorithm", "rloo",
     "error: stages.all_scenario_rl.config.rl.advantage_norm='batch_std': ignored unless "
     "rl.algorithm='grpo'"),
]


@pytest.mark.parametrize("entry,config,field,value,line", TABLE,
                         ids=[f"{t[0]}-{t[2]}" for t in TABLE])
def test_checks_name_the_field(tmp_path, entry, config, field, value, line):
  c = _cfg(config)
  if entry == "reward_model":  # a data file that exists, so the objective is what fails
    (tmp_path / "pairs.jsonl").write_text('{"chosen": "a", "rejected": "b"}\n')
    c.data.train.path = str(tmp_path / "pairs.jsonl")
  flag = {field[2:]: value} if field.startswith("--") else {}  # evaluate's flags
  if not flag:
    _set(c, field, value)
  with pytest.raises(cli.BAD_INPUT) as e:
    _check(entry)(c, **flag)
  assert cli.error_line(e.value).startswith(line), cli.error_line(e.value)


def test_flag_errors_name_the_flag_or_key():
  from absl import flags
  argv = ["prog", "--config=configs/r1_zero.py:tiny"]
  for e, line in [
      (flags.IllegalFlagValueError("flag --config.rl.epsilon=abc: could not convert string "
                                   "to float: 'abc'"),
       "error: rl.epsilon='abc': could not convert string to float: 'abc'"),
      (flags.IllegalFlagValueError("flag --config=configs/x.py:bogus: Error whilst parsing "
                                   "config file:\n\nTraceback (most recent call last):\n  File"
                                   "\nValueError: unknown config argument 'bogus'\n"),
       "error: --config='configs/x.py:bogus': unknown config argument 'bogus'"),
      (flags.UnrecognizedFlagError("epochs", "--epochs=3"),
       "error: --epochs='3': unknown command-line flag"),
  ]:
    assert cli.error_line(cli.flag_error(e, argv)) == line


def test_unknown_key_names_the_override():
  # ml_collections' error for --config.rlx.beta=1: the unknown key and its suggestion.
  e = AttributeError(str(KeyError("'rlx'\nDid you mean \"rl\" instead of \"rlx\"?")))
  line = cli.error_line(cli.flag_error(e, ["prog", "--config.rlx.beta=1"]))
  assert line == "error: rlx.beta='1': unknown config key rlx; did you mean rl?"


def test_old_keys_name_their_new_place():
  for path, line in [("grpo.epsilon", "error: grpo.epsilon: moved to rl.epsilon"),
                     ("grpo.prompts_per_step", "error: grpo.prompts_per_step: moved to "
                      "train.prompts_per_step"),
                     ("ppo.kl_in", "error: ppo.kl_in: moved to rl.kl_in")]:
    e = AttributeError(str(KeyError(f"'{path.split('.')[0]}'")))
    assert cli.error_line(cli.flag_error(e, ["prog", f"--config.{path}=1"])) == line
