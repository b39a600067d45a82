"""Evaluate a soft-specialist ensemble: every member's answer, the members' majority, the mixture's
answer, and uncertainty; the same tokenisation and scorer as :func:`manyminds.evaluation.evaluate`.

Per prompt (``N`` prompts, ``K`` members):

- ``members``: member ``k`` answers greedily (one batched ``generate`` of the K-repeated batch);
  scored as a condition with ``k = K`` draws (pass@1 = mean member accuracy, majority@K);
- ``mixture``: greedy decoding from the predictive ``mean_k p_k`` (one draw);
- token-level uncertainty of the mixture's tokens up to and including eos: ``epistemic`` (mean
  mutual information), ``max_epistemic``, ``total`` (entropy of the mixture), ``aleatoric``;
  ``disagreement``: share of members disagreeing with the members' majority answer;
- with a ``completion`` column: ``reference_epistemic`` and ``logp_variance`` of that completion.

Used by ``manyminds uncertainty`` and ``examples/ensemble_evidence.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from manyminds.ensemble.scores import SCORES, score_names

from .core import build_records, read_prompts
from .generation import check_context, pad_id_of, pad_left, tokenize_prompts
from .scoring import ConditionScores, score_condition

__all__ = ["EnsembleEvaluation", "evaluate_ensemble"]


@dataclass
class EnsembleEvaluation:
    """Per-prompt results (lists of length N), the two scored conditions, and summaries.

    Attributes:
        conditions: ``[members, mixture]`` as :class:`~manyminds.evaluation.ConditionScores`.
        member_answers: ``[K][N]`` final answers of each member (greedy).
        member_correct: ``[K][N]`` 1/0 (empty without an ``answer`` column).
        majority, majority_correct, agreement: majority vote over members.
        mixture_answer, mixture_correct: greedy mixture decoding.
        scores: per-prompt uncertainty scores ``{name: [N]}`` of :data:`manyminds.ensemble.scores.SCORES`,
            also readable as attributes (``result.epistemic``).
    """

    conditions: list[ConditionScores] = field(default_factory=list)
    prompts: list = field(default_factory=list, repr=False)
    answers: list[str] | None = field(default=None, repr=False)
    member_answers: list[list[str | None]] = field(default_factory=list)
    member_correct: list[list[float]] = field(default_factory=list)
    majority: list[str | None] = field(default_factory=list)
    majority_correct: list[float] = field(default_factory=list)
    agreement: list[float] = field(default_factory=list)
    mixture_answer: list[str | None] = field(default_factory=list)
    mixture_correct: list[float] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in score_names()})

    def __getattr__(self, name: str):
        scores = self.__dict__.get("scores")
        if scores is not None and name in scores:
            return scores[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def summary(self, labels: list[int] | None = None) -> dict[str, float]:
        """Accuracies, mean uncertainties, AURC of selective answering, and AUROCs against ``labels``."""
        from manyminds.ensemble import auroc, risk_coverage

        def mean(xs):
            return float(sum(xs) / len(xs)) if xs else float("nan")

        out = {"n": float(len(self.majority))}
        out.update({f"mean_{s.name}": mean(self.scores[s.name]) for s in SCORES if s.risk_coverage})
        if self.mixture_correct:
            out["mixture_accuracy"] = mean(self.mixture_correct)
            out["majority_accuracy"] = mean(self.majority_correct)
            for k, row in enumerate(self.member_correct):
                out[f"member_{k}_accuracy"] = mean(row)
            out["aurc_max_epistemic"] = risk_coverage(self.max_epistemic, self.mixture_correct)["aurc"]
            out["accuracy_at_full_coverage"] = mean(self.mixture_correct)
        if labels is not None and 0 < sum(labels) < len(labels):
            for score in SCORES:
                values = self.scores[score.name]
                if score.auroc and values:
                    out[f"auroc_{score.name}"] = auroc(values, labels)
        return out

    def records(self, label: str | None = None, labels: Sequence[int] | None = None) -> list[dict]:
        """One dict per prompt: prompt, gold answer, uncertainty scores, and per condition the
        completions, answers, votes and correctness (``members``: one entry per member id)."""
        extra = []
        for i in range(len(self.prompts)):
            row = {"uncertainty": {name: values[i] for name, values in self.scores.items() if values}}
            if label is not None and labels is not None:
                row[label] = bool(labels[i])
            extra.append(row)
        return build_records(self.prompts, self.answers, self.conditions, extra)


def _until_eos(tokenizer, row: torch.Tensor) -> tuple[str, int]:
    """Decoded generated text of one row ``[T_new]`` and its number of tokens up to and including eos."""
    ids = row.tolist()
    n = len(ids)
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        n = ids.index(eos) + 1
    return tokenizer.decode(ids[:n], skip_special_tokens=True), n


@torch.no_grad()
def evaluate_ensemble(ensemble, tokenizer, dataset, batch_size: int = 32, max_new_tokens: int = 32,
                      progress: Callable[[int], None] | None = None) -> EnsembleEvaluation:
    """Greedy per-member and mixture answers with uncertainty, over a dataset with a ``prompt`` column.

    Optional columns: ``answer`` (correctness), ``completion`` (reference epistemic and variance of
    the members' log-likelihoods of that completion).

    Args:
        ensemble: an :class:`~manyminds.ensemble.EnsembleLoRA`.
        progress: called with the number of prompts done after each batch.
    """
    from manyminds.ensemble import (
        generate_members,
        mixture_generate,
        sequence_uncertainty,
    )
    from manyminds.rows import encode_pair, pad_rows

    prompts, answers = read_prompts(dataset)
    columns = getattr(dataset, "column_names", None) or list(dataset[0])
    completions = list(dataset["completion"]) if "completion" in columns else None
    K = ensemble.num_members
    device = next(ensemble.model.parameters()).device
    pad = pad_id_of(tokenizer)
    gen = {"pad_token_id": pad, "eos_token_id": tokenizer.eos_token_id, "max_new_tokens": max_new_tokens}
    member_grid: list[list[str]] = []  # [N][K]
    mixture_grid: list[list[str]] = []  # [N][1]
    out = EnsembleEvaluation(prompts=prompts, answers=answers)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids = tokenize_prompts(tokenizer, chunk)
        check_context(ensemble.model.config, [len(r) for r in ids], max_new_tokens)
        enc = pad_left(ids, pad, device)  # [B, T]
        T = enc["input_ids"].shape[1]
        members = generate_members(ensemble, **enc, do_sample=False, **gen)  # [K, B, T + new]
        member_grid += [[_until_eos(tokenizer, members[k, b, T:])[0] for k in range(K)] for b in range(len(chunk))]
        mix = mixture_generate(ensemble, **enc, **gen)
        for b in range(len(chunk)):
            text, n = _until_eos(tokenizer, mix.sequences[b, T:])
            mixture_grid.append([text])
            u = {key: value[b, :n] for key, value in mix.uncertainty.items()}  # [n] each
            for score in SCORES:
                if score.source == "steps":
                    out.scores[score.name].append(score.reduce(u))
        if completions is not None:
            pairs = [encode_pair(tokenizer, p, c, None) for p, c in zip(chunk, completions[start:start + batch_size])]
            ids = pad_rows([p["input_ids"] for p in pairs], pad).to(device)
            attn = pad_rows([[1] * len(p["input_ids"]) for p in pairs], 0).to(device)
            comp = pad_rows([p["completion_mask"] for p in pairs], 0).to(device)
            seq = sequence_uncertainty(ensemble, ids, attn, comp)
            for score in SCORES:
                if score.source == "reference":
                    out.scores[score.name].extend(score.reduce(seq))
        if progress is not None:
            progress(min(start + batch_size, len(prompts)))
    members_c = score_condition("members", "members", member_grid, answers, draw_ids=list(range(K)))
    mixture_c = score_condition("mixture", "mixture", mixture_grid, answers)
    out.conditions = [members_c, mixture_c]
    out.member_answers = [[r["answers"][k] for r in members_c.per_prompt] for k in range(K)]
    out.majority = [r["majority"] for r in members_c.per_prompt]
    out.agreement = [r["agreement"] for r in members_c.per_prompt]
    for score in SCORES:
        if score.source == "answers":
            out.scores[score.name] = list(score.reduce(out.member_answers))  # [N]
    out.mixture_answer = [r["answers"][0] for r in mixture_c.per_prompt]
    if answers is not None:
        out.member_correct = [[r["correct"][k] for r in members_c.per_prompt] for k in range(K)]
        out.majority_correct = [r["majority_correct"] for r in members_c.per_prompt]
        out.mixture_correct = [r["correct"][0] for r in mixture_c.per_prompt]
    return out
