"""The mental task (free-form chat arithmetic) and the last-number reward."""

import pytest

from manyminds.rl.free_form import final_number, last_number_reward
from manyminds.tasks import load_task, split_of, task_knobs
from manyminds.tasks.mental import mental_rows


@pytest.mark.parametrize("text,expected", [
    ("7 + 5 equals 12.", "12"),
    ("12 - 12 = 0", "0"),
    ("The answer is 1,234.", "1234"),
    ("1,000.0 apples", "1000"),
    ("x = -4", "-4"),
    ("it is -4", "-4"),
    ("9 - 5", "5"),      # a binary minus is not a sign
    ("(3)-4", "4"),
    ("3,4", "4"),        # not a thousands group: two numbers
    ("12.5", "12.5"),
    ("I think 3, no wait, 4", "4"),
    ("no digits", None),
    ("", None),
])
def test_final_number(text, expected):
    assert final_number(text) == expected


def test_last_number_reward_strings_and_conversations():
    completions = ["26", [{"role": "assistant", "content": "11 + 15 = 26"}], "The answer is 25.", "none",
                   [{"role": "assistant", "content": [{"type": "text", "text": "It is 26.0"}]}]]
    assert last_number_reward([None] * 5, completions, answer=["26"] * 5) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert last_number_reward.requires_answer is True


def test_last_number_reward_needs_answers():
    with pytest.raises(ValueError, match="answer"):
        last_number_reward(["q"], ["1"])
    with pytest.raises(ValueError, match="answers"):
        last_number_reward(["q", "q"], ["1", "2"], answer=["1"])


def test_mental_task_is_conversational_split_and_correct():
    train = load_task("mental", split="train", n=200)
    test = load_task("mental", split="test", n=100)
    assert train.column_names == ["prompt", "answer"]
    row = test[0]
    assert row["prompt"][0]["role"] == "user" and len(row["prompt"]) == 1
    questions = {r["prompt"][0]["content"] for r in train} | {r["prompt"][0]["content"] for r in test}
    assert len(questions) == 300  # distinct, and no problem in both splits
    for r, split in [(r, "train") for r in train] + [(r, "test") for r in test]:
        q = r["prompt"][0]["content"]
        expression = q.removeprefix("What is ").split("?")[0]
        assert split_of(expression) == split
        a, op, b = expression.split(" ")
        assert int(r["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
        # the reward accepts the gold answer written as the model writes it
        assert last_number_reward([r["prompt"]], [f"{expression} = {r['answer']}"], answer=[r["answer"]]) == [1.0]
    assert load_task("mental", split="test", n=100)["prompt"] == test["prompt"]  # deterministic


def test_mental_knobs():
    assert set(task_knobs("mental")) == {"max_operand", "operators", "nonnegative", "instruction"}
    rows = mental_rows("train", 20, 0, max_operand=9, operators="*", instruction="")
    assert all("×" in r["prompt"][0]["content"] and r["prompt"][0]["content"].endswith("?") for r in rows)
    with pytest.raises(ValueError, match="only"):
        load_task("mental", split="test", n=100, max_operand=5)  # the space is too small
    with pytest.raises(ValueError, match="operators"):
        load_task("mental", operators="/")
