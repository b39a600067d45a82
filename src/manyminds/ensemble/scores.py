"""The uncertainty scores of an ensemble's answers: one table, the one place to add a score.

Each :class:`UncertaintyScore` reads one of three sources that
:func:`~manyminds.evaluation.evaluate_ensemble` computes per prompt, and reduces it to one float:

- ``"steps"``: the mixture's greedy answer, per token up to and including eos
  (:func:`~manyminds.ensemble.mixture_generate`): a dict of ``[n]`` tensors ``total`` (entropy
  of ``mean_k p_k``), ``aleatoric`` (``mean_k H(p_k)``) and ``epistemic`` (their difference, the
  mutual information);
- ``"reference"``: a given completion (the dataset's ``completion`` column) scored by every member
  (:func:`~manyminds.ensemble.sequence_uncertainty`): a dict of ``[B]`` tensors for the batch;
- ``"answers"``: the members' greedy final answers ``[K][N]`` of the whole dataset.

``manyminds uncertainty``, :meth:`EnsembleEvaluation.summary` (AUROC against a label, when
``auroc``), its ``records`` (``results.jsonl``) and the risk-coverage plot (when
``risk_coverage``) all read this table. To add a score, add one entry (CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .uncertainty import answer_disagreement

__all__ = ["SCORES", "SOURCES", "UncertaintyScore", "score_names"]

SOURCES = ("steps", "reference", "answers")


@dataclass(frozen=True)
class UncertaintyScore:
    """One uncertainty score (higher = less certain).

    Attributes:
        name: its key in summaries, ``results.jsonl`` and ``EnsembleEvaluation.<name>``.
        source: ``"steps"``, ``"reference"`` or ``"answers"`` (see the module docstring).
        reduce: ``steps``: ``u -> float`` for one prompt; ``reference``: ``seq -> [B]`` values of a
            batch; ``answers``: ``[K][N] answers -> [N]`` values.
        auroc: reported as an AUROC against the label column by ``summary``.
        risk_coverage: drawn in the risk-coverage plot of ``manyminds uncertainty``.
    """

    name: str
    source: str
    reduce: Callable
    auroc: bool = True
    risk_coverage: bool = False

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")


SCORES: tuple[UncertaintyScore, ...] = (
    # mean mutual information over the mixture answer's tokens
    UncertaintyScore("epistemic", "steps", lambda u: u["epistemic"].mean().item(), risk_coverage=True),
    # its largest token: one confused token flags the answer
    UncertaintyScore("max_epistemic", "steps", lambda u: u["epistemic"].max().item(), risk_coverage=True),
    # entropy of the mixture, and the members' mean entropy (total = aleatoric + epistemic)
    UncertaintyScore("total", "steps", lambda u: u["total"].mean().item(), auroc=False),
    UncertaintyScore("aleatoric", "steps", lambda u: u["aleatoric"].mean().item(), auroc=False),
    # share of members whose final answer differs from the members' majority
    UncertaintyScore("disagreement", "answers", answer_disagreement, risk_coverage=True),
    # mutual information and member log-likelihood variance of the dataset's own completion
    UncertaintyScore("reference_epistemic", "reference", lambda seq: seq["epistemic"].tolist()),
    UncertaintyScore("logp_variance", "reference", lambda seq: seq["logp_variance"].tolist()),
)


def score_names(source: str | None = None) -> list[str]:
    """Names of the scores (of one ``source``), in table order."""
    return [s.name for s in SCORES if source is None or s.source == source]
