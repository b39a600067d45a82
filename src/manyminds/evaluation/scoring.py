"""The one scorer of every evaluation condition.

A *condition* answers each of ``P`` prompts ``k`` times (``grid[p][j]``: draw ``j`` for prompt
``p``; ``k = 1`` for greedy decoding). Each draw's final answer is
:func:`manyminds.tasks.extract_answer` of its completion and is correct when it equals the
prompt's normalised ``answer`` (:func:`manyminds.tasks.verify_answer`). Per condition:

- ``pass_at_1``: mean correctness of a single draw (= mean per-mind accuracy);
- ``pass_at_k``: unbiased pass@k over the ``k`` draws (Chen et al. 2021);
- ``majority_at_k``: accuracy of the majority final answer (:func:`manyminds.metrics.majority_vote`);
- ``unique_answers``: mean number of distinct final answers per prompt;
- ``answer_rate``: share of draws with an extractable final answer;
- ``distinct_2``, ``self_bleu``: lexical diversity on characters, averaged over prompts;
- ``semantic_diversity``: mean pairwise cosine distance of all-MiniLM-L6-v2 embeddings of the
  ``k`` completions (B-Trans' measure; ``None`` unless asked for and the ``diversity`` extra is there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from manyminds import metrics
from manyminds.tasks import extract_answer, normalize_answer

__all__ = ["ConditionScores", "score_condition"]


@dataclass
class ConditionScores:
    """Scores of one condition (see the module docstring); ``per_prompt`` holds the raw draws."""

    name: str  # "greedy", "temperature 1", "minds sigma=0.02", "members", "mixture"
    kind: str  # "greedy" | "samples" | "minds" | "members" | "mixture"
    sigma: float  # noise scale of the minds; 0 otherwise
    temperature: float  # 0 = greedy
    k: int  # draws per prompt
    problems: int
    pass_at_1: float
    pass_at_k: float
    majority_at_k: float
    unique_answers: float
    answer_rate: float
    distinct_2: float
    self_bleu: float | None
    semantic_diversity: float | None = None
    seconds: float = 0.0
    per_prompt: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready scores (without the per-prompt draws)."""
        out = asdict(self)
        out.pop("per_prompt")
        return out


def score_condition(name: str, kind: str, grid: Sequence[Sequence[str]], references: Sequence[str] | None,
                    sigma: float = 0.0, temperature: float = 0.0, seconds: float = 0.0,
                    semantic: bool = False, draw_ids: Sequence[int] | None = None) -> ConditionScores:
    """Score ``grid[p][j]`` (draw ``j`` for prompt ``p``) against ``references[p]``.

    Args:
        references: ``[P]`` gold answers; ``None`` (no ``answer`` column) scores correctness as NaN.
        draw_ids: ids of the draws (mind or member ids), written into each per-prompt record.
    """
    if not grid:
        raise ValueError("nothing to score: no prompts")
    if references is not None and len(references) != len(grid):
        raise ValueError(f"{len(grid)} prompts of completions but {len(references)} answers")
    k = len(grid[0])
    refs = None if references is None else [normalize_answer(str(r)) for r in references]
    answers = [[extract_answer(t) for t in row] for row in grid]
    voted = [metrics.majority_vote(row) for row in answers]
    nan = float("nan")
    if refs is not None:
        correct = [[float(a is not None and a == r) for a in row] for row, r in zip(answers, refs)]
        pass1 = sum(map(sum, correct)) / sum(len(row) for row in correct)
        passk = metrics.mean_pass_at_k(correct, k)
        majority = metrics.accuracy(voted, refs)
    else:
        correct, pass1, passk, majority = None, nan, nan, nan
    sem = None
    if semantic and k >= 2:
        try:
            sem = metrics.mean_semantic_diversity(grid)
        except ImportError:
            sem = None
    per_prompt = []
    for p, (row, ans) in enumerate(zip(grid, answers)):
        votes = metrics.vote_counts(ans)
        rec = {"completions": list(row), "answers": ans, "votes": dict(votes), "majority": voted[p],
               "agreement": votes[voted[p]] / len(ans) if voted[p] is not None else 0.0}
        if draw_ids is not None:
            rec["ids"] = list(draw_ids)
        if correct is not None:
            rec["correct"] = correct[p]
            rec["majority_correct"] = float(voted[p] is not None and voted[p] == refs[p])
        per_prompt.append(rec)
    return ConditionScores(
        name=name, kind=kind, sigma=float(sigma), temperature=float(temperature), k=k, problems=len(grid),
        pass_at_1=pass1, pass_at_k=passk, majority_at_k=majority,
        unique_answers=sum(metrics.unique_answers(row) for row in answers) / len(grid),
        answer_rate=sum(a is not None for row in answers for a in row) / sum(len(row) for row in answers),
        distinct_2=sum(metrics.distinct_n(row, 2, tokenize=list) for row in grid) / len(grid),
        self_bleu=(sum(metrics.self_bleu(row, tokenize=list) for row in grid) / len(grid)) if k >= 2 else None,
        semantic_diversity=sem, seconds=seconds, per_prompt=per_prompt)
