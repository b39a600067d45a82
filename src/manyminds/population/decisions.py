"""Population decisions: many minds answer, the population decides.

- :func:`generate_grid`: every prompt answered by every mind, in batches -> ``texts[p][m]``.
- :func:`population_vote`: majority vote over the minds' extracted final answers.
- :func:`best_of_minds`: the completion a reward function (TRL signature
  ``(prompts, completions, **kwargs) -> list[float]``) likes best.
- :func:`select_minds`: rank candidate minds by their mean reward on a dev set.
- pass@k over minds: :func:`manyminds.metrics.pass_at_k` on the per-mind correctness.

Prompts may be strings or TRL conversations (lists of ``{"role", "content"}`` messages); they are
tokenised once by :meth:`Population.generate <manyminds.population.Population.generate>` (the chat
template with the generation prompt for conversations, raw text for strings). As in TRL's
GRPOTrainer, a reward sees conversational prompts with conversational completions
(``[{"role": "assistant", "content": text}]``); the returned completions are always text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from manyminds.metrics import majority_vote, vote_counts
from manyminds.rows import group_rows, is_conversational, prompt_grid, prompt_list, repeat_prompts

__all__ = ["VoteResult", "best_of_minds", "generate_grid", "population_vote", "select_minds"]


def _extract_default(text: str) -> str | None:
    from manyminds.tasks import extract_answer

    return extract_answer(text)


def _mind_list(minds: int | Sequence[int]) -> list[int]:
    if isinstance(minds, int) and not isinstance(minds, bool):
        if minds < 1:
            raise ValueError(f"minds={minds}: pass a positive number of minds or a list of ids")
        return list(range(minds))
    minds = [int(m) for m in minds]
    if not minds:
        raise ValueError("minds is empty; pass a positive number of minds or a list of ids")
    return minds


def generate_grid(population, prompts: Sequence, minds: int | Sequence[int] = 8, tokenizer=None,
                  batch_size: int = 64, progress: Callable[[int], None] | None = None,
                  **generate_kwargs) -> list[list[str]]:
    """Every prompt answered once by every mind: ``texts[p][j]`` is mind ``minds[j]``'s answer to
    ``prompts[p]``.

    Rows (prompt x mind) are generated ``batch_size`` at a time, several minds per batch.

    Args:
        population: a :class:`~manyminds.population.Population`.
        prompts: a prompt or a list of prompts (strings or conversations, see
            :func:`manyminds.rows.prompt_list`).
        minds: a number ``n`` (minds ``0 .. n-1``) or a list of ids (``-1`` = the plain model).
        progress: called with the number of rows finished after each batch.
        **generate_kwargs: passed to ``model.generate`` (not ``num_return_sequences``).
    """
    if generate_kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("generate_grid makes one row per (prompt, mind); use more minds instead of "
                         "num_return_sequences")
    prompts = prompt_list(prompts)
    ids = _mind_list(minds)
    rows, row_minds = prompt_grid(prompts, ids)  # prompt-major: [P * k]
    texts: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        texts += population.generate(chunk, minds=row_minds[start:start + batch_size],
                                     tokenizer=tokenizer, **generate_kwargs)
        if progress is not None:
            progress(len(chunk))
    return group_rows(texts, len(ids))  # [P][k]


@dataclass
class VoteResult:
    """One prompt's population decision."""

    answer: str | None  # the majority answer (None: no mind gave an answer)
    answers: list[str | None]  # each mind's extracted answer
    completions: list[str]  # each mind's completion
    minds: list[int]  # the mind ids, aligned with answers
    votes: dict[str, int] = field(default_factory=dict)  # answer -> number of minds

    @property
    def agreement(self) -> float:
        """Fraction of minds that voted for the majority answer."""
        return self.votes.get(self.answer, 0) / len(self.minds) if self.answer is not None else 0.0


def population_vote(population, prompts: Sequence, minds: int | Sequence[int] = 8, tokenizer=None,
                    extract: Callable[[str], str | None] = _extract_default, **kwargs) -> list[VoteResult]:
    """Majority vote across minds per prompt (ties: the answer seen first, i.e. the lowest mind).

    ``extract`` maps a completion to its final answer (default: the ``#### <answer>`` line).
    Other keyword arguments go to :func:`generate_grid`.
    """
    ids = _mind_list(minds)
    grid = generate_grid(population, prompts, ids, tokenizer=tokenizer, **kwargs)
    results = []
    for texts in grid:
        answers = [extract(t) for t in texts]
        results.append(VoteResult(answer=majority_vote(answers), answers=answers, completions=texts,
                                  minds=list(ids), votes=dict(vote_counts(answers))))
    return results


