"""manyminds.rewards: TRL-signature reward functions on string and conversational completions."""

from __future__ import annotations

import pytest

from manyminds.rewards import (
    answer_reward,
    check_reward_columns,
    completion_text,
    format_reward,
    get_reward,
    math_verify_reward,
    requires_answer,
)
from manyminds.tasks import load_task, verify_answer


def _conv(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


COMPLETIONS = [" 12+34=46, 46-5=41\n#### 41", " 12+34=46\n#### 40", " no answer here", "#### 1,000.0"]
ANSWERS = ["41", "41", "41", "1000"]


@pytest.mark.parametrize("wrap", [list, _conv], ids=["string", "conversational"])
def test_answer_reward(wrap):
    prompts = ["Q: x\nA:"] * len(COMPLETIONS)
    assert answer_reward(prompts, wrap(COMPLETIONS), answer=ANSWERS) == [1.0, 0.0, 0.0, 1.0]


def test_answer_reward_is_the_arith_verifier():
    ds = load_task("arith", split="test", n=20, seed=1)
    # the reference completions are right; shifting the answers makes them wrong
    assert answer_reward(ds["prompt"], ds["completion"], answer=ds["answer"]) == [1.0] * 20
    wrong = [str(int(a) + 1) for a in ds["answer"]]
    got = answer_reward(ds["prompt"], ds["completion"], answer=wrong)
    assert got == [verify_answer(c, a) for c, a in zip(ds["completion"], wrong)] == [0.0] * 20


def test_answer_reward_without_answer_column_names_the_fix():
    with pytest.raises(ValueError, match="'answer' column"):
        answer_reward(["p"], ["#### 1"])


@pytest.mark.parametrize("wrap", [list, _conv], ids=["string", "conversational"])
def test_format_reward(wrap):
    texts = [" 1+2=3\n#### 3", " 1+2=3", "#### 3\n#### 4", "####  \n", " #### 7\n"]
    assert format_reward(["p"] * 5, wrap(texts)) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_math_verify_reward_latex_equivalence():
    completions = ["so the answer is\n#### 0.5", "\\boxed{\\frac{1}{2}}", "#### 3", _conv(["#### 1/2"])[0]]
    answers = ["\\frac{1}{2}", "0.5", "\\frac{1}{2}", "0.5"]
    assert math_verify_reward(["p"] * 4, completions, answer=answers) == [1.0, 1.0, 0.0, 1.0]


def test_completion_text_typed_blocks():
    msg = [{"role": "assistant", "content": [{"type": "text", "text": "#### "}, {"type": "text", "text": "5"}]}]
    assert completion_text(msg) == "#### 5"
    with pytest.raises(TypeError):
        completion_text(5)


def test_registry_and_column_check():
    assert get_reward("answer") is answer_reward and requires_answer(answer_reward)
    assert not requires_answer(format_reward) and not requires_answer(get_reward("majority_vote"))
    with pytest.raises(ValueError, match="unknown reward"):
        get_reward("nope")
    check_reward_columns([answer_reward], ["prompt", "answer"])
    check_reward_columns([answer_reward], None)  # unknown schema (iterable dataset): not checked
    with pytest.raises(ValueError, match="label_free=True"):
        check_reward_columns([format_reward, answer_reward], ["prompt"])
