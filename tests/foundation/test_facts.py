"""The bundled ``facts`` question set, its loader, and the reader of short free-form answers."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from manyminds.rewards import short_answer_reward
from manyminds.tasks import load_task, task_knobs
from manyminds.tasks.facts import DATA, fact_split, read_facts
from manyminds.tasks.short_answer import (
    first_sentence,
    is_correct,
    normalize_text,
    reply_key,
)

GREEDY = Path(__file__).resolve().parents[2] / "docs" / "data" / "facts" / "greedy_smollm2.jsonl"


# ------------------------------------------------------------------------------------ the reader
@pytest.mark.parametrize("reply,accepted,expected", [
    ("The capital of France is Paris.", ["Paris"], True),
    ("Paris", ["Paris"], True),
    ("**Paris**", ["Paris"], True),
    ("paris, of course", ["Paris"], True),
    ("The capital of France is Lyon.", ["Paris"], False),
    ("Parisian food is famous.", ["Paris"], False),                        # whole words only
    ("The plural of 'mouse' is 'mouses'.", ["mice"], False),
    ("The plural of 'mouse' is 'mice'.", ["mice"], True),
    ("It is not Paris.", ["Paris"], False),                                # negated
    ("The capital isn't Paris, I think.", ["Paris"], False),
    ("It is not located in France.", ["France"], False),
    ("The capital of Australia is not Sydney but Canberra.", ["Canberra"], True),  # "but" lifts it
    ("The capital of Australia is Canberra, not Sydney.", ["Canberra"], True),
    ("The capital is Lyon. No wait, it is Paris.", ["Paris"], False),      # only the 1st sentence
    ("The capital is Lyon\nParis", ["Paris"], False),                      # ... of the first line
    ("\n\n  The capital of France is Paris.", ["Paris"], True),
    ("The capital of Colombia is Bogotá.", ["Bogota"], True),              # accents folded
    ("It is Washington, D.C. It has many museums.", ["Washington, D.C.", "Washington"], True),
    ("The largest ocean is the Pacific Ocean.", ["Pacific"], True),
    ("The tallest mountain is Mt. Everest.", ["Everest"], True),
    ("There are 1,000 grams in a kilogram.", ["1000"], True),
    ("There are 100 grams in a kilogram.", ["1000"], False),
    ("A kilogram is 10000 grams.", ["1000"], False),
    ("The chemical formula of water is H₂O.", ["H2O"], True),
    ("The freezing point of water is -18.0°C.", ["0", "zero"], False),   # "18.0" is one number
    ("Water freezes at 0.0 degrees Celsius.", ["0", "zero"], True),
    ("It is -32 degrees.", ["32"], False),                               # the sign counts
    ("The three laws of motion are Newton's laws.", ["Isaac Newton", "Newton"], True),
    ("The opposite of 'hot' is 'cold'.", ["cold"], True),
    ("The novel was written by J. K. Rowling in 1997.", ["Rowling"], True),
    ("The symbol is Hg. Mercury is a metal.", ["Hg"], True),
    ("The Web was invented by Tim Berners-", ["Tim Berners-Lee", "Berners-Lee"], False),
    ("", ["Paris"], False),
    (None, ["Paris"], False),
])
def test_is_correct_on_hand_written_replies(reply, accepted, expected):
    assert is_correct(reply, accepted) is expected


def test_reader_refuses_a_bare_string_of_answers():
    with pytest.raises(TypeError, match="list of accepted answers"):
        is_correct("Paris", "Paris")


@pytest.mark.parametrize("text,expected", [
    ("The Pacific Ocean!", "pacific ocean"),
    ("An apple, a day", "apple day"),
    ("Don't PANIC", "dont panic"),
    ("Bogotá, Reykjavík", "bogota reykjavik"),
    ("1,000,000 and 3,60", "1000000 and 3 60"),
    ("Berners-Lee", "berners lee"),
    ("-18.0°C, 2.50 and K-30", "-18 c 2.5 and k 30"),
    ("Newton's laws, it's", "newton laws it"),
    ("U.S.A.", "u s"),            # a lone "a" reads as an article, on both sides alike
])
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("One. Two.", "One."),
    ("Is it? Yes.", "Is it?"),
    ("Wow! Paris.", "Wow!"),
    ('He said "cold." Then left.', 'He said "cold.'),
    ("Washington, D.C. is big. Yes.", "Washington, D.C. is big."),
    ("Written by J. R. R. Tolkien. Yes.", "Written by J. R. R. Tolkien."),
    ("It is 3.5 km away. Far.", "It is 3.5 km away."),
    ("No sentence end", "No sentence end"),
    ("first line\nsecond line", "first line"),
    ("", ""),
])
def test_first_sentence(text, expected):
    assert first_sentence(text) == expected


def test_reply_key_groups_replies_that_differ_in_case_and_punctuation():
    assert reply_key("The capital is PARIS!") == reply_key("the capital is Paris.")
    assert reply_key("the capital is Paris.") == "capital is paris"
    assert reply_key("Paris. Or Lyon.") != reply_key("Lyon. Or Paris.")
    assert reply_key("  \n") is None


def test_short_answer_reward_reads_accepted_then_answer_column():
    completions = ["The capital of France is Paris.",
                   [{"role": "assistant", "content": "It is Lyon."}], "Washington."]
    accepted = [["Paris"], ["Paris"], ["Washington, D.C.", "Washington"]]
    assert short_answer_reward(None, completions, accepted=accepted) == [1.0, 0.0, 1.0]
    answer = ["Paris", "Lyon", "Washington, D.C."]
    assert short_answer_reward(None, completions, answer=answer) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="answer"):
        short_answer_reward(None, completions)
    with pytest.raises(ValueError, match="3 completions but 2 answers"):
        short_answer_reward(None, completions, accepted=accepted[:2])
    assert short_answer_reward.requires_answer


# ------------------------------------------------------------------------------ the bundled set
def test_bundled_set_size_splits_and_categories():
    facts = read_facts()
    splits = Counter(fact_split(f["question"]) for f in facts)
    assert len(facts) >= 240 and splits["test"] >= 160 and splits["dev"] >= 60
    by_category = Counter((f["category"], fact_split(f["question"])) for f in facts)
    categories = {f["category"] for f in facts}
    assert len(categories) >= 8 and "capital" in categories
    assert all(by_category[(c, s)] >= 3 for c in categories for s in ("dev", "test"))
    assert len({f["id"] for f in facts}) == len(facts)
    for f in facts:
        assert f["answers"] and all(a.strip() for a in f["answers"]) and f["question"].endswith("?")
        assert f["id"].startswith(f["category"] + "/")


def test_load_task_columns_splits_and_conversational_form():
    dev, test = load_task("facts", split="dev"), load_task("facts", split="test")
    assert dev.column_names == ["prompt", "answer", "accepted", "id", "category"]
    assert len(dev) + len(test) == len(read_facts())
    assert not set(dev["prompt"]) & set(test["prompt"])
    assert all(fact_split(p) == "dev" for p in dev["prompt"])
    assert all(fact_split(p) == "test" for p in test["prompt"])
    row = next(r for r in test.to_list() + dev.to_list() if r["id"] == "capital/united-states")
    assert row["prompt"] == "What is the capital of the United States?"
    assert row["answer"] == "Washington, D.C."
    assert row["accepted"] == ["Washington, D.C.", "Washington"]
    chat = load_task("facts", split="test", conversational=True, instruction=" Be brief.")
    assert chat[0]["prompt"] == [{"role": "user", "content": test[0]["prompt"] + " Be brief."}]
    assert chat[0]["accepted"] == test[0]["accepted"]
    assert set(task_knobs("facts")) == {"path", "instruction"}


def test_n_draws_a_seeded_subset_in_file_order():
    full = load_task("facts", split="test")["id"]
    a, b, c = (load_task("facts", split="test", n=20, seed=s)["id"] for s in (0, 0, 1))
    assert a == b and a != c and len(a) == 20
    assert a == [i for i in full if i in set(a)]            # file order kept
    assert load_task("facts", split="test", n=len(full))["id"] == full
    with pytest.raises(ValueError, match=f"has {len(full)} questions; ask for n <= {len(full)}"):
        load_task("facts", split="test", n=len(full) + 1)
    with pytest.raises(ValueError, match="valid splits: dev, test"):
        load_task("facts", split="train")


def test_split_depends_on_the_question_alone(tmp_path):
    facts = read_facts()
    shuffled = facts[:]
    random.Random(0).shuffle(shuffled)
    extra = [{"question": f"What is the number after {i}?", "answers": [str(i + 1)]}
             for i in range(100, 140)]
    path = tmp_path / "mine.jsonl"
    lines = [json.dumps({"question": f["question"].upper(), "answers": f["answers"][::-1]})
             for f in shuffled + extra]
    path.write_text("\n".join(lines) + "\n")
    mine = {r["prompt"].lower(): "dev" for r in load_task("facts", split="dev", path=str(path))}
    mine |= {r["prompt"].lower(): "test" for r in load_task("facts", split="test", path=str(path))}
    assert all(mine[f["question"].lower()] == fact_split(f["question"]) for f in facts)
    assert 0.2 < list(mine.values()).count("dev") / len(mine) < 0.45


# ----------------------------------------------------------------------------- bad question files
PERU = "What is the capital of Peru?"
NO_ANSWER = r":1: the question has no answer; add \"answers\""


@pytest.mark.parametrize("lines,message", [
    ([{"question": PERU}], NO_ANSWER),
    ([{"question": PERU, "answers": []}], NO_ANSWER),
    ([{"question": PERU, "answers": ["  ", ""]}], NO_ANSWER),
    ([{"question": PERU, "answers": ["the"]}], NO_ANSWER),           # an article alone is no answer
    ([{"question": PERU, "answer": None}], NO_ANSWER),
    ([{"question": "Q1?", "answers": ["a1"]}, {"question": "What is 2+2?", "answers": ["4"]},
      {"question": "what is 2 + 2", "answers": ["four"]}],
     r":3: duplicate question 'what is 2 \+ 2' \(also on line 2\); delete one of the two lines"),
    ([{"answers": ["Lima"]}], r":1: missing question; add \"question\""),
    ([{"question": "What is the capital of Mexico?", "answers": ["Mexico"]}],
     r":1: the question .* contains its answer 'Mexico'.*rephrase it"),
    ([{"id": "x", "question": "Q1?", "answers": ["Lima"]},
      {"id": "x", "question": "Q2?", "answers": ["Rome"]}],
     r":2: duplicate id 'x' \(also on line 1\)"),
    ([{"question": "Q1?", "answers": [3]}], r":1: answers must be strings"),
    (["not json"], r":1: not valid JSON .*one JSON object per line"),
    ([[1, 2]], r":1: expected a JSON object"),
])
def test_bad_question_files_give_one_line_errors(tmp_path, lines, message):
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    with pytest.raises(ValueError, match=message) as err:
        read_facts(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ValueError, match=message):   # the task loader says the same
        load_task("facts", split="test", path=str(path))


def test_missing_or_empty_question_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass a .jsonl file"):
        read_facts(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="has no questions"):
        read_facts(tmp_path / "empty.jsonl")


def test_user_file_defaults_and_single_string_answer(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "What is the capital of Peru?", "answer": "Lima"}\n\n'
                    '{"question": "Who wrote Hamlet?", "answers": ["Bard", "Bard"]}\n')
    assert read_facts(path) == [
        {"id": "line1", "category": "custom", "question": PERU, "answers": ["Lima"]},
        {"id": "line3", "category": "custom", "question": "Who wrote Hamlet?", "answers": ["Bard"]}]


def test_bundled_file_is_package_data():
    assert DATA.is_file() and DATA.parent.name == "data" and DATA.parent.parent.name == "tasks"
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"manyminds.tasks" = ["data/*.jsonl"]' in pyproject


# ---------------------------------------------------------------------- the committed greedy run
@pytest.mark.skipif(not GREEDY.is_file(), reason="no committed greedy run")
def test_committed_greedy_run_covers_the_set_and_matches_the_reader():
    records = [json.loads(line) for line in GREEDY.read_text().splitlines()]
    facts = {f["id"]: f for f in read_facts()}
    assert sorted(r["id"] for r in records) == sorted(facts)
    for r in records:
        assert r["question"] == facts[r["id"]]["question"]
        assert r["split"] == fact_split(r["question"])
        assert r["correct"] is is_correct(r["reply"], facts[r["id"]]["answers"]), r["id"]
    accuracy = sum(r["correct"] for r in records) / len(records)
    assert 0.3 <= accuracy <= 0.8                       # the model partly knows the set
    per_category = Counter(r["category"] for r in records if r["correct"])
    assert all(0 < per_category[c] < n for c, n in Counter(r["category"] for r in records).items())
