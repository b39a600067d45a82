"""The one scorer of every evaluation condition.

A *condition* answers each of ``P`` prompts ``k`` times (``grid[p][j]``: draw ``j`` for prompt
``p``; ``k = 1`` for greedy decoding). A :class:`~manyminds.evaluation.readers.Reader` reads each
draw: its answer key (what votes compare; default :data:`~manyminds.evaluation.readers.FINAL_ANSWER`,
the ``####`` line) and its correctness against the prompt's reference. Per condition:

- ``pass_at_1``: mean correctness of a single draw (= mean per-mind accuracy);
- ``pass_at_k``: unbiased pass@k over the ``k`` draws (Chen et al. 2021);
- ``majority_at_k``: accuracy of the majority answer key (:func:`manyminds.metrics.majority_vote`;
  correct when the first draw with that key is);
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

from .readers import FINAL_ANSWER, Reader

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
                    semantic: bool = False, draw_ids: Sequence[int] | None = None,
                    reader: Reader = FINAL_ANSWER, questions: Sequence[str] | None = None) -> ConditionScores:
    """Score ``grid[p][j]`` (draw ``j`` for prompt ``p``) against ``references[p]``.

    Args:
        references: ``[P]`` references of ``reader`` (gold answers; accepted-answer lists for the
            short reader); ``None`` (no ``answer`` column) scores correctness as NaN.
        draw_ids: ids of the draws (mind or member ids), written into each per-prompt record.
        reader: how a draw is read (:mod:`.readers`).
        questions: ``[P]`` question texts, for readers whose key drops the question's words.
    """
    if not grid:
        raise ValueError("nothing to score: no prompts")
    if references is not None and len(references) != len(grid):
        raise ValueError(f"{len(grid)} prompts of completions but {len(references)} answers")
    k = len(grid[0])
    questions = [""] * len(grid) if questions is None else list(questions)
    answers = [[reader.key(t, q) for t in row] for row, q in zip(grid, questions)]
    voted = [metrics.majority_vote(row) for row in answers]
    nan = float("nan")
    if references is not None:
        correct = [[float(a is not None and reader.correct(t, ref)) for t, a in zip(row, keys)]
                   for row, keys, ref in zip(grid, answers, references)]
        majority_correct = [float(v is not None and c[keys.index(v)] > 0)
                            for v, c, keys in zip(voted, correct, answers)]
        pass1 = sum(map(sum, correct)) / sum(len(row) for row in correct)
        passk = metrics.mean_pass_at_k(correct, k)
        majority = sum(majority_correct) / len(majority_correct)
    else:
        correct, majority_correct, pass1, passk, majority = None, None, nan, nan, nan
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
            rec["majority_correct"] = majority_correct[p]
        per_prompt.append(rec)
    return ConditionScores(
        name=name, kind=kind, sigma=float(sigma), temperature=float(temperature), k=k, problems=len(grid),
        pass_at_1=pass1, pass_at_k=passk, majority_at_k=majority,
        unique_answers=sum(metrics.unique_answers(row) for row in answers) / len(grid),
        answer_rate=sum(a is not None for row in answers for a in row) / sum(len(row) for row in answers),
        distinct_2=sum(metrics.distinct_n(row, 2, tokenize=list) for row in grid) / len(grid),
        self_bleu=(sum(metrics.self_bleu(row, tokenize=list) for row in grid) / len(grid)) if k >= 2 else None,
        semantic_diversity=sem, seconds=seconds, per_prompt=per_prompt)
