"""Does epistemic uncertainty flag contested items when no token marks them?

On ``conflict`` the contested prompts carry an ``@``, and the alpha = 0 ensemble's own predictive
entropy already flags them perfectly (docs/ensemble.md). ``conflict_meaning`` (``a-b`` is the
signed difference for one annotator group and the distance ``|a-b|`` for the other; contested iff
``a < b``, no token says so) removes the marker. This script measures it the way
``examples/ensemble_evidence.py`` measures ``conflict``: alpha-Renyi SFT ensembles (K LoRA members,
r = 8 on every linear layer) at each alpha, plus one LoRA (K = 1), on the same training rows; then,
on the same test prompts, the AUROC of flagging contested prompts by

- ``max_mi`` / ``mean_mi``: the members' mutual information over the tokens of the mixture's greedy
  answer (max / mean), ``ref_mi``: mean MI on the reference completion, ``disagreement`` of the
  members' final answers, ``logp_var``: variance of the members' log-likelihoods of the reference;
- ``total_mean`` / ``total_max``: the predictive entropy of the mixture's answer tokens (mean / max),
  the score one model has; for the single LoRA that is its own entropy.

Each AUROC has a 95% stratified bootstrap interval (:func:`manyminds.evaluation.stats.auroc_interval`);
score pairs on the same prompts (MI vs the run's own total entropy, MI vs the single LoRA's entropy)
get a paired stratified bootstrap of the AUROC difference with a two-sided p-value.

    # the measured run (docs/data/conflict_meaning/summary.md): ~35 min on one shared CPU thread
    OMP_NUM_THREADS=1 nice -n 15 python examples/conflict_meaning_evidence.py --steps 500 \\
        --n-train 2000 --n-test 200 --out docs/data/conflict_meaning

It also reports which reading each member follows on contested prompts (signed, distance, or just
a negative answer, the signed reading's sign even when the digits are wrong) and the members'
responsibilities of signed / distance / control completions.

Writes ``<out>/items.jsonl`` (one row per test prompt and run: scores, answers, responsibilities),
``<out>/results.json`` (settings, machine, AUROCs, paired tests, per member readings) and
``<out>/summary.md``. Results are written after every run, so a killed run keeps what it finished.
Every summary number is a function of ``items.jsonl``: ``--from-items`` recomputes them all without
training (``python examples/conflict_meaning_evidence.py --out docs/data/conflict_meaning --from-items``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import ensemble_evidence as ee
import numpy as np
import torch

import manyminds
from manyminds.ensemble import mixture_generate
from manyminds.ensemble.uncertainty import sequence_uncertainty
from manyminds.evaluation.ensemble import evaluate_ensemble
from manyminds.evaluation.stats import auroc_interval, paired_auroc
from manyminds.rows import pad_id_of, pad_left, tokenize_prompts
from manyminds.tasks import load_task

ENSEMBLE_SCORES = ("max_mi", "mean_mi", "ref_mi", "disagreement", "logp_var", "total_mean", "total_max")
SINGLE_SCORES = ("total_mean", "total_max")


def _operands(prompt: str) -> tuple[int, int]:
    a, b = prompt.removeprefix("Q: ").split("\n")[0].split("-")
    return int(a), int(b)


@torch.no_grad()
def token_scores(ensemble, tokenizer, prompts, args) -> dict[str, list[float]]:
    """Max and mean over the mixture's greedy answer tokens (up to and including eos) of the
    predictive entropy and of the mutual information: ``{"total_max", "total_mean", "max_mi",
    "mean_mi"}``, each ``[N]`` (the same decoding as :func:`evaluate_ensemble`)."""
    pad, eos = pad_id_of(tokenizer), tokenizer.eos_token_id
    out = {key: [] for key in ("total_max", "total_mean", "max_mi", "mean_mi")}
    for s in range(0, len(prompts), args.eval_batch):
        enc = pad_left(tokenize_prompts(tokenizer, prompts[s:s + args.eval_batch]), pad, torch.device("cpu"))
        T = enc["input_ids"].shape[1]
        mix = mixture_generate(ensemble, **enc, max_new_tokens=args.max_new_tokens, pad_token_id=pad,
                               eos_token_id=eos)
        for b in range(enc["input_ids"].shape[0]):
            ids = mix.sequences[b, T:].tolist()
            n = ids.index(eos) + 1 if eos in ids else len(ids)
            tot, epi = mix.uncertainty["total"][b, :n], mix.uncertainty["epistemic"][b, :n]   # [n]
            out["total_max"].append(tot.max().item())
            out["total_mean"].append(tot.mean().item())
            out["max_mi"].append(epi.max().item())
            out["mean_mi"].append(epi.mean().item())
    return out


def reading(answer: str | None, a: int, b: int) -> str:
    """Which reading of ``a-b`` an answer follows: ``signed``, ``distance`` (both when ``a >= b``),
    ``both`` or ``other``."""
    signed, distance = answer == str(a - b), answer == str(abs(a - b))
    return "both" if signed and distance else "signed" if signed else "distance" if distance else "other"


@torch.no_grad()
def analyse(ensemble, tokenizer, test, args) -> list[dict]:
    """One dict per test prompt: label, convention, scores, every member's and the mixture's final
    answer, and the members' responsibilities ``softmax_k log p_k(y|x)`` of the reference completion."""
    ensemble.eval()
    K = ensemble.num_members
    ev = evaluate_ensemble(ensemble, tokenizer, test, batch_size=args.eval_batch,
                           max_new_tokens=args.max_new_tokens)
    scores = token_scores(ensemble, tokenizer, list(test["prompt"]), args)
    logps = []
    for s in range(0, len(test), args.eval_batch):
        rows = test[s:s + args.eval_batch]
        ids, attn, comp = ee._encode(tokenizer, rows["prompt"], rows["completion"])
        logps.append(sequence_uncertainty(ensemble, ids, attn, comp)["member_logps"])
    post = torch.softmax(torch.cat(logps, 1), 0)                                 # [K, N] responsibilities
    if K > 1:
        scores |= {"ref_mi": list(ev.reference_epistemic), "disagreement": list(ev.disagreement),
                   "logp_var": list(ev.logp_variance)}
    return [{"prompt": row["prompt"], "conflicting": row["conflicting"], "convention": row["convention"],
             "answer": row["answer"], "scores": {k: v[i] for k, v in scores.items()},
             "member_answers": [ev.member_answers[k][i] for k in range(K)],
             "mixture_answer": ev.mixture_answer[i], "responsibilities": post[:, i].tolist()}
            for i, row in enumerate(test)]


