"""Rejection-sampling filters on hand-made completions: kept, or dropped for the right reason."""

import numpy as np
import pytest

from r1jax import filters as F

CFG = F.FilterConfig(min_language=0.9, max_paragraph_chars=200, repetition_ngram=3,
                     max_repeat_fraction=0.3, max_per_prompt=2)
EX = {"question": "2+3?", "answer": "5"}
GOOD = "<think> Two plus three makes five. </think> <answer> 5 </answer>"


@pytest.mark.parametrize("text,kw,reason", [
    (GOOD, {}, None),
    ("|special_token| Two plus three is five. |special_token| The answer is 5.", {}, None),
    (GOOD, {"hit_limit": True}, "truncated"),
    ("<think> Two plus three makes five and then", {}, "truncated"),
    ("|special_token| Two plus three is five.", {}, "truncated"),
    (GOOD, {"correct": None}, "unverifiable"),
    (GOOD, {"correct": False}, "incorrect"),
    ("<think> Two plus three 等于五，我们得到五。答案是五 </think> <answer> 5 </answer>", {},
     "mixed_language"),
    ("<think> " + "so " * 40 + "</think> <answer> 5 </answer>", {}, "repetition"),
    ("<think> Let me compute this carefully. " + "x" * 250 +
     " </think> <answer> 5 </answer>", {}, "long_paragraph"),
    ("<think> Run it:\n```python\nprint(2 + 3)\n```\n gives five. </think> <answer> 5 </answer>",
     {}, "code_in_cot"),
    # A reasoning of bare arithmetic has no words: nothing to call mixed (a small model's
    # cold-start traces look like this; the pipeline's rejection sampler kept none of them).
    ("|special_token|13 - 92 = -79.|special_token|The answer is $\\boxed{-79}$.", {}, None),
    ("<think> 13 - 92 = -79. </think> <answer> -79 </answer>", {}, None),
    ("<think> 13 - 92 = -79, 答案是 </think> <answer> -79 </answer>", {}, "mixed_language"),
    # A code block in the summary (after the reasoning) is fine.
    ("<think> Two plus three makes five. </think> <answer> 5 </answer>\n```\n5\n```", {}, None),
])
def test_check_sample(text, kw, reason):
  assert F.check_sample(text, EX, CFG, **kw) == reason


def test_filters_switch_off():
  off = F.FilterConfig(drop_truncated=False, min_language=0, max_paragraph_chars=0,
                       drop_code_in_cot=False, max_repeat_fraction=0)
  for text in ("<think> no end", "<think> " + "word " * 60 + "</think>",
               "<think> 等于五，我们得到五 </think>", "<think>```x```</think>", "y" * 5000):
    assert F.check_sample(text, EX, off, hit_limit=True) is None


def test_language_uses_example_language():
  zh = "<think> 二加三等于五，所以答案是五。 </think> <answer> 5 </answer>"
  assert F.check_sample(zh, dict(EX, language="zh"), CFG) is None
  assert F.check_sample(zh, EX, CFG) == "mixed_language"


def test_repeat_fraction_by_hand():
  # "a b c a b c": 3-grams abc, bca, cab, abc -> 1 of 4 repeats.
  assert F.repeat_fraction("a b c a b c", 3) == pytest.approx(0.25)
  assert F.repeat_fraction("a b", 3) == 0.0


def test_select_group_dedup_and_limit():
  texts = ["A  b", "A b", "c", "d", "e"]
  reasons = [None, None, "incorrect", None, None]
  assert F.select_group(texts, reasons, CFG) == [None, "duplicate", "incorrect", None,
                                                 "over_limit"]
  no_dedup = F.FilterConfig(dedup=False, max_per_prompt=0)
  assert F.select_group(texts, reasons, no_dedup) == reasons


def test_pass_rate_and_selection():
  assert F.pass_rate([True, False, True, None]) == pytest.approx(2 / 3)
  assert F.pass_rate([None, None]) is None
  rates = [0.0, 0.25, 0.5, 1.0, None, 0.75]
  np.testing.assert_array_equal(F.select_by_pass_rate(rates, 0.0, 1.0),
                                [False, True, True, False, False, True])
  np.testing.assert_array_equal(F.select_by_pass_rate(rates, 0.25, 0.8),
                                [False, False, True, False, False, True])


def test_count_reasons():
  c = F.count_reasons([None, "incorrect", None, "duplicate"])
  assert c["kept"] == 2 and c["incorrect"] == 1 and c["duplicate"] == 1 and c["truncated"] == 0


def test_bad_config_names_field():
  with pytest.raises(ValueError, match="min_language"):
    F.FilterConfig(min_language=2.0)
