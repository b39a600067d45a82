"""Ensemble uncertainty, end to end, against a plain reference: one row at a time, no KV cache.

The reference decodes each prompt alone (no padding) with the ensemble's mixture, greedily: at every
step the K members score the whole sequence so far in one forward of K copies routed with
``ensemble.members([0, ..., K-1])`` (``use_cache=False``), :func:`token_uncertainty` of the last
position's ``[K, V]`` logits gives the step's total / aleatoric / epistemic, the next token is the
argmax of ``mean_k softmax(logits_k)``, and decoding stops after end-of-sequence. Completions given
in advance are scored the same way: one forward per row, :func:`token_uncertainty` of the positions
that predict the completion tokens, averaged over them.

Against it:

* :func:`mixture_generate` on a batch of three left-padded prompts of different lengths (KV cache,
  all members in one K*B pass), and on each prompt alone: the same tokens and per-step uncertainty
  up to end-of-sequence;
* :func:`sequence_uncertainty` on a right-padded batch of completions;
* :func:`manyminds.evaluation.ensemble.evaluate_ensemble` (batches of 3 and of 1): ``epistemic``,
  ``max_epistemic``, ``total``, ``aleatoric`` (the mixture's own tokens, cut at end-of-sequence) and
  ``reference_epistemic`` / ``logp_variance`` (the dataset's completions).

End-of-sequence: a random tiny model never emits ``<eos>``, so the tokenizer's eos is set to the token
the mixture emits at step 1 of the first prompt (and not at step 0): that row ends after two tokens,
another one later or never, and the steps ``generate`` still runs for a finished row are in the
output, so a missing cut shows.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.ensemble import (
    EnsembleLoRA,
    mixture_generate,
    sequence_uncertainty,
    token_uncertainty,
)
from manyminds.evaluation.ensemble import evaluate_ensemble
from manyminds.zoo.models import random_model
from manyminds.rows import encode_pair, pad_left, pad_rows, tokenize_prompts

K = 3
MAX_NEW = 8
PROMPTS = ["1+2=", "17+25=", "9*9"]            # different lengths: left padding in a batch
COMPLETIONS = ["3", "42", "81!"]                # different lengths: right padding in a batch
KEYS = ("total", "aleatoric", "epistemic")
TOL = 1e-5   # the mixture's logits processor works in float32; the reference in float64


def _ensemble() -> EnsembleLoRA:
    base = random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0, dtype=torch.float64)
    return EnsembleLoRA(base, num_members=K, r=4, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"],
                        init="diverse", init_std=0.5, seed=0)


@torch.no_grad()
def _member_logits(ens, ids: list[int]) -> torch.Tensor:
    """``[K, L, V]`` float64 logits of every member on one unpadded row, one plain forward (no cache)."""
    x = torch.tensor([ids] * K)
    with ens.members(list(range(K))):
        return ens(input_ids=x, use_cache=False).logits.double()


def _reference_decode(ens, prompt_ids: list[int], eos: int | None) -> dict:
    """Greedy mixture decoding of one prompt, no cache: ``tokens`` and per-step ``total`` /
    ``aleatoric`` / ``epistemic`` (float64 lists), stopping after ``eos``."""
    seq = list(prompt_ids)
    out = {"tokens": [], **{key: [] for key in KEYS}}
    for _ in range(MAX_NEW):
        logits = _member_logits(ens, seq)[:, -1]                               # [K, V]
        u = token_uncertainty(logits[:, None])                                 # [K, 1, V] -> [1] each
        token = int(logits.softmax(-1).mean(0).argmax())
        out["tokens"].append(token)
        for key in KEYS:
            out[key].append(float(u[key]))
        seq.append(token)
        if token == eos:
            break
    return out


def _reference_completion(ens, ids: list[int], completion_mask: list[int]) -> dict:
    """Mean token uncertainty over the completion of one unpadded row, and the members' summed
    completion log-probs ``[K]``."""
    start = completion_mask.index(1)                                           # first completion token
    logits = _member_logits(ens, ids)                                          # [K, L, V]
    predicting = logits[:, start - 1:len(ids) - 1]                             # [K, n, V]
    u = token_uncertainty(predicting[:, None])                                 # [1, n] each
    logq = predicting.log_softmax(-1)
    logp = logq.gather(-1, torch.tensor(ids[start:])[None, :, None].expand(K, -1, 1)).squeeze(-1).sum(-1)  # [K]
    out = {key: u[key][0].mean().item() for key in KEYS}
    out["per_token_epistemic"] = u["epistemic"][0]
    out["shifted_epistemic"] = token_uncertainty(logits[:, None, start:len(ids)])["epistemic"].mean().item()
    out["member_logps"] = logp
    out["logp_variance"] = logp.var(unbiased=False).item()
    return out


@pytest.fixture(scope="module")
def setup():
    ens = _ensemble()
    tok = build_tokenizer()
    rows = tokenize_prompts(tok, PROMPTS)
    assert len({len(r) for r in rows}) == len(rows)                             # padding is exercised
    # eos := the mixture's token at step 1 of prompt 0 (see the module docstring)
    probe = _reference_decode(ens, rows[0], eos=None)
    assert probe["tokens"][1] != probe["tokens"][0]
    tok.eos_token = tok.convert_ids_to_tokens(probe["tokens"][1])
    eos = tok.eos_token_id
    assert eos == probe["tokens"][1]
    refs = [_reference_decode(ens, r, eos) for r in rows]
    lengths = [len(r["tokens"]) for r in refs]
    assert lengths[0] == 2 and any(n > 2 for n in lengths), lengths
    assert any(r["tokens"][-1] != eos for r in refs), "one row should run to MAX_NEW without eos"
    return ens, tok, rows, refs


def test_reference_is_not_trivial(setup):
    """Members disagree, and the values after end-of-sequence differ from those before it."""
    ens, tok, rows, refs = setup
    for ref in refs:
        assert min(ref["epistemic"]) > 0.1
    # what generate computes past eos for the finished row 0, and the longer uncut mean it would give
    enc = pad_left(rows, tok.pad_token_id)
    out = mixture_generate(ens, **enc, max_new_tokens=MAX_NEW, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    n = len(refs[0]["tokens"])
    assert out.uncertainty["epistemic"].shape[1] > n
    cut, uncut = out.uncertainty["epistemic"][0, :n].mean(), out.uncertainty["epistemic"][0].mean()
    assert abs(cut - uncut) > 1e-3
    # left padding matters: the same batch with the pads attended to gives other numbers
    unmasked = mixture_generate(ens, enc["input_ids"], torch.ones_like(enc["attention_mask"]),
                                max_new_tokens=MAX_NEW, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert (unmasked.uncertainty["epistemic"][1:, 0] - out.uncertainty["epistemic"][1:, 0]).abs().max() > 1e-3


def _assert_matches_reference(out, b: int, T: int, ref: dict) -> None:
    """Row ``b`` of a :class:`MixtureOutput` (prompt width ``T``) equals ``ref`` up to end-of-sequence."""
    n = len(ref["tokens"])
    assert out.sequences[b, T:T + n].tolist() == ref["tokens"]
    for key in KEYS:
        torch.testing.assert_close(out.uncertainty[key][b, :n].double(), torch.tensor(ref[key], dtype=torch.float64),
                                   rtol=0, atol=TOL, msg=f"row {b} {key}")


def test_mixture_generate_batch_equals_rows_equals_reference(setup):
    ens, tok, rows, refs = setup
    kw = {"max_new_tokens": MAX_NEW, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    enc = pad_left(rows, tok.pad_token_id)
    batch = mixture_generate(ens, **enc, **kw)
    for b, ref in enumerate(refs):
        _assert_matches_reference(batch, b, enc["input_ids"].shape[1], ref)
        alone = mixture_generate(ens, torch.tensor([rows[b]]), **kw)
        _assert_matches_reference(alone, 0, len(rows[b]), ref)


def _completion_batch(tok):
    pairs = [encode_pair(tok, p, c, None) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    ids = [p["input_ids"] for p in pairs]
    masks = [p["completion_mask"] for p in pairs]
    return ids, masks


def test_sequence_uncertainty_matches_reference(setup):
    ens, tok, _, _ = setup
    ids, masks = _completion_batch(tok)
    assert len({len(r) for r in ids}) == len(ids)                               # right padding is exercised
    refs = [_reference_completion(ens, i, m) for i, m in zip(ids, masks)]
    for ref in refs:
        # which positions are averaged matters: the window one position later gives another mean
        assert ref["per_token_epistemic"].numel() >= 2
        assert abs(ref["shifted_epistemic"] - ref["epistemic"]) > 1e-3
    out = sequence_uncertainty(ens, pad_rows(ids, tok.pad_token_id), pad_rows([[1] * len(i) for i in ids], 0),
                               pad_rows(masks, 0))
    for key in KEYS:
        torch.testing.assert_close(out[key].double(), torch.tensor([r[key] for r in refs], dtype=torch.float64),
                                   rtol=0, atol=1e-9, msg=key)
    torch.testing.assert_close(out["member_logps"].double(), torch.stack([r["member_logps"] for r in refs], 1),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(out["logp_variance"].double(),
                               torch.tensor([r["logp_variance"] for r in refs], dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [3, 1])
def test_evaluate_ensemble_matches_reference(setup, batch_size):
    # batch_size=1: generate itself stops at each row's eos; only in the batch of 3 does a finished
    # row have steps after its eos that evaluate_ensemble must cut off
    ens, tok, _, refs = setup
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])
    out = evaluate_ensemble(ens, tok, data, batch_size=batch_size, max_new_tokens=MAX_NEW)
    ids, masks = _completion_batch(tok)
    for b, ref in enumerate(refs):
        epistemic = torch.tensor(ref["epistemic"])
        assert out.epistemic[b] == pytest.approx(epistemic.mean().item(), abs=TOL)
        assert out.max_epistemic[b] == pytest.approx(epistemic.max().item(), abs=TOL)
        assert out.total[b] == pytest.approx(sum(ref["total"]) / len(ref["total"]), abs=TOL)
        assert out.aleatoric[b] == pytest.approx(sum(ref["aleatoric"]) / len(ref["aleatoric"]), abs=TOL)
        seq = _reference_completion(ens, ids[b], masks[b])
        assert out.reference_epistemic[b] == pytest.approx(seq["epistemic"], abs=1e-9)
        assert out.logp_variance[b] == pytest.approx(seq["logp_variance"], rel=1e-5, abs=1e-6)


def test_a_new_score_is_one_entry_of_the_table(setup, monkeypatch):
    """Adding an uncertainty score is one entry of manyminds.ensemble.scores.SCORES: evaluation, its
    records and the summary's AUROC all pick it up (here: the largest token entropy of the mixture)."""
    import manyminds.evaluation.ensemble as evaluation_ensemble
    from manyminds.ensemble.scores import SCORES, UncertaintyScore

    ens, tok, _, refs = setup
    table = (*SCORES, UncertaintyScore("max_total", "steps", lambda u: u["total"].max().item()))
    monkeypatch.setattr(evaluation_ensemble, "SCORES", table)
    monkeypatch.setattr("manyminds.ensemble.scores.SCORES", table)
    data = Dataset.from_list([{"prompt": p} for p in PROMPTS])
    out = evaluate_ensemble(ens, tok, data, batch_size=3, max_new_tokens=MAX_NEW)
    want = [max(ref["total"]) for ref in refs]
    assert out.max_total == pytest.approx(want, abs=TOL)
    assert [r["uncertainty"]["max_total"] for r in out.records()] == pytest.approx(want, abs=TOL)
    labels = [0, 1] + [0] * (len(PROMPTS) - 2)
    assert "auroc_max_total" in out.summary(labels)
    with pytest.raises(ValueError, match="source must be one of"):
        UncertaintyScore("x", "tokens", max)