def _shares(answers: list, operands: list[tuple[int, int]]) -> dict[str, float]:
    """Over one kind of prompt: the share of answers following each reading (:func:`reading`), and
    the share that are negative (the sign is the signed reading's mark even when the digits are wrong)."""
    n = max(1, len(answers))
    got = [reading(x, a, b) for x, (a, b) in zip(answers, operands)]
    return {"signed": sum(g in ("signed", "both") for g in got) / n,
            "distance": sum(g in ("distance", "both") for g in got) / n,
            "negative": sum(x is not None and x.startswith("-") for x in answers) / n,
            "no_answer": sum(x is None for x in answers) / n}


def summarize(items: list[dict], args) -> dict:
    """A run's summary from its items: AUROC of each score with its 95% interval, readings per member
    and of the mixture on contested prompts and controls, mean responsibilities by convention, and
    mean scores by kind. A pure function of the items (``--from-items`` recomputes it)."""
    K = len(items[0]["member_answers"])
    labels = [int(it["conflicting"]) for it in items]
    names = ENSEMBLE_SCORES if K > 1 else SINGLE_SCORES
    summary = {"auroc": {}}
    for name in names:
        value, (lo, hi) = auroc_interval([it["scores"][name] for it in items], labels, seed=args.seed,
                                         n_boot=args.n_boot)
        summary["auroc"][name] = {"value": value, "low": lo, "high": hi}
    kinds = {"contested": [it for it in items if it["conflicting"]],
             "control": [it for it in items if not it["conflicting"]]}
    ops = {kind: [_operands(it["prompt"]) for it in rows] for kind, rows in kinds.items()}
    summary["per_member"] = [{kind: _shares([it["member_answers"][k] for it in rows], ops[kind])
                              for kind, rows in kinds.items()} for k in range(K)]
    summary["mixture"] = {kind: _shares([it["mixture_answer"] for it in rows], ops[kind])
                          for kind, rows in kinds.items()}
    resp = np.array([it["responsibilities"] for it in items])                    # [N, K]
    summary["responsibilities"] = {c: resp[[it["convention"] == c for it in items]].mean(0).tolist()
                                   for c in ("signed", "distance", "none")}
    summary["mean_scores"] = {name: {kind: float(np.mean([it["scores"][name] for it in rows]))
                                     for kind, rows in kinds.items()} for name in names}
    return summary