def _call_reward(reward, prompts: list, completions: list[str], columns: dict[str, list]) -> list[float]:
    """``reward(prompts, completions, **columns)`` as TRL calls it: conversational prompts get
    conversational completions ``[{"role": "assistant", "content": text}]``."""
    if prompts and is_conversational(prompts[0]):
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    scores = reward(prompts=prompts, completions=completions, **columns)
    scores = [float("nan") if s is None else float(s) for s in scores]
    if len(scores) != len(completions):
        raise ValueError(f"reward returned {len(scores)} scores for {len(completions)} completions")
    return scores


def best_of_minds(population, prompts: Sequence, reward, minds: int | Sequence[int] = 8, tokenizer=None,
                  reward_kwargs: dict[str, Sequence] | None = None, **kwargs) -> list[dict]:
    """Per prompt, the completion with the highest reward across minds.

    Args:
        reward: TRL-style ``reward(prompts, completions, **kwargs) -> list[float]``.
        reward_kwargs: per-prompt columns passed to ``reward`` (e.g. ``{"answer": [...]}``),
            repeated for each mind as TRL repeats them for each generation.
        **kwargs: passed to :func:`generate_grid`.

    Returns:
        per prompt ``{"completion", "mind", "reward", "rewards"}`` (``rewards``: every mind's
        reward, aligned with the mind ids). Ties go to the first mind.
    """
    ids = _mind_list(minds)
    prompts = prompt_list(prompts)
    grid = generate_grid(population, prompts, ids, tokenizer=tokenizer, **kwargs)
    k = len(ids)
    columns = {name: repeat_prompts(values, k) for name, values in (reward_kwargs or {}).items()}
    scores = _call_reward(reward, repeat_prompts(prompts, k), [t for row in grid for t in row], columns)
    out = []
    for texts, row in zip(grid, group_rows(scores, k)):
        j = max(range(k), key=lambda j: (row[j] if row[j] == row[j] else float("-inf"), -j))
        out.append({"completion": texts[j], "mind": ids[j], "reward": row[j], "rewards": row})
    return out


def select_minds(population, dataset, reward, n: int = 4, candidates: int | Sequence[int] = 16,
                 tokenizer=None, prompt_column: str = "prompt", **kwargs) -> list[tuple[int, float]]:
    """Rank candidate minds by their mean reward on a dev set; return the best ``n``.

    Every candidate mind answers every prompt of ``dataset`` (a ``datasets.Dataset`` or a list
    of dicts with a ``prompt`` column of strings or conversations); ``reward`` scores the
    completions with the dataset's other columns as keyword arguments (TRL convention, e.g.
    ``answer``).

    Args:
        n: how many minds to return (<= number of candidates).
        candidates: a number ``c`` (minds ``0 .. c-1``) or a list of ids.
        **kwargs: passed to :func:`generate_grid` (``max_new_tokens``, ``batch_size``, ...).

    Returns:
        ``[(mind, mean reward), ...]``, best first (ties: lower id first), length ``n``.
    """
    ids = _mind_list(candidates)
    if not 1 <= n <= len(ids):
        raise ValueError(f"select_minds needs 1 <= n <= {len(ids)} candidates, got n={n}")
    rows = list(dataset) if not hasattr(dataset, "column_names") else [dict(r) for r in dataset]
    if not rows:
        raise ValueError("select_minds needs a non-empty dev set")
    if prompt_column not in rows[0]:
        raise ValueError(f"the dev set has no {prompt_column!r} column (columns: {', '.join(rows[0])})")
    prompts = prompt_list([r[prompt_column] for r in rows])
    grid = generate_grid(population, prompts, ids, tokenizer=tokenizer, **kwargs)
    k = len(ids)
    columns = {c: repeat_prompts([r[c] for r in rows], k) for c in rows[0] if c != prompt_column}
    flat = _call_reward(reward, repeat_prompts(prompts, k), [t for row in grid for t in row], columns)  # [P * k]
    scores = group_rows(flat, k)  # [P][k]
    means = []
    for j, mind in enumerate(ids):
        vals = [row[j] for row in scores]
        means.append((mind, sum(vals) / len(vals)))
    means.sort(key=lambda mv: (-mv[1] if mv[1] == mv[1] else float("inf"), mv[0]))
    return means[:n]
