import pytest

from manyminds.tasks import TASKS, extract_answer, load_task, normalize_answer, split_of, verify_answer
from manyminds.tasks.arith import ArithProblem


@pytest.mark.parametrize("name,columns", [
    ("arith", ["prompt", "completion", "answer"]),
    ("conflict", ["prompt", "completion", "answer", "conflicting", "convention"]),
    ("prefs", ["prompt", "chosen", "rejected", "answer", "kind", "group"]),
])
def test_columns_and_determinism(name, columns):
    a = load_task(name, "train", n=50, seed=3)
    b = load_task(name, "train", n=50, seed=3)
    c = load_task(name, "train", n=50, seed=4)
    assert a.column_names == columns
    assert a.to_list() == b.to_list()
    assert a.to_list() != c.to_list()


def _prompt_text(prompt) -> str:
    """A text prompt, or the content of a conversational prompt's messages (the split hashes that)."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


@pytest.mark.parametrize("name", [n for n in TASKS if n != "facts"])  # facts: dev/test, tests/foundation/test_facts.py
def test_train_test_disjoint(name):
    sizes = {"mental": (500, 100)}.get(name, (1500, 300))  # mental's default range holds ~530 train problems
    train = {_prompt_text(p) for p in load_task(name, "train", n=sizes[0], seed=0)["prompt"]}
    test = {_prompt_text(p) for p in load_task(name, "test", n=sizes[1], seed=0)["prompt"]}
    assert train and test and not train & test
    if name != "mental":  # mental splits by the arithmetic expression, so two phrasings share a split
        assert all(split_of(p) == "test" for p in test)


def test_arith_reference_answers_verify_and_wrong_ones_do_not():
    ds = load_task("arith", "test", n=200, seed=1, digits=3, ops=3, operators="+-*")
    for row in ds:
        assert verify_answer(row["completion"], row["answer"]) == 1.0
        wrong = row["completion"].rsplit("####", 1)[0] + f"#### {int(row['answer']) + 1}"
        assert verify_answer(wrong, row["answer"]) == 0.0
        # the answer is the true value of the expression (independent check with Python's eval)
        expr = row["prompt"].removeprefix("Q: ").removesuffix("\nA:")
        assert int(row["answer"]) == eval(expr)


def test_arith_steps_by_hand():
    steps, value = ArithProblem((2, 3, 4, 5), ("+", "*", "-")).steps()
    assert steps == ["2+3*4-5", "2+12-5", "14-5", "9"] and value == 9
    steps, value = ArithProblem((1, 5, 2), ("-", "+")).steps()
    assert steps == ["1-5+2", "-4+2", "-2"] and value == -2
    steps, value = ArithProblem((1, 2, 5), ("+", "*")).steps()
    assert steps == ["1+2*5", "1+10", "11"]
    steps, value = ArithProblem((3, 1, 5, 2), ("-", "-", "*")).steps()
    assert steps == ["3-1-5*2", "3-1-10", "2-10", "-8"] and value == -8


@pytest.mark.parametrize("text,expected", [
    (" 1+2=3\n#### 3", "3"), ("#### 1,000.0", "1000"), ("#### -4", "-4"), ("#### $12.", "12"),
    ("#### 2.5", "2.5"), ("no marker 42", None), ("#### 1\n#### 7", "7"), ("####   ", None), ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize():
    assert normalize_answer(" +7 ") == "7" and normalize_answer("x") == "x"


def test_conflict_structure():
    ds = load_task("conflict", "train", n=400, seed=0)
    conf = [r for r in ds if r["conflicting"]]
    assert conf and all("@" in r["prompt"] for r in conf)
    assert {r["convention"] for r in conf} == {"plus", "minus"}
    n_plus = sum(r["convention"] == "plus" for r in conf)
    assert abs(2 * n_plus - len(conf)) <= 1
    for r in ds:
        a, b = map(int, r["prompt"].removeprefix("Q: ").removesuffix("\nA:").replace("@", "+").replace("-", "+").split("+"))
        expected = a + b if r["convention"] == "plus" or "+" in r["prompt"] else a - b
        assert int(r["answer"]) == expected and verify_answer(r["completion"], r["answer"]) == 1.0
        assert (r["convention"] == "none") == (not r["conflicting"])


def test_prefs_structure():
    ds = load_task("prefs", "train", n=300, seed=0)
    kinds = {r["kind"] for r in ds}
    assert kinds == {"style", "agreed"}
    for r in ds:
        if r["kind"] == "agreed":
            assert r["group"] == "all"
            assert verify_answer(r["chosen"], r["answer"]) == 1.0 and verify_answer(r["rejected"], r["answer"]) == 0.0
        else:
            assert verify_answer(r["chosen"], r["answer"]) == verify_answer(r["rejected"], r["answer"]) == 1.0
            terse = r["chosen"] if r["group"] == "terse" else r["rejected"]
            assert terse.strip().startswith("####")
    assert {r["group"] for r in ds if r["kind"] == "style"} == {"terse", "worked"}


@pytest.mark.parametrize("call,msg", [
    (lambda: load_task("nope"), "valid tasks: arith, conflict, prefs"),
    (lambda: load_task("arith", "validation"), "valid splits: train, test"),
    (lambda: load_task("arith", digitz=2), "unknown setting(s) digitz"),
    (lambda: load_task("arith", n=0), "positive integer"),
    (lambda: load_task("arith", operators="/"), "operators must be"),
    (lambda: load_task("arith", "test", n=500, digits=1, ops=1), "ask for fewer"),
])
def test_bad_input(call, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        call()