def comparisons(items: dict[str, list[dict]], args) -> list[dict]:
    """Paired AUROC differences on the same test prompts: each ensemble's MI scores against its own
    total entropy; its scores against the single LoRA's entropy; each alpha > 0 against alpha = 0."""
    single = "single LoRA" if "single LoRA" in items else None
    ensembles = [run for run in items if run != "single LoRA"]
    pairs = []
    for run in ensembles:
        pairs += [(run, mi, run, tot) for mi in ("max_mi", "mean_mi", "ref_mi") for tot in ("total_max", "total_mean")]
        if single:
            pairs += [(run, sa, single, sb) for sa in ("max_mi", "mean_mi", "ref_mi", "total_mean")
                      for sb in ("total_mean", "total_max")] + [(run, "total_max", single, "total_max")]
    if "alpha=0" in ensembles:
        pairs += [(run, name, "alpha=0", name) for run in ensembles if run != "alpha=0"
                  for name in ("max_mi", "mean_mi", "ref_mi", "total_mean")]
    labels = [int(it["conflicting"]) for it in items[ensembles[0] if ensembles else single]]
    rows = []
    for ra, sa, rb, sb in pairs:
        if [it["prompt"] for it in items[ra]] != [it["prompt"] for it in items[rb]]:
            raise ValueError(f"runs {ra!r} and {rb!r} were scored on different prompts; rerun them together")
        a = [it["scores"][sa] for it in items[ra]]
        b = [it["scores"][sb] for it in items[rb]]
        diff, (lo, hi), p = paired_auroc(a, b, labels, n_boot=args.n_boot, seed=args.seed)
        rows.append({"a": f"{ra}: {sa}", "b": f"{rb}: {sb}", "diff": diff, "low": lo, "high": hi, "p": p})
    return rows


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "load_at_start": os.getloadavg()}


