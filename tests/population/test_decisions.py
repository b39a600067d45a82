"""Population decisions: grid generation, majority vote, best-of-minds, select_minds."""

import pytest

from manyminds.metrics import majority_vote
from manyminds.population import Population
from manyminds.population.decisions import generate_grid

GEN = {"max_new_tokens": 5, "do_sample": False}
PROMPTS = ["Q: 1+2\nA:", "Q: 12+34-5\nA:", "Q: 7-3\nA:"]


@pytest.fixture
def pop(char_qwen2, char_tokenizer):
    return Population(char_qwen2, sigma=0.5, tokenizer=char_tokenizer)


def test_grid_matches_single_generations_and_batching(pop):
    grid = generate_grid(pop, PROMPTS, minds=[0, 3, -1], batch_size=4, **GEN)
    assert len(grid) == 3 and all(len(row) == 3 for row in grid)
    assert grid[1][1] == pop.generate(PROMPTS[1], minds=[3], **GEN)[0]
    assert grid == generate_grid(pop, PROMPTS, minds=[0, 3, -1], batch_size=9, **GEN)
    done = []
    generate_grid(pop, PROMPTS, minds=2, batch_size=4, progress=done.append, **GEN)
    assert done == [4, 2]
    with pytest.raises(ValueError, match="num_return_sequences"):
        generate_grid(pop, PROMPTS, minds=2, num_return_sequences=2, **GEN)


def test_vote(pop):
    def first_char(text):
        return text.strip()[:1] or None

    results = pop.vote(PROMPTS, minds=6, extract=first_char, **GEN)
    assert len(results) == 3
    for res in results:
        assert res.minds == list(range(6)) and len(res.completions) == 6
        assert res.answers == [first_char(t) for t in res.completions]
        assert res.answer == majority_vote(res.answers)
        assert sum(res.votes.values()) == sum(a is not None for a in res.answers)
        if res.answer is not None:
            assert res.agreement == res.votes[res.answer] / 6


def test_best_of_minds_uses_reward_and_columns(pop):
    seen = {}

    def reward(prompts, completions, target, **kwargs):
        seen["n"] = len(completions)
        seen["target"] = target
        return [float(c.count(t)) for c, t in zip(completions, target)]

    out = pop.best_of(PROMPTS[:2], reward, minds=4, reward_kwargs={"target": ["1", "3"]}, **GEN)
    assert seen["n"] == 8 and seen["target"] == ["1"] * 4 + ["3"] * 4
    grid = generate_grid(pop, PROMPTS[:2], minds=4, **GEN)
    for i, (res, t) in enumerate(zip(out, ["1", "3"])):
        expected = [float(c.count(t)) for c in grid[i]]
        assert res["rewards"] == expected
        assert res["reward"] == max(expected)
        assert res["mind"] == expected.index(max(expected))  # ties -> first mind
        assert res["completion"] == grid[i][res["mind"]]


def test_select_minds_ranks_by_mean_reward(pop):
    dev = [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, ["3", "41", "4"])]

    def reward(prompts, completions, answer, **kwargs):
        return [float(len(set(c))) + (a in c) for c, a in zip(completions, answer)]

    ranked = pop.select_minds(dev, reward, n=3, candidates=5, **GEN)
    grid = generate_grid(pop, PROMPTS, minds=5, **GEN)
    means = {m: sum(reward(None, [grid[i][m]], [dev[i]["answer"]])[0] for i in range(3)) / 3 for m in range(5)}
    expected = sorted(means.items(), key=lambda mv: (-mv[1], mv[0]))[:3]
    assert [m for m, _ in ranked] == [m for m, _ in expected]
    assert [v for _, v in ranked] == pytest.approx([v for _, v in expected])
    with pytest.raises(ValueError, match="1 <= n <= 5"):
        pop.select_minds(dev, reward, n=6, candidates=5, **GEN)
    with pytest.raises(ValueError, match="no 'prompt' column"):
        pop.select_minds([{"question": "x"}], reward, n=1, candidates=2, **GEN)


def test_select_minds_accepts_datasets(pop):
    datasets = pytest.importorskip("datasets")
    dev = datasets.Dataset.from_dict({"prompt": PROMPTS[:2], "answer": ["3", "41"]})
    ranked = pop.select_minds(dev, lambda prompts, completions, answer, **kw: [1.0] * len(completions),
                              n=2, candidates=[7, 2, 5], **GEN)
    assert ranked == [(2, 1.0), (5, 1.0)]  # ties broken by the lower id
