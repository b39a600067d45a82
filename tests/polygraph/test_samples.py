"""manyminds.polygraph without lm-polygraph: the samples are the minds' (members') greedy answers, every
log-prob is the scorer's teacher-forced log-prob, and the statistics follow lm-polygraph's conventions."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from manyminds.polygraph import (
    answer_key,
    draw_samples,
    polygraph_stats,
    run_estimators,
    stat_calculator,
)
from manyminds.population import Population

from .conftest import SIGMA


def _row_logps(model, route, mind: int, prompt_ids: list[int], answer: list[int]) -> np.ndarray:
    """Reference: one unpadded row, float64 log-softmax over the full vocabulary."""
    ids = torch.tensor([prompt_ids + answer])
    with route([mind]), torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()               # [T-1, V]
    logps = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
    return logps[len(prompt_ids) - 1:].numpy()


@pytest.fixture(scope="module")
def samples(tiny_arith, arith):
    model, tok = tiny_arith
    pop = Population(model, sigma=SIGMA, seed=0)
    # batch_size 4 < rows: several generate / scoring batches with padding of different widths
    return pop, draw_samples(pop, tok, arith[0][:3], ids=3, plain=True, max_new_tokens=40, batch_size=4)


def test_samples_are_the_minds_greedy_answers(tiny_arith, samples):
    _, tok = tiny_arith
    pop, s = samples
    for i, prompt in enumerate(s.prompts):
        texts = pop.generate([prompt], minds=s.ids, tokenizer=tok, do_sample=False, max_new_tokens=40)
        assert s.texts[i] == texts
    assert len({t for row in s.texts for t in row}) > 3  # the minds do not all say the same thing


def test_every_log_prob_is_the_scorers_teacher_forced_log_prob(tiny_arith, samples):
    model, tok = tiny_arith
    pop, s = samples
    assert s.scorer_ids == [0, 1, 2, -1]
    for i, prompt in enumerate(s.prompts):
        prompt_ids = tok(text=prompt)["input_ids"]
        for si, mind in enumerate(s.scorer_ids):
            for j, answer in enumerate(s.tokens[i]):
                ref = _row_logps(model, pop.minds, mind, list(prompt_ids), answer)
                np.testing.assert_allclose(s.token_logps[i][si][j], ref, rtol=0, atol=2e-5)
    logps = s.logps                                                         # [N, S, K]
    assert logps.shape == (3, 4, 3) and logps.dtype == np.float64
    # scorers disagree: the comparison above could not pass with one model scoring everything
    assert np.abs(logps[:, 0, :] - logps[:, 1, :]).max() > 1e-2


def test_stats_follow_lm_polygraphs_sampling_conventions(samples):
    _, s = samples
    st = polygraph_stats(s, "own")
    for i in range(len(s.prompts)):
        for j in range(len(s.ids)):
            tokens, own = s.tokens[i][j], s.token_logps[i][j][j]
            assert s.ended[i][j]  # 40 tokens suffice for these answers: each ends with eos
            # tokens and per-token log-likelihoods drop the eos; the summed log-prob keeps it
            assert st["sample_tokens"][i][j] == tokens[:-1]
            assert st["sample_log_likelihoods"][i][j] == pytest.approx(own[:-1].tolist(), abs=0, rel=0)
            assert st["sample_log_probs"][i][j] == pytest.approx(float(own.sum()), abs=1e-12)
    assert st["sample_texts"] is s.texts
    plain = polygraph_stats(s, "plain")
    assert np.asarray(plain["sample_log_probs"]) == pytest.approx(s.logps[:, 3, :], abs=1e-12)
    mixture = polygraph_stats(s, "mixture")
    expected = np.log(np.exp(s.logps[:, :3, :]).mean(axis=1))             # log (1/K) sum_k p_k(y_ij)
    assert np.asarray(mixture["sample_log_probs"]) == pytest.approx(expected, abs=1e-9)
    assert "sample_log_likelihoods" not in mixture
    # members x answers, without the plain scorer
    log_probas = st["ensemble_token_scores"]["ep_token_level_scores"]["log_probas"]
    assert log_probas.shape == (3, 3, 3) and np.array_equal(log_probas, s.logps[:, :3, :])


def test_semantic_classes_are_equal_final_answers():
    texts = [" 2+2=4\n#### 4", " 2+2=5\n#### 5", " 2+2=4.0\n#### 4.0", " junk", " junk", " other"]
    from manyminds.polygraph import Samples

    s = Samples(prompts=["q"], ids=list(range(6)), scorer_ids=list(range(6)), tokens=[[[1]] * 6], texts=[texts],
                ended=[[False] * 6], token_logps=[[[np.zeros(1)] * 6] * 6])
    st = polygraph_stats(s)
    assert [answer_key(t) for t in texts][:3] == ["4", "5", "4"]
    assert st["semantic_classes_entail"]["class_to_sample"][0] == [[0, 2], [1], [3, 4], [5]]
    assert st["semantic_classes_entail"]["sample_to_class"][0] == {0: 0, 1: 1, 2: 0, 3: 2, 4: 2, 5: 3}
    entail = st["semantic_matrix_entail"][0]
    assert entail[0, 2] == entail[2, 0] == entail[3, 4] == 1.0 and entail[0, 1] == entail[4, 5] == 0.0
    assert np.array_equal(st["semantic_matrix_contra"][0], 1.0 - entail)


def test_ensemble_members_are_samplers_and_minus_one_is_the_base():
    from manyminds.ensemble import EnsembleLoRA
    from manyminds.zoo import load

    model, tok = load("tiny-arith")  # a copy of its own: EnsembleLoRA wraps the model in place
    ens = EnsembleLoRA(model, num_members=2, init="diverse", init_std=0.5, seed=0)
    s = draw_samples(ens, tok, ["Q: 1+2\nA:", "Q: 7-3-1\nA:"], plain=True, max_new_tokens=24)
    assert s.ids == [0, 1] and s.scorer_ids == [0, 1, -1]
    prompt_ids = list(tok(text="Q: 7-3-1\nA:")["input_ids"])
    for si, member in enumerate(s.scorer_ids):
        for j in range(2):
            ref = _row_logps(ens, ens.members, member, prompt_ids, s.tokens[1][j])
            np.testing.assert_allclose(s.token_logps[1][si][j], ref, rtol=0, atol=2e-5)
    with ens.disabled(), torch.no_grad():  # -1: the frozen base, adapters off
        ids = torch.tensor([prompt_ids + s.tokens[1][0]])
        base = torch.log_softmax(ens(input_ids=ids).logits[0, :-1].double(), -1)
    ref = base.gather(1, ids[0, 1:, None])[len(prompt_ids) - 1:, 0].numpy()
    np.testing.assert_allclose(s.token_logps[1][2][0], ref, rtol=0, atol=2e-5)
    assert np.abs(s.logps[:, 0] - s.logps[:, 1]).max() > 1e-2  # members differ


def test_bad_arguments_name_the_fix(tiny_arith, samples):
    model, tok = tiny_arith
    _, s = samples
    with pytest.raises(ValueError, match="log_probs must be one of"):
        polygraph_stats(s, "mean")
    s_no_plain = type(s)(**{**vars(s), "scorer_ids": s.scorer_ids[:3]})
    with pytest.raises(ValueError, match="plain=True"):
        polygraph_stats(s_no_plain, "plain")
    with pytest.raises(TypeError, match="Population or EnsembleLoRA"):
        draw_samples(model, tok, ["Q: 1+1\nA:"], ids=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        draw_samples(Population(model, sigma=SIGMA), tok, ["Q: 1+1\nA:"], ids=2, num_return_sequences=2)


def test_without_lm_polygraph_the_error_names_the_extra(monkeypatch, samples):
    monkeypatch.setitem(sys.modules, "lm_polygraph", None)  # import lm_polygraph -> ImportError
    _, s = samples
    for call in (lambda: run_estimators([], polygraph_stats(s)), lambda: stat_calculator(None, None)):
        with pytest.raises(ImportError, match=r"pip install 'manyminds\[polygraph\]'.*tests/polygraph/run.sh"):
            call()