def write_summary(results: dict, path: Path) -> None:
    s = results["settings"]
    lines = ["# conflict_meaning: flagging contested items that no token marks", "",
             f"Command: `{results['command']}`", "",
             (f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"torch {results['machine']['torch']} with {results['machine']['torch_threads']} thread(s), "
             f"load at start {', '.join(f'{x:.1f}' for x in results['machine']['load_at_start'])} (shared machine); "
             f"date {results['date']}."), "",
             *([(f"Summary recomputed from `items.jsonl` by `{results['summarized']['command']}` "
                 f"({results['summarized']['date']})."), ""] if "summarized" in results else []),
             f"Model `{results['model']}`; K = {s['members']} members, LoRA r = {s['r']} on every linear layer, "
             f"lr {s['lr']}, batch {s['batch_size']}, {s['steps']} steps, {s['n_train']} training rows, "
             f"{results['n_test']} test prompts ({results['n_contested']} contested, "
             f"{results['n_test'] - results['n_contested']} controls), digits = {s['digits']}, seed {s['seed']}. "
             f"Seconds per run: " + ", ".join(f"{k} {v}" for k, v in results["seconds"].items()) + ".", "",
             "## AUROC of flagging contested prompts (95% stratified bootstrap interval)", "",
             "| run | " + " | ".join(ENSEMBLE_SCORES) + " |", "|---|" + "---|" * len(ENSEMBLE_SCORES)]
    for run, r in results["runs"].items():
        cells = []
        for name in ENSEMBLE_SCORES:
            x = r["auroc"].get(name)
            cells.append("-" if x is None else f"{x['value']:.3f} [{x['low']:.2f}, {x['high']:.2f}]")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired AUROC differences on the same prompts (a - b, 95% interval, bootstrap p)", "",
              "| a | b | diff | interval | p |", "|---|---|---|---|---|"]
    for c in results.get("comparisons", []):
        lines.append(f"| {c['a']} | {c['b']} | {c['diff']:+.3f} | [{c['low']:+.3f}, {c['high']:+.3f}] | {c['p']:.4f} |")
    lines += ["", "## Readings", "",
              ("Greedy final answers: share of contested prompts answered with the signed reading (a - b), "
               "the distance reading (|a - b|) or with a negative number (the signed reading's sign, even when "
               "the digits are wrong), and of controls answered correctly or negative. Then the mean "
               "responsibility `softmax_k log p_k(y|x)` of the reference completions by convention."), "",
              "| run | who | contested: signed | distance | negative | control: correct | negative |",
              "|---|---|---|---|---|---|---|"]
    for run, r in results["runs"].items():
        for who, sh in [("mixture", r["mixture"])] + [(f"member {k}", m) for k, m in enumerate(r["per_member"])]:
            c, n = sh["contested"], sh["control"]
            lines.append(f"| {run} | {who} | {c['signed']:.2f} | {c['distance']:.2f} | {c['negative']:.2f} | "
                         f"{n['signed']:.2f} | {n['negative']:.2f} |")
    lines += ["", "| run | resp. signed | resp. distance | resp. control |", "|---|---|---|---|"]
    for run, r in results["runs"].items():
        resp = r["responsibilities"]
        lines.append(f"| {run} | " + " | ".join("[" + ", ".join(f"{v:.2f}" for v in resp[c]) + "]"
                                               for c in ("signed", "distance", "none")) + " |")
    lines += ["", "Mean score, contested / control:", ""]
    for run, r in results["runs"].items():
        lines.append(f"- {run}: " + ", ".join(f"{k} {v['contested']:.3f} / {v['control']:.3f}"
                                             for k, v in r["mean_scores"].items()))
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="zoo name or model folder (default: the default model)")
    parser.add_argument("--alphas", default="0,0.8", help="comma-separated alphas of the K-member runs")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--digits", type=int, default=2, help="conflict_meaning's digits knob")
    parser.add_argument("--eval-batch", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of each interval / test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default="peft", choices=["peft", "diverse"], help="member initialization")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--skip-single", action="store_true", help="no single-LoRA baseline")
    parser.add_argument("--out", default="conflict-meaning-evidence", help="folder of the results")
    parser.add_argument("--work-dir", default="/tmp/conflict-meaning-runs", help="trainers' output folders")
    parser.add_argument("--from-items", action="store_true",
                        help="train nothing: recompute every summary number from <out>/items.jsonl")
    args = parser.parse_args(argv)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out)
    if args.from_items:
        results, items = _read(out)
        results["summarized"] = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds")}
        _write(results, items, out, final=True)
        print((out / "summary.md").read_text())
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from manyminds import zoo

    model_name = args.model or zoo.DEFAULT_MODEL
    base_path = zoo.resolve(model_name)
    _, tokenizer = manyminds.load(base_path)
    out.mkdir(parents=True, exist_ok=True)
    train = load_task("conflict_meaning", split="train", n=args.n_train, seed=args.seed, digits=args.digits)
    test = load_task("conflict_meaning", split="test", n=args.n_test, seed=args.seed, digits=args.digits)
    labels = [int(x) for x in test["conflicting"]]
    results = {"command": command,
               "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
               "model": model_name, "settings": vars(args), "n_test": len(test), "n_contested": sum(labels),
               "runs": {}, "seconds": {}, "last_log": {}}
    items: dict[str, list[dict]] = {}
    runs = [(f"alpha={float(a):g}", float(a), args.members) for a in args.alphas.split(",")]
    if not args.skip_single:
        runs.append(("single LoRA", 0.0, 1))
    for name, alpha, K in runs:
        start = time.time()
        ensemble, history = ee.train_sft(base_path, tokenizer, train, alpha, K, args, Path(args.work_dir) / name)
        items[name] = analyse(ensemble, tokenizer, test, args)
        results["last_log"][name] = next((h for h in reversed(history) if "loss" in h), {})
        results["seconds"][name] = round(time.time() - start, 1)
        _write(results, items, out, final=False)
        print(f"[{name}] " + " ".join(f"{k}={v['value']:.3f}" for k, v in results["runs"][name]["auroc"].items())
              + f" ({results['seconds'][name]}s)", flush=True)
    _write(results, items, out, final=True)
    print((out / "summary.md").read_text())


def _read(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """``results.json`` and the items of ``items.jsonl`` by run (in file order)."""
    for name in ("results.json", "items.jsonl"):
        if not (out / name).exists():
            raise SystemExit(f"{out / name} does not exist; pass the --out folder of a finished run")
    results = json.loads((out / "results.json").read_text())
    # results.json of the first version kept each run's last training log inside its summary
    results.setdefault("last_log", {run: r.get("last_log", {}) for run, r in results.get("runs", {}).items()})
    items: dict[str, list[dict]] = {}
    for line in (out / "items.jsonl").read_text().splitlines():
        row = json.loads(line)
        items.setdefault(row.pop("run"), []).append(row)
    return results, items


def _write(results: dict, items: dict[str, list[dict]], out: Path, final: bool) -> None:
    """Every summary number from ``items`` (bootstrap settings of the run), then the three files."""
    stored = argparse.Namespace(**results["settings"])
    results["runs"] = {run: summarize(its, stored) for run, its in items.items()}
    if final:
        results["comparisons"] = comparisons(items, stored)
    with open(out / "items.jsonl", "w") as f:
        for run, its in items.items():
            f.writelines(json.dumps({"run": run, **it}) + "\n" for it in its)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_summary(results, out / "summary.md")


if __name__ == "__main__":
    main()
