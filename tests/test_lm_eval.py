"""lm-evaluation-harness integration: lm-eval's numbers for a mind, a vote of minds, an ensemble
member and an exported mind equal manyminds' own evaluation of them on the same problems.

The model is the session's ``micro-arith`` (tests/conftest.py). Every comparison is per problem
(the final answer of each of the first ``N`` bundled problems), not only the accuracy, and each
first checks that the things it tells apart really differ.
"""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager

from manyminds.ensemble import EnsembleLoRA
from manyminds.harness import TASKS_DIR, ManyMindsLM, vote_index
from manyminds.population import Population, export_mind, population_vote
from manyminds.tasks import extract_answer, load_task, verify_answer

N = 20  # problems evaluated (lm-eval's limit): the first N rows of the bundled file
SIGMA, NORMS = 0.2, "blocks"  # a large sigma so minds differ on this small model; "blocks" folds exactly
GEN = {"max_new_tokens": 48, "do_sample": False}  # the task YAML's max_gen_toks, greedy
TASK = "manyminds_arith"


@pytest.fixture(scope="module")
def rows():
    with open(Path(TASKS_DIR) / "arith_test.jsonl") as f:
        return [json.loads(line) for line in f][:N]


def lm_eval_answers(model, include=TASKS_DIR, task=TASK, **model_args):
    """Run lm-eval on the first N problems; returns (accuracy per filter, final answers in doc order)."""
    out = lm_eval.simple_evaluate(model=model, model_args=model_args or None, tasks=[task],
                                  task_manager=TaskManager(include_path=include, include_defaults=False),
                                  limit=N, log_samples=True, batch_size=N, device="cpu")
    res = out["results"][task]
    acc = {f: res[f"exact_match,{f}"] for f in ("final-answer", "strict-match")}
    samples = sorted((s for s in out["samples"][task] if s["filter"] == "final-answer"), key=lambda s: s["doc_id"])
    return acc, [s["filtered_resps"][0] for s in samples]


def own_answers(texts, rows):
    """manyminds' scoring: (accuracy by verify_answer, final answers as the task's final-answer filter writes them)."""
    acc = sum(verify_answer(t, r["answer"]) for t, r in zip(texts, rows)) / len(rows)
    return acc, [extract_answer(t) or "[invalid]" for t in texts]


def mind_texts(model, tok, rows, mind):
    pop = Population(model, sigma=SIGMA, seed=0, norms=NORMS)
    return pop.generate([r["prompt"] for r in rows], minds=[mind] * len(rows), tokenizer=tok, **GEN)


@pytest.fixture(scope="module")
def own(trained_tiny, rows):
    model, tok = trained_tiny
    return {m: own_answers(mind_texts(model, tok, rows, m), rows) for m in (-1, 0, 3)}


def test_bundled_task_is_the_arith_test_split(rows):
    with open(Path(TASKS_DIR) / "arith_test.jsonl") as f:
        bundled = [json.loads(line) for line in f]
    assert bundled == list(load_task("arith", split="test", n=200, seed=0))


def test_prompts_tokenized_as_manyminds_generates(trained_tiny, trained_tiny_path, rows):
    """HFLM encodes the prompt exactly as Population.generate does (no BOS for this tokenizer)."""
    _, tok = trained_tiny
    lm = ManyMindsLM(pretrained=str(trained_tiny_path), mind=0, sigma=SIGMA, norms=NORMS, device="cpu")
    prompts = [r["prompt"] for r in rows[:3]]
    ids, _ = lm.tok_batch_encode(prompts)
    assert ids.tolist() == tok(prompts, padding=True, padding_side="left").input_ids


def test_lm_eval_accuracy_of_a_mind_equals_manyminds(own, trained_tiny_path):
    # the minds answer differently from each other and from the plain model: nothing passes trivially
    assert own[0][1] != own[3][1] and own[0][1] != own[-1][1] and own[3][1] != own[-1][1]
    for mind in (0, 3):
        acc, answers = lm_eval_answers("manyminds", pretrained=str(trained_tiny_path), sigma=SIGMA,
                                       norms=NORMS, mind=mind)
        assert answers == own[mind][1], f"mind {mind}"
        assert acc["final-answer"] == pytest.approx(own[mind][0], abs=0), f"mind {mind}"


def test_exported_mind_with_plain_hf_gives_the_same_number(trained_tiny, trained_tiny_path, own, tmp_path):
    model, tok = trained_tiny
    folder = export_mind(Population(model, sigma=SIGMA, seed=0, norms=NORMS), 3, tmp_path / "mind3", tokenizer=tok)
    _, plain = lm_eval_answers("hf", pretrained=str(trained_tiny_path))
    assert plain == own[-1][1]  # lm-eval's hf model on the original checkpoint is mind -1
    acc, answers = lm_eval_answers("hf", pretrained=str(folder))
    assert answers == own[3][1] != plain
    assert acc["final-answer"] == own[3][0]
    mind_acc, _ = lm_eval_answers("manyminds", pretrained=str(trained_tiny_path), sigma=SIGMA, norms=NORMS, mind=3)
    assert acc == mind_acc  # both filters: the exported mind and the in-memory mind score alike


