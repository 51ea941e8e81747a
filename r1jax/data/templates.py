"""Prompt templates: the R1-Zero template (paper Table 1), chat and cold-start renderings.

Every rendering is a plain string; tokenisation happens elsewhere. When a rendering
prefills the start of the answer (e.g. ``<think>``), `prefill_text` returns that text
so the reward layer can prepend it to the completion before checking the format;
`render_prompt(...).endswith(prefill_text(...))` always holds.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

# Verbatim from the paper (MISSION.md 1.2), as one line.
R1_ZERO_TEMPLATE = (
  "A conversation between User and Assistant. The user asks a question, and the "
  "Assistant solves it. The assistant first thinks about the reasoning process in "
  "the mind and then provides the user with the answer. The reasoning process and "
  "answer are enclosed within <think> </think> and <answer> </answer> tags, "
  "respectively, i.e., <think> reasoning process here </think> <answer> answer "
  "here </answer>. User: {prompt}. Assistant:"
)

# Instruction appended to the user turn when the model's own chat template is used.
CHAT_INSTRUCTION = (
  "First think about the reasoning process step by step, then give the final answer. "
  "Enclose the reasoning process within <think> </think> tags and the final answer "
  "within <answer> </answer> tags, i.e., <think> reasoning process here </think> "
  "<answer> answer here </answer>."
)

# The R1 cold-start readable format: |special_token|<reasoning_process>|special_token|<summary>.
COLD_START_TOKEN = "|special_token|"
COLD_START_INSTRUCTION = (
  "First write the reasoning process, then a short summary of the result. Start the "
  f"reasoning process with {COLD_START_TOKEN} and end it with {COLD_START_TOKEN}, "
  f"then write the summary, i.e., {COLD_START_TOKEN}<reasoning_process>"
  f"{COLD_START_TOKEN}<summary>."
)
COLD_START_TEMPLATE = (
  "A conversation between User and Assistant. The user asks a question, and the "
  "Assistant solves it. " + COLD_START_INSTRUCTION + " User: {prompt}. Assistant:"
)

TEMPLATES = ("r1_zero", "chat", "cold_start", "plain")

ChatTemplateFn = Callable[[list[dict]], str]


def _check_template(template: str) -> None:
  if template not in TEMPLATES:
    raise ValueError(f"unknown prompt template {template!r}; expected one of {TEMPLATES}")


def prefill_text(template: str, think_prefill: bool = True) -> str:
  """The text a rendering appends after the assistant turn starts ('' if none).

  It has no leading separator whitespace, so a completion with it prepended starts
  with the tag itself (what the format reward's `^<think>` expects).
  """
  _check_template(template)
  if not think_prefill or template == "plain":
    return ""
  if template == "cold_start":
    return COLD_START_TOKEN
  return "<think>"


def _chat(chat_template: ChatTemplateFn, user: str, system_prompt: str | None,
          demos: list[tuple[str, str]] = ()) -> str:
  messages = []
  if system_prompt is not None:
    messages.append({"role": "system", "content": system_prompt})
  for q, a in demos:
    messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
  messages.append({"role": "user", "content": user})
  return chat_template(messages)


def _demos(few_shot: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
  out = []
  for d in few_shot:
    if "question" not in d or "completion" not in d:
      raise ValueError(f"few_shot entries need 'question' and 'completion' keys, got {dict(d)!r}")
    out.append((d["question"].strip(), d["completion"].strip()))
  return out


def _sentence(question: str) -> str:
  """The paper's template adds '.' after the prompt: drop one the question already has."""
  return question[:-1] if question.endswith(".") else question


def render_prompt(
  question: str,
  template: str = "r1_zero",
  *,
  chat_template: ChatTemplateFn | None = None,
  system_prompt: str | None = None,
  think_prefill: bool = True,
  few_shot: Sequence[Mapping[str, str]] = (),
) -> str:
  """Renders `question` as a prompt string.

  Args:
    question: the problem text.
    template: "r1_zero" (the paper's template, then " <think>" if `think_prefill`),
      "chat" (the model's chat template on a user turn holding the question and an
      instruction to use <think>/<answer> tags; then "<think>" if `think_prefill`),
      "cold_start" (the R1 readable format instruction; the chat template when
      `chat_template` is given, else a User/Assistant text; then the special token if
      `think_prefill`) or "plain" (the question only).
    chat_template: messages -> text, applying the model's chat template with
      add_generation_prompt=True. Required by "chat".
    system_prompt: optional system turn; only for chat-template renderings.
    think_prefill: prefill the opening reasoning tag (see `prefill_text`).
    few_shot: demonstrations ({"question", "completion"}) shown before the question: as
      earlier User/Assistant exchanges in the template's own words, or as earlier chat
      turns. Small base models rarely produce the tags unprompted; one demonstration
      gives GRPO non-zero rewards to start from.
  """
  _check_template(template)
  question = question.strip()
  uses_chat = template == "chat" or (template == "cold_start" and chat_template is not None)
  if system_prompt is not None and not uses_chat:
    raise ValueError(
      f"system_prompt needs a chat-template rendering; template {template!r} has no system turn"
    )
  prefill = prefill_text(template, think_prefill)
  if template == "plain":
    return question
  demos = _demos(few_shot)
  if template == "r1_zero":
    shots = "".join(f"{_sentence(q)}. Assistant: {a}\nUser: " for q, a in demos)
    text = R1_ZERO_TEMPLATE.format(prompt=shots + _sentence(question))
    return f"{text} {prefill}" if prefill else text
  if template == "chat":
    if chat_template is None:
      raise ValueError("template 'chat' needs chat_template (messages -> text)")
    demos = [(f"{q}\n\n{CHAT_INSTRUCTION}", a) for q, a in demos]
    return _chat(chat_template, f"{question}\n\n{CHAT_INSTRUCTION}", system_prompt,
                 demos) + prefill
  # cold_start
  if chat_template is not None:
    user = f"{question}\n\n{COLD_START_INSTRUCTION}"
    return _chat(chat_template, user, system_prompt) + prefill
  text = COLD_START_TEMPLATE.format(prompt=question)
  return f"{text} {prefill}" if prefill else text


def make_renderer(data_cfg: Mapping, tokenizer) -> Callable[[Mapping], str]:
  """Example -> prompt text from an experiment config's `data` section.

  The trainer and the evaluation CLI both render through this, so a checkpoint is
  evaluated on exactly the prompts it was trained with.
  """
  def chat(messages):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
  few_shot = [dict(d) for d in data_cfg.get("few_shot", ())]
  return lambda ex: render_prompt(
    ex["question"], data_cfg["template"], chat_template=chat,
    system_prompt=data_cfg.get("system_prompt") or None,
    think_prefill=data_cfg.get("think_prefill", True), few_shot=few_shot)
