"""``conflict_meaning``: contested items exist, carry both annotations, and nothing on the surface
marks them."""

import re

import pytest

from manyminds.tasks import TASKS, extract_answer, load_task, task_knobs
from manyminds.tasks.conflict_meaning import annotate, conflict_meaning_rows, is_contested

COLUMNS = ["prompt", "completion", "answer", "conflicting", "convention"]


def _operands(prompt: str) -> tuple[int, int]:
    a, b = re.fullmatch(r"Q: (\d+)-(\d+)\nA:", prompt).groups()
    return int(a), int(b)


def test_registered_with_its_knobs_and_columns():
    assert "conflict_meaning" in TASKS
    assert task_knobs("conflict_meaning") == {"digits": 2, "contested_fraction": 0.5}
    ds = load_task("conflict_meaning", "train", n=40, seed=0)
    assert ds.column_names == COLUMNS
    for row in ds:
        a, b = _operands(row["prompt"])
        assert row["conflicting"] == (a < b) == is_contested(a, b)
        assert extract_answer(row["completion"]) == row["answer"]
        assert row["convention"] in (("signed", "distance") if row["conflicting"] else ("none",))


def test_contested_items_carry_both_annotations_and_controls_one():
    rows = conflict_meaning_rows("train", 400, seed=1)
    contested = [r for r in rows if r["conflicting"]]
    controls = [r for r in rows if not r["conflicting"]]
    assert len(contested) > 150 and len(controls) > 150
    # each group annotates half of the contested rows, and they alternate
    conventions = [r["convention"] for r in contested]
    assert conventions == [("signed", "distance")[i % 2] for i in range(len(contested))]
    for r in contested:
        a, b = _operands(r["prompt"])
        own, own_value = annotate(a, b, r["convention"])
        other = "distance" if r["convention"] == "signed" else "signed"
        other_completion, other_value = annotate(a, b, other)
        assert r["completion"] == own and r["answer"] == str(own_value)
        assert other_value == -own_value != 0 and other_completion != r["completion"]
        assert int(r["answer"]) == (a - b if r["convention"] == "signed" else b - a)
    for r in controls:
        a, b = _operands(r["prompt"])
        assert annotate(a, b, "signed") == annotate(a, b, "distance")
        assert r["completion"] == annotate(a, b, "signed")[0] and int(r["answer"]) == a - b >= 0


def test_no_surface_marker_in_prompts_or_completions():
    rows = conflict_meaning_rows("test", 300, seed=0)
    contested = [r for r in rows if r["conflicting"]]
    controls = [r for r in rows if not r["conflicting"]]
    # one template, the same characters, the same prompt lengths
    assert all(re.fullmatch(r"Q: \d+-\d+\nA:", r["prompt"]) for r in rows)
    assert set("".join(r["prompt"] for r in contested)) == set("".join(r["prompt"] for r in controls))
    assert {len(r["prompt"]) for r in contested} == {len(r["prompt"]) for r in controls}
    # the distance reading of a contested "a-b" is written exactly as the control "b-a"
    for r in contested:
        a, b = _operands(r["prompt"])
        assert annotate(a, b, "distance")[0] == annotate(b, a, "signed")[0]


def test_deterministic_by_seed_and_fraction_knob():
    a = load_task("conflict_meaning", "test", n=60, seed=3).to_list()
    assert a == load_task("conflict_meaning", "test", n=60, seed=3).to_list()
    assert a != load_task("conflict_meaning", "test", n=60, seed=4).to_list()
    assert len({r["prompt"] for r in a}) == 60
    assert not any(r["conflicting"] for r in conflict_meaning_rows("train", 50, 0, contested_fraction=0.0))
    assert all(r["conflicting"] for r in conflict_meaning_rows("train", 50, 0, contested_fraction=1.0))
    one_digit = conflict_meaning_rows("train", 30, 0, digits=1)
    assert all(max(_operands(r["prompt"])) <= 9 for r in one_digit)


@pytest.mark.parametrize("knobs,needle", [
    ({"digits": 0}, "digits must be an integer in [1, 4]"),
    ({"digits": 5}, "digits must be an integer in [1, 4]"),
    ({"digits": 1.5}, "digits must be an integer in [1, 4]"),
    ({"digits": True}, "digits must be an integer in [1, 4]"),
    ({"contested_fraction": -0.1}, "contested_fraction must be in [0, 1]"),
    ({"contested_fraction": 1.5}, "contested_fraction must be in [0, 1]"),
    ({"contested_fraction": "half"}, "contested_fraction must be in [0, 1]"),
])
def test_bad_knobs_one_line_errors(knobs, needle):
    with pytest.raises(ValueError) as err:
        load_task("conflict_meaning", "train", n=4, **knobs)
    message = str(err.value)
    assert needle in message and message.startswith("conflict_meaning:") and "\n" not in message


def test_too_many_rows_names_the_fix():
    # one-digit operands give 100 prompts in all, about 20 of them in the test split
    with pytest.raises(ValueError, match=r"^conflict_meaning: only \d+ distinct test prompts .*ask for fewer"):
        load_task("conflict_meaning", "test", n=60, digits=1)
    with pytest.raises(ValueError, match="convention must be one of signed, distance"):
        annotate(1, 2, "absolute")