def test_vote_of_minds_equals_population_vote(trained_tiny, trained_tiny_path, rows):
    model, tok = trained_tiny
    votes = population_vote(Population(model, sigma=SIGMA, seed=0, norms=NORMS), [r["prompt"] for r in rows],
                            minds=5, tokenizer=tok, **GEN)
    assert any(len(v.votes) > 1 for v in votes)  # the minds disagree somewhere
    lm = ManyMindsLM(pretrained=str(trained_tiny_path), minds=5, sigma=SIGMA, norms=NORMS, device="cpu",
                     batch_size=N)
    acc, answers = lm_eval_answers(lm)
    assert answers == [v.answer or "[invalid]" for v in votes]
    assert acc["final-answer"] == sum(v.answer == r["answer"] for v, r in zip(votes, rows)) / N
    by_prompt = {rec["prompt"]: rec for rec in lm.votes}
    for v, r in zip(votes, rows):  # every mind's continuation is the one manyminds generates
        assert by_prompt[r["prompt"]]["continuations"] == v.completions


@pytest.fixture(scope="module")
def saved_members(trained_tiny, tmp_path_factory):
    model, _ = trained_tiny
    ens = EnsembleLoRA(copy.deepcopy(model), num_members=3, r=4, init="diverse", init_std=0.3, seed=0)
    path = tmp_path_factory.mktemp("members")
    ens.save_members(path)
    return path


def member_texts(model, tok, path, rows):
    """Greedy completions of every member (and the base, key -1) as manyminds routes them."""
    ens = EnsembleLoRA.from_members(copy.deepcopy(model), path)
    enc = tok([r["prompt"] for r in rows], return_tensors="pt", padding=True, padding_side="left")
    texts = {}
    for k in (-1, 0, 1, 2):
        with ens.members([k] * len(rows)), torch.no_grad():
            out = ens.generate(**enc, pad_token_id=tok.pad_token_id, **GEN)
        texts[k] = tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return texts


def test_ensemble_member_and_member_vote(trained_tiny, trained_tiny_path, saved_members, rows):
    model, tok = trained_tiny
    texts = member_texts(model, tok, saved_members, rows)
    own = {k: own_answers(t, rows) for k, t in texts.items()}
    assert own[1][1] != own[-1][1] and own[1][1] != own[0][1]
    acc, answers = lm_eval_answers("manyminds", pretrained=str(trained_tiny_path), members=str(saved_members),
                                   member=1)
    assert answers == own[1][1] and acc["final-answer"] == own[1][0]
    majority = [vote_index([texts[k][i] for k in range(3)]) for i in range(N)]
    assert any(len({own[k][1][i] for k in range(3)}) > 1 for i in range(N))  # members disagree somewhere
    _, answers = lm_eval_answers("manyminds", pretrained=str(trained_tiny_path), members=str(saved_members))
    assert answers == [extract_answer(texts[j][i]) or "[invalid]" for i, (j, _) in enumerate(majority)]


def test_single_mind_loglikelihood_is_the_minds_log_prob(trained_tiny, trained_tiny_path, rows, tmp_path):
    """A loglikelihood task: lm-eval's score of each reference completion equals the sum of its token
    log-probs under the mind (manyminds computing them with pop.minds)."""
    model, tok = trained_tiny
    shutil.copy(Path(TASKS_DIR) / "utils.py", tmp_path / "utils.py")
    shutil.copy(Path(TASKS_DIR) / "arith_test.jsonl", tmp_path / "arith_test.jsonl")
    (tmp_path / "ll.yaml").write_text(
        "task: arith_ll\ncustom_dataset: !function utils.load_jsonl\n"
        "dataset_kwargs:\n  data_files:\n    test: arith_test.jsonl\ntest_split: test\n"
        "output_type: loglikelihood\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{completion}}'\n"
        "metric_list:\n  - metric: acc\n")
    pop = Population(model, sigma=SIGMA, seed=0, norms=NORMS)

    def own_ll(mind):
        out = []
        for r in rows:
            ids = tok(r["prompt"] + r["completion"], return_tensors="pt").input_ids  # [1, T]
            n_prompt = len(tok(r["prompt"]).input_ids)
            with pop.minds([mind]), torch.no_grad():
                logp = model(ids).logits.log_softmax(-1)[0, :-1]  # [T-1, V]: position t predicts t+1
            out.append(logp[n_prompt - 1:].gather(-1, ids[0, n_prompt:, None]).sum().item())
        return out

    want, plain = own_ll(3), own_ll(-1)
    assert max(abs(a - b) for a, b in zip(want, plain)) > 1e-2  # the mind changes the scores
    task_manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    lm = ManyMindsLM(pretrained=str(trained_tiny_path), mind=3, sigma=SIGMA, norms=NORMS, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=["arith_ll"], task_manager=task_manager, limit=N, log_samples=True)
    got = [s["resps"][0][0][0] for s in sorted(out["samples"]["arith_ll"], key=lambda s: s["doc_id"])]
    assert got == pytest.approx(want, abs=1e-4)
    # the vote answers generation tasks only, and says so
    voter = ManyMindsLM(pretrained=str(trained_tiny_path), minds=3, sigma=SIGMA, norms=NORMS, device="cpu")
    with pytest.raises(ValueError, match="generation .* tasks only.*mind=M"):
        lm_eval.simple_evaluate(model=voter, tasks=["arith_ll"], task_manager=task_manager, limit=2)


