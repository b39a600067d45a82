"""Evaluate an ensemble on prompts: per-member answers, majority vote, mixture answer, uncertainty.

Used by ``manyminds uncertainty`` and ``examples/ensemble_evidence.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .decoding import _tokenize_prompts, generate_members, majority_vote, mixture_generate
from .lora import EnsembleLoRA
from .uncertainty import answer_disagreement, auroc, risk_coverage, sequence_uncertainty


@dataclass
class EnsembleEvaluation:
    """Per-example results (lists of length N) and a few summaries.

    Attributes:
        member_answers: ``[K][N]`` final answers of each member (greedy).
        member_correct: ``[K][N]`` 1/0 (empty without an ``answer`` column).
        majority, majority_correct, agreement: majority vote over members.
        mixture_answer, mixture_correct: greedy mixture decoding.
        epistemic, max_epistemic, total, aleatoric: token-level uncertainty of the mixture's
            generated tokens (mean and max of the mutual information over the answer's tokens).
        disagreement: share of members disagreeing with the majority answer.
        reference_epistemic, logp_variance: on the dataset's ``completion`` (if any).
    """

    member_answers: list[list[str | None]] = field(default_factory=list)
    member_correct: list[list[float]] = field(default_factory=list)
    majority: list[str | None] = field(default_factory=list)
    majority_correct: list[float] = field(default_factory=list)
    agreement: list[float] = field(default_factory=list)
    mixture_answer: list[str | None] = field(default_factory=list)
    mixture_correct: list[float] = field(default_factory=list)
    epistemic: list[float] = field(default_factory=list)
    max_epistemic: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    aleatoric: list[float] = field(default_factory=list)
    disagreement: list[float] = field(default_factory=list)
    reference_epistemic: list[float] = field(default_factory=list)
    logp_variance: list[float] = field(default_factory=list)

    def summary(self, labels: list[int] | None = None) -> dict[str, float]:
        """Accuracies, mean uncertainties, AURC of selective answering, and AUROCs against ``labels``."""
        mean = lambda xs: float(sum(xs) / len(xs)) if xs else float("nan")
        out = {"n": float(len(self.majority)), "mean_epistemic": mean(self.epistemic),
               "mean_max_epistemic": mean(self.max_epistemic), "mean_disagreement": mean(self.disagreement)}
        if self.mixture_correct:
            out["mixture_accuracy"] = mean(self.mixture_correct)
            out["majority_accuracy"] = mean(self.majority_correct)
            for k, row in enumerate(self.member_correct):
                out[f"member_{k}_accuracy"] = mean(row)
            out["aurc_max_epistemic"] = risk_coverage(self.max_epistemic, self.mixture_correct)["aurc"]
            out["accuracy_at_full_coverage"] = mean(self.mixture_correct)
        if labels is not None and 0 < sum(labels) < len(labels):
            for name in ("epistemic", "max_epistemic", "disagreement", "reference_epistemic",
                         "logp_variance"):
                values = getattr(self, name)
                if values:
                    out[f"auroc_{name}"] = auroc(values, labels)
        return out


def _new_text_until_eos(tokenizer, row: torch.Tensor) -> tuple[str, int]:
    """Decoded generated text of one row and the number of tokens up to and including eos."""
    ids = row.tolist()
    n = len(ids)
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        n = ids.index(eos) + 1
    return tokenizer.decode(ids[:n], skip_special_tokens=True), n


@torch.no_grad()
def evaluate_ensemble(ensemble: EnsembleLoRA, tokenizer, dataset, batch_size: int = 32,
                      max_new_tokens: int = 32, progress: Callable[[int], None] | None = None
                      ) -> EnsembleEvaluation:
    """Greedy per-member and mixture answers with uncertainty, over a dataset with a ``prompt`` column.

    Optional columns: ``answer`` (correctness), ``completion`` (reference epistemic and variance of
    the members' log-likelihoods of that completion).

    Args:
        progress: called with the number of examples done after each batch.
    """
    from manyminds.tasks import extract_answer, verify_answer
    from manyminds.training.common import encode_pair, pad_rows

    if "prompt" not in dataset.column_names:
        raise ValueError(f"dataset is missing column 'prompt'; it has: {', '.join(dataset.column_names)}")
    K = ensemble.num_members
    device = next(ensemble.model.parameters()).device
    result = EnsembleEvaluation(member_answers=[[] for _ in range(K)],
                                member_correct=[[] for _ in range(K)])
    has_answer = "answer" in dataset.column_names
    has_completion = "completion" in dataset.column_names
    gen = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        prompts = rows["prompt"]
        enc = _tokenize_prompts(tokenizer, prompts, device)
        T = enc["input_ids"].shape[1]
        members = generate_members(ensemble, **enc, max_new_tokens=max_new_tokens, do_sample=False, **gen)
        answers = [[extract_answer(_new_text_until_eos(tokenizer, members[k, b, T:])[0])
                    for b in range(len(prompts))] for k in range(K)]
        mix = mixture_generate(ensemble, **enc, max_new_tokens=max_new_tokens, **gen)
        for b in range(len(prompts)):
            text, n = _new_text_until_eos(tokenizer, mix.sequences[b, T:])
            result.mixture_answer.append(extract_answer(text))
            u = {key: value[b, :n] for key, value in mix.uncertainty.items()}
            result.epistemic.append(u["epistemic"].mean().item())
            result.max_epistemic.append(u["epistemic"].max().item())
            result.total.append(u["total"].mean().item())
            result.aleatoric.append(u["aleatoric"].mean().item())
            if has_answer:
                result.mixture_correct.append(verify_answer(text, rows["answer"][b]))
        for k in range(K):
            result.member_answers[k].extend(answers[k])
            if has_answer:
                result.member_correct[k].extend(
                    float(a is not None and a == extract_answer("#### " + str(gold)))
                    for a, gold in zip(answers[k], rows["answer"]))
        result.disagreement.extend(answer_disagreement(answers))
        for column in zip(*answers):
            answer, share = majority_vote(column)
            result.majority.append(answer)
            result.agreement.append(share)
        if has_answer:
            result.majority_correct.extend(
                float(a is not None and a == extract_answer("#### " + str(gold)))
                for a, gold in zip(result.majority[-len(prompts):], rows["answer"]))
        if has_completion:
            pairs = [encode_pair(tokenizer, p, c, None) for p, c in zip(prompts, rows["completion"])]
            ids = pad_rows([p["input_ids"] for p in pairs], tokenizer.pad_token_id).to(device)
            attn = pad_rows([[1] * len(p["input_ids"]) for p in pairs], 0).to(device)
            comp = pad_rows([p["completion_mask"] for p in pairs], 0).to(device)
            seq = sequence_uncertainty(ensemble, ids, attn, comp)
            result.reference_epistemic.extend(seq["epistemic"].tolist())
            result.logp_variance.extend(seq["logp_variance"].tolist())
        if progress is not None:
            progress(min(start + batch_size, len(dataset)))
    if not has_answer:
        result.member_correct = []
    return result