def test_missing_task_data_file_is_named(tmp_path, trained_tiny_path):
    lm = ManyMindsLM(pretrained=str(trained_tiny_path), mind=0, device="cpu")
    # the bundled loader (relative paths from the YAML's folder)
    shutil.copy(Path(TASKS_DIR) / "utils.py", tmp_path / "utils.py")
    yaml = (Path(TASKS_DIR) / f"{TASK}.yaml").read_text().replace("test: arith_test.jsonl", "test: missing.jsonl")
    assert "missing.jsonl" in yaml
    (tmp_path / f"{TASK}.yaml").write_text(yaml)
    with pytest.raises(FileNotFoundError, match=rf"task data file {tmp_path / 'missing.jsonl'} does not exist"):
        lm_eval.simple_evaluate(model=lm, tasks=[TASK], limit=2,
                                task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    # lm-eval's own json loader names the file too
    other = tmp_path / "json_task"
    other.mkdir()
    (other / "t.yaml").write_text(
        f"task: json_arith\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'nope.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: exact_match\n")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        lm_eval.simple_evaluate(model=lm, tasks=["json_arith"], limit=2,
                                task_manager=TaskManager(include_path=str(other), include_defaults=False))


def test_bad_model_args_say_what_to_pass(trained_tiny_path, tmp_path):
    path = str(trained_tiny_path)
    with pytest.raises(ValueError, match="exactly one of mind=M .* or minds=N"):
        ManyMindsLM(pretrained=path, device="cpu")
    with pytest.raises(ValueError, match="exactly one of"):
        ManyMindsLM(pretrained=path, mind=1, minds=4, device="cpu")
    with pytest.raises(ValueError, match="unknown model arg 'sigmaa'; did you mean 'sigma'"):
        ManyMindsLM(pretrained=path, mind=1, sigmaa=0.1, device="cpu")
    with pytest.raises(ValueError, match="sigma=-0.1"):
        ManyMindsLM(pretrained=path, mind=1, sigma=-0.1, device="cpu")
    with pytest.raises(ValueError, match="mind=-2"):
        ManyMindsLM(pretrained=path, mind=-2, device="cpu")
    with pytest.raises(ValueError, match="member=K needs members=DIR"):
        ManyMindsLM(pretrained=path, member=1, device="cpu")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        ManyMindsLM(pretrained=str(tmp_path / "nothing"), mind=0, device="cpu")
    with pytest.raises(FileNotFoundError, match="no ensemble checkpoint"):
        ManyMindsLM(pretrained=path, members=str(tmp_path / "nothing"), device="cpu")
    with pytest.raises(ValueError, match="seed='x'"):
        ManyMindsLM(pretrained=path, mind=1, seed="x", device="cpu")


def test_vote_index():
    assert vote_index([" 1+1=3\n#### 3", " #### 2", "#### 2", " #### 3"]) == (0, "3")  # tie: seen first
    assert vote_index(["no answer", " #### 7", "#### 5"]) == (1, "7")  # unanswered texts do not vote
    assert vote_index(["a", " b", "b "]) == (1, "b")  # no answers at all: the texts vote
    assert vote_index(["", " "]) == (0, "")


def test_cli_registers_the_model(trained_tiny_path, tmp_path, monkeypatch, capsys):
    """`python -m manyminds.harness` is lm_eval with the model registered; bad input ends in one line."""
    from manyminds.harness.__main__ import main

    monkeypatch.chdir(tmp_path)
    # indexing lm-eval's ~15k built-in tasks takes > 10 s; the CLI always does it, the test skips it
    init = TaskManager.__init__
    monkeypatch.setattr(TaskManager, "__init__", lambda self, *a, **k: init(self, *a, **{**k, "include_defaults": False}))
    shutil.copytree(TASKS_DIR, tmp_path / "tasks")
    args = ["--model", "manyminds", "--model_args", f"pretrained={trained_tiny_path},sigma={SIGMA},norms={NORMS},mind=3",
            "--tasks", TASK, "--limit", "2", "--device", "cpu", "--include_path", str(tmp_path / "tasks")]
    assert main(args) == 0
    assert "exact_match" in capsys.readouterr().out
    (tmp_path / "tasks" / "arith_test.jsonl").unlink()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: task data file") and "arith_test.jsonl" in err[-1]
