"""Evidence for soft specialists: alpha-Renyi ensembles on contradictory SFT data and on DPO pairs
from two annotator groups.

SFT on ``conflict`` (the operator ``@`` means ``+`` for half the annotators and ``-`` for the other
half, mixed with unambiguous ``+``/``-`` controls), for alpha in {0, 0.5, 0.8, 1} and a single-LoRA
baseline (K = 1):

- responsibilities by example type: ``softmax_k(log p_k(y|x))`` of the test completions, for
  ``@``-as-plus, ``@``-as-minus and control examples (which member explains which data);
- per member: on ``@`` prompts, the share of greedy answers that follow the plus / minus reading;
  accuracy on the controls;
- AUROC of epistemic uncertainty (mutual information of the members' next-token distributions,
  max over the mixture-decoded answer; and on the reference completion) for telling ``@``
  prompts from controls. The single LoRA has no epistemic term; its baseline score is the
  predictive entropy (total uncertainty).

DPO on ``prefs`` for alpha in {0, 0.8}: per member, the rate at which it prefers the terse answer
on style pairs (where the groups disagree) and the correct answer on agreed pairs, judged by the
member's implicit reward margin; the variance of those rates across members (the paper's analogue:
the variance across members of the refusal rate).

Intervals (95%): Wilson for every accuracy and rate over its test examples, a stratified bootstrap
for every AUROC (:mod:`manyminds.evaluation.stats`). Every run is compared with the single LoRA on
the same test examples: its epistemic AUROCs against the single LoRA's total-entropy AUROC (paired
stratified bootstrap, :func:`paired_auroc`) and its mixture control accuracy (exact McNemar); the
DPO alphas are compared with the first one on the per-pair variance across members (paired
bootstrap). ``results.json`` keeps the per-example scores and outcomes (``per_example``), so every
interval and test can be recomputed from it.

    python examples/ensemble_evidence.py                 # default model, modest CPU size
    python examples/ensemble_evidence.py --steps 60 --n-train 256 --n-test 64   # quicker

Writes ``<out>/results.json``, ``<out>/results.md`` and ``<out>/ensemble_evidence.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch

import manyminds
from manyminds.ensemble import EnsembleLoRA, auroc
from manyminds.ensemble.uncertainty import (
    base_completion_logps,
    completion_logps,
    sequence_uncertainty,
)
from manyminds.evaluation.ensemble import evaluate_ensemble
from manyminds.evaluation.stats import (
    auroc_interval,
    mcnemar_exact,
    paired_auroc,
    paired_bootstrap,
    wilson_interval,
)
from manyminds.rows import encode_pair, pad_rows
from manyminds.tasks import extract_answer, load_task
from manyminds.training import RenyiDPOConfig, RenyiDPOTrainer, RenyiSFTConfig, RenyiSFTTrainer

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# per-example uncertainty scores of analyse_sft; the AUROC of score s is stored as f"auroc_{s}"
SCORES = ("max_epistemic", "mean_epistemic", "reference_epistemic", "answer_disagreement", "total_entropy",
          "logp_variance")


def _encode(tokenizer, prompts, completions):
    pairs = [encode_pair(tokenizer, p, c, None) for p, c in zip(prompts, completions)]
    ids = pad_rows([p["input_ids"] for p in pairs], tokenizer.pad_token_id)
    attn = pad_rows([[1] * len(p["input_ids"]) for p in pairs], 0)
    comp = pad_rows([p["completion_mask"] for p in pairs], 0)
    return ids, attn, comp


def _operands(prompt: str) -> tuple[int, int]:
    a, b = re.search(r"(\d+)@(\d+)", prompt).groups()
    return int(a), int(b)


def train_sft(base_path, tokenizer, train, alpha, K, args, out: Path):
    model, _ = manyminds.load(base_path)
    config = RenyiSFTConfig(output_dir=str(out), num_members=K, alpha=alpha, r=args.r,
                            lora_alpha=2 * args.r, target_modules=ALL_LINEAR, init=args.init,
                            max_steps=args.steps,
                            per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                            lr_scheduler_type="constant_with_warmup", warmup_steps=10,
                            logging_steps=10, save_strategy="no", disable_tqdm=True,
                            seed=args.seed, use_cpu=True, dataloader_pin_memory=False)
    trainer = RenyiSFTTrainer(model, config, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    return trainer.ensemble, trainer.state.log_history


@torch.no_grad()
def analyse_sft(ensemble: EnsembleLoRA, tokenizer, test, args) -> dict:
    K = ensemble.num_members
    ensemble.eval()
    # responsibilities of the test completions, by example type
    logps, ref_epi, ref_var = [], [], []
    for s in range(0, len(test), args.eval_batch):
        rows = test[s:s + args.eval_batch]
        ids, attn, comp = _encode(tokenizer, rows["prompt"], rows["completion"])
        seq = sequence_uncertainty(ensemble, ids, attn, comp)
        logps.append(seq["member_logps"])
        ref_epi += seq["epistemic"].tolist()
        ref_var += seq["logp_variance"].tolist()
    logp = torch.cat(logps, 1)                                          # [K, N]
    post = torch.softmax(logp, 0)                                       # alpha = 1 posterior routing
    conv = test["convention"]
    resp = {c: post[:, [i for i, x in enumerate(conv) if x == c]].mean(1).tolist()
            for c in ("plus", "minus", "none")}
    ev = evaluate_ensemble(ensemble, tokenizer, test, batch_size=args.eval_batch,
                           max_new_tokens=args.max_new_tokens)
    labels = [int(x) for x in test["conflicting"]]
    # per member: reading of "@" and accuracy on controls
    per_member = []
    conflict_idx = [i for i, c in enumerate(labels) if c]
    control_idx = [i for i, c in enumerate(labels) if not c]
    for k in range(K):
        plus = minus = 0
        for i in conflict_idx:
            a, b = _operands(test[i]["prompt"])
            got = ev.member_answers[k][i]
            plus += got == extract_answer(f"#### {a + b}")
            minus += got == extract_answer(f"#### {a - b}")
        per_member.append({
            "at_as_plus": plus / max(1, len(conflict_idx)),
            "at_as_minus": minus / max(1, len(conflict_idx)),
            "control_accuracy": sum(ev.member_correct[k][i] for i in control_idx) / max(1, len(control_idx)),
        })
    per_example = {"labels": labels, "max_epistemic": list(ev.max_epistemic), "mean_epistemic": list(ev.epistemic),
                   "reference_epistemic": ref_epi, "answer_disagreement": list(ev.disagreement),
                   "total_entropy": [t * 1.0 for t in ev.total], "logp_variance": ref_var,
                   "mixture_answer": list(ev.mixture_answer), "mixture_correct": list(ev.mixture_correct),
                   "member_answers": [list(a) for a in ev.member_answers],
                   "member_correct": [list(c) for c in ev.member_correct]}
    out = {"responsibilities": resp, "per_member": per_member,
           "mixture_control_accuracy": sum(ev.mixture_correct[i] for i in control_idx) / max(1, len(control_idx)),
           "auroc_max_epistemic": auroc(ev.max_epistemic, labels),
           "auroc_mean_epistemic": auroc(ev.epistemic, labels),
           "auroc_reference_epistemic": auroc(ref_epi, labels),
           "auroc_answer_disagreement": auroc(ev.disagreement, labels),
           "auroc_total_entropy": auroc([t * 1.0 for t in ev.total], labels),
           "mean_max_epistemic_conflict": sum(ev.max_epistemic[i] for i in conflict_idx) / max(1, len(conflict_idx)),
           "mean_max_epistemic_control": sum(ev.max_epistemic[i] for i in control_idx) / max(1, len(control_idx))}
    if K > 1:
        out["auroc_logp_variance"] = auroc(ref_var, labels)
    else:  # one member: no epistemic term or disagreement; its score is the total entropy
        for key in ("auroc_max_epistemic", "auroc_mean_epistemic", "auroc_reference_epistemic",
                    "auroc_answer_disagreement"):
            out[key] = None
    out["per_example"] = per_example
    out["intervals"] = sft_intervals(out)
    return out


def sft_intervals(run: dict, confidence: float = 0.95) -> dict[str, dict]:
    """95% intervals of one SFT run's AUROCs and control accuracies, from ``run["per_example"]``.

    ``{key: {"value", "low", "high", "method"}}`` for every ``auroc_<score>`` the run reports (not
    ``None``): stratified percentile bootstrap over the test examples
    (:func:`~manyminds.evaluation.stats.auroc_interval`); and for ``mixture_control_accuracy`` and
    ``member_<k>_control_accuracy``: Wilson on the hits among the ``n`` control prompts.
    """
    ex = run["per_example"]
    labels = ex["labels"]
    out: dict[str, dict] = {}
    for score in SCORES:
        if run.get(f"auroc_{score}") is not None:
            value, (lo, hi) = auroc_interval(ex[score], labels, confidence)
            out[f"auroc_{score}"] = {"value": value, "low": lo, "high": hi, "method": "bootstrap"}
    control = [i for i, y in enumerate(labels) if not y]
    correct = {"mixture_control_accuracy": ex["mixture_correct"]}
    correct |= {f"member_{k}_control_accuracy": row for k, row in enumerate(ex["member_correct"])}
    for key, row in correct.items():
        if control and row:
            hits = round(sum(row[i] for i in control))
            lo, hi = wilson_interval(hits, len(control), confidence)
            out[key] = {"value": hits / len(control), "low": lo, "high": hi, "method": "wilson"}
    return out


def sft_comparisons(runs: dict[str, dict], baseline: str, aurocs=(("max_epistemic", "total_entropy"),
                    ("reference_epistemic", "total_entropy")), confidence: float = 0.95) -> list[dict]:
    """Every run against ``runs[baseline]``, paired on the same test examples (their labels must agree).

    Rows ``{"run", "baseline", "metric", "diff", "low", "high", "p", "test"}``: for each ``(score,
    baseline score)`` of ``aurocs`` that both report, ``AUROC(score) - AUROC(baseline score)`` with
    :func:`paired_auroc`; and the mixture control accuracy difference with its paired bootstrap
    interval and the exact McNemar p-value (0/1 outcomes per control prompt).
    """
    base = runs[baseline]
    labels = base["per_example"]["labels"]
    control = [i for i, y in enumerate(labels) if not y]
    rows = []
    for name, run in runs.items():
        if name == baseline:
            continue
        ex = run["per_example"]
        if ex["labels"] != labels:
            raise ValueError(f"{name} and {baseline} were scored on different test examples; use one --n-test and --seed")
        for score, base_score in aurocs:
            if run.get(f"auroc_{score}") is None or base.get(f"auroc_{base_score}") is None:
                continue
            diff, (lo, hi), p = paired_auroc(ex[score], base["per_example"][base_score], labels, confidence)
            metric = f"AUROC {score}" + (f" vs {base_score}" if base_score != score else "")
            rows.append({"run": name, "baseline": baseline, "metric": metric,
                         "diff": diff, "low": lo, "high": hi, "p": p, "test": "paired bootstrap"})
        if control:
            a = [ex["mixture_correct"][i] for i in control]
            b = [base["per_example"]["mixture_correct"][i] for i in control]
            diff, (lo, hi), _ = paired_bootstrap(a, b, confidence)
            rows.append({"run": name, "baseline": baseline, "metric": "mixture control accuracy", "diff": diff,
                         "low": lo, "high": hi, "p": mcnemar_exact(a, b), "test": "mcnemar"})
    return rows


def train_dpo(base_path, tokenizer, train, alpha, K, args, out: Path):
    model, _ = manyminds.load(base_path)
    config = RenyiDPOConfig(output_dir=str(out), num_members=K, alpha=alpha, r=args.r,
                            lora_alpha=2 * args.r, target_modules=ALL_LINEAR, init=args.init,
                            beta=args.beta,
                            max_steps=args.dpo_steps, per_device_train_batch_size=args.batch_size,
                            learning_rate=args.lr, lr_scheduler_type="constant_with_warmup",
                            warmup_steps=10, logging_steps=10, save_strategy="no", disable_tqdm=True,
                            seed=args.seed, use_cpu=True, dataloader_pin_memory=False)
    trainer = RenyiDPOTrainer(model, config, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    return trainer.ensemble


@torch.no_grad()
def analyse_dpo(ensemble: EnsembleLoRA, tokenizer, test, args) -> dict:
    """Per member: share of style pairs where it prefers the terse answer, of agreed pairs where it
    prefers the right one (implicit reward margin > 0); variances of those rates across members."""
    ensemble.eval()
    margins = []
    for s in range(0, len(test), args.eval_batch):
        rows = test[s:s + args.eval_batch]
        scores = {}
        for key in ("chosen", "rejected"):
            ids, attn, comp = _encode(tokenizer, rows["prompt"], rows[key])
            pol = completion_logps(ensemble, ids, attn, comp).sum(-1)           # [K, B]
            ref = base_completion_logps(ensemble, ids, attn, comp).sum(-1)          # [B]
            scores[key] = pol - ref
        margins.append(scores["chosen"] - scores["rejected"])                   # [K, B]
    margin = torch.cat(margins, 1)                                              # [K, N]
    kinds, groups = test["kind"], test["group"]
    terse_first = torch.tensor([c.strip().startswith("####") for c in test["chosen"]])
    prefers_terse = torch.where(terse_first, margin > 0, margin < 0).float()    # [K, N]
    style = torch.tensor([k == "style" for k in kinds])
    agreed = ~style
    terse_rate = prefers_terse[:, style].mean(1)                                # [K]
    right_rate = (margin[:, agreed] > 0).float().mean(1)                        # [K]
    # per pair: variance across members of P(prefers terse / right) = sigmoid(beta * margin)
    p = torch.sigmoid(args.beta * margin)
    p_terse = torch.where(terse_first, p, 1 - p)
    pair_var_style = p_terse[:, style].var(0, unbiased=False)                   # [N_style]
    pair_var_agreed = p[:, agreed].var(0, unbiased=False)                       # [N_agreed]
    n_style, n_agreed = int(style.sum()), int(agreed.sum())

    def wilson(rates, n):  # rates of n pairs -> Wilson intervals of the hit counts
        return [list(wilson_interval(round(r * n), n)) if n else None for r in rates.tolist()]

    return {"terse_rate_per_member": terse_rate.tolist(), "right_rate_per_member": right_rate.tolist(),
            "terse_rate_interval_per_member": wilson(terse_rate, n_style),
            "right_rate_interval_per_member": wilson(right_rate, n_agreed),
            "style_pairs": n_style, "agreed_pairs": n_agreed,
            "terse_rate_variance": terse_rate.var(unbiased=False).item(),
            "right_rate_variance": right_rate.var(unbiased=False).item(),
            "pair_variance_style": pair_var_style.mean().item(),
            "pair_variance_agreed": pair_var_agreed.mean().item(),
            "by_group_terse_rate": {g: prefers_terse[:, [i for i, x in enumerate(groups) if x == g]].mean().item()
                                    for g in ("terse", "worked")},
            "per_example": {"kind": list(kinds), "group": list(groups), "terse_first": terse_first.tolist(),
                            "margin": margin.tolist(), "pair_variance_style": pair_var_style.tolist(),
                            "pair_variance_agreed": pair_var_agreed.tolist()}}


def dpo_comparisons(runs: dict[str, dict], baseline: str, confidence: float = 0.95) -> list[dict]:
    """Every DPO run against ``runs[baseline]`` on the per-pair variance across members (style and
    agreed pairs), paired on the same test pairs: mean difference, paired bootstrap interval and p."""
    rows = []
    for name, run in runs.items():
        if name == baseline:
            continue
        for key in ("pair_variance_style", "pair_variance_agreed"):
            diff, (lo, hi), p = paired_bootstrap(run["per_example"][key], runs[baseline]["per_example"][key],
                                                 confidence)
            rows.append({"run": name, "baseline": baseline, "metric": key, "diff": diff, "low": lo, "high": hi,
                         "p": p, "test": "paired bootstrap"})
    return rows


def _fmt(x):
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _ci(x, interval, digits: int = 2) -> str:
    """``0.812 [0.73, 0.89]``: a value and its interval (``interval``: ``{"low", "high"}`` or ``[low, high]``)."""
    if x is None:
        return "-"
    if interval is None:
        return _fmt(x)
    lo, hi = (interval["low"], interval["high"]) if isinstance(interval, dict) else interval
    return f"{_fmt(x)} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _with_ci(run: dict, key: str) -> str:
    """``run[key]`` with its interval from ``run["intervals"]`` (when the run has one)."""
    return _ci(run.get(key), run.get("intervals", {}).get(key))


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def comparisons_markdown(rows: list[dict], confidence: float = 0.95, scale: float = 1.0, digits: int = 3) -> str:
    """Paired comparisons (:func:`sft_comparisons`, :func:`dpo_comparisons`) as a markdown table:
    difference ``scale * diff`` and its interval, p-value and test."""
    lines = [f"| run | vs | metric | diff [{confidence:.0%} CI] | p | test |", "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {r['run']} | {r['baseline']} | {r['metric']} | {scale * r['diff']:+.{digits}f} "
                     f"[{scale * r['low']:+.{digits}f}, {scale * r['high']:+.{digits}f}] | {_p(r['p'])} | {r['test']} |")
    return "\n".join(lines)


def write_markdown(results: dict, path: Path) -> str:
    lines = ["### SFT on `conflict`", "",
             "95% intervals: stratified bootstrap over test examples for AUROCs, Wilson for accuracies.", "",
             ("| run | AUROC max-MI | AUROC mean-MI | AUROC MI(ref) | AUROC disagreement | AUROC logp var "
             "| AUROC total entropy | MI @ / control | mixture control acc | resp. plus | resp. minus | resp. control |"),
             "|" + "---|" * 12]
    for name, r in results["sft"].items():
        resp = r["responsibilities"]
        lines.append(
            f"| {name} | {_with_ci(r, 'auroc_max_epistemic')} | {_with_ci(r, 'auroc_mean_epistemic')} | "
            f"{_with_ci(r, 'auroc_reference_epistemic')} | {_with_ci(r, 'auroc_answer_disagreement')} | "
            f"{_with_ci(r, 'auroc_logp_variance')} | {_with_ci(r, 'auroc_total_entropy')} | "
            f"{r['mean_max_epistemic_conflict']:.3f} / {r['mean_max_epistemic_control']:.3f} | "
            f"{_with_ci(r, 'mixture_control_accuracy')} | "
            + " | ".join("[" + ", ".join(f"{v:.2f}" for v in resp[c]) + "]" for c in ("plus", "minus", "none"))
            + " |")
    lines += ["", "Per member (share of `@` answered as plus / as minus; control accuracy [95% CI]):", ""]
    for name, r in results["sft"].items():
        cells = ", ".join(f"m{k}: {m['at_as_plus']:.2f}/{m['at_as_minus']:.2f}/"
                          f"{_ci(m['control_accuracy'], r.get('intervals', {}).get(f'member_{k}_control_accuracy'))}"
                          for k, m in enumerate(r["per_member"]))
        lines.append(f"- {name}: {cells}")
    if results.get("sft_comparisons"):
        lines += ["", "Paired on the same test examples (AUROC: paired stratified bootstrap; accuracy: exact McNemar):",
                  "", comparisons_markdown(results["sft_comparisons"])]
    lines += ["", "### DPO on `prefs`", "",
              ("| alpha | terse-rate per member | var (style) | right-rate per member | var (agreed) "
              "| per-pair var style | per-pair var agreed |"), "|" + "---|" * 7]
    for name, r in results["dpo"].items():
        lines.append(
            f"| {name} | {', '.join(f'{v:.2f}' for v in r['terse_rate_per_member'])} | "
            f"{r['terse_rate_variance']:.4f} | {', '.join(f'{v:.2f}' for v in r['right_rate_per_member'])} | "
            f"{r['right_rate_variance']:.4f} | {r['pair_variance_style']:.5f} | {r['pair_variance_agreed']:.5f} |")
    if any("terse_rate_interval_per_member" in r for r in results["dpo"].values()):
        lines += ["", "Per member, Wilson 95% intervals (terse-rate over style pairs; right-rate over agreed pairs):", ""]
        for name, r in results["dpo"].items():
            lines.append(f"- {name}: " + ", ".join(
                f"m{k}: terse {_ci(t, ti)}, right {_ci(a, ai)}" for k, (t, ti, a, ai) in enumerate(zip(
                    r["terse_rate_per_member"], r["terse_rate_interval_per_member"],
                    r["right_rate_per_member"], r["right_rate_interval_per_member"]))))
    if results.get("dpo_comparisons"):
        lines += ["", "Per-pair variance across members, paired on the same test pairs:", "",
                  comparisons_markdown(results["dpo_comparisons"], digits=5)]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = list(results["sft"])
    for key, label in (("auroc_max_epistemic", "max MI (generated)"),
                       ("auroc_reference_epistemic", "MI (reference completion)"),
                       ("auroc_answer_disagreement", "answer disagreement"),
                       ("auroc_total_entropy", "total entropy")):
        values = [results["sft"][n][key] for n in names]
        axes[0].plot(names, [math.nan if v is None else v for v in values], marker="o", label=label)
    axes[0].axhline(0.5, color="grey", lw=0.5)
    axes[0].set_title("AUROC: @ prompts vs controls")
    axes[0].legend(fontsize=8)
    axes[0].tick_params(axis="x", rotation=30)
    ens = [n for n in names if n.startswith("alpha")]
    width = 0.8 / max(1, len(ens))
    for j, n in enumerate(ens):
        pm = results["sft"][n]["per_member"]
        xs = [k + j * width for k in range(len(pm))]
        axes[1].bar(xs, [m["at_as_plus"] - m["at_as_minus"] for m in pm], width=width, label=n)
    axes[1].set_title("per member: P(@ as +) - P(@ as -)")
    axes[1].set_xlabel("member")
    axes[1].legend(fontsize=8)
    dnames = list(results["dpo"])
    axes[2].bar([f"{n}\nstyle" for n in dnames], [results["dpo"][n]["terse_rate_variance"] for n in dnames])
    axes[2].bar([f"{n}\nagreed" for n in dnames], [results["dpo"][n]["right_rate_variance"] for n in dnames])
    axes[2].set_title("DPO: variance across members of preference rate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="zoo name or model folder (default: the default model)")
    parser.add_argument("--alphas", default="0,0.5,0.8,1")
    parser.add_argument("--dpo-alphas", default="0,0.8")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--dpo-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-test", type=int, default=128)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default="peft", choices=["peft", "diverse"], help="member initialization")
    parser.add_argument("--skip-dpo", action="store_true")
    parser.add_argument("--out", default="ensemble-evidence")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    from manyminds import zoo

    model_name = args.model or zoo.DEFAULT_MODEL
    base_path = zoo.resolve(model_name)
    _, tokenizer = manyminds.load(base_path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"settings": vars(args), "model": model_name, "sft": {}, "dpo": {}, "seconds": {}}

    train = load_task("conflict", split="train", n=args.n_train, seed=args.seed)
    test = load_task("conflict", split="test", n=args.n_test, seed=args.seed)
    runs = [(f"alpha={float(a):g}", float(a), args.members) for a in args.alphas.split(",")]
    runs.append(("single LoRA", 0.0, 1))
    for name, alpha, K in runs:
        start = time.time()
        ensemble, _ = train_sft(base_path, tokenizer, train, alpha, K, args, out / "runs" / name)
        results["sft"][name] = analyse_sft(ensemble, tokenizer, test, args)
        results["seconds"][f"sft {name}"] = round(time.time() - start, 1)
        print(f"[sft] {name}: AUROC max-MI={_with_ci(results['sft'][name], 'auroc_max_epistemic')} "
              f"ref-MI={_with_ci(results['sft'][name], 'auroc_reference_epistemic')} "
              f"({results['seconds'][f'sft {name}']}s)", flush=True)

    if not args.skip_dpo:
        ptrain = load_task("prefs", split="train", n=args.n_train, seed=args.seed)
        ptest = load_task("prefs", split="test", n=args.n_test, seed=args.seed)
        for a in args.dpo_alphas.split(","):
            name = f"alpha={float(a):g}"
            start = time.time()
            ensemble = train_dpo(base_path, tokenizer, ptrain, float(a), args.members, args,
                                 out / "runs" / f"dpo-{name}")
            results["dpo"][name] = analyse_dpo(ensemble, tokenizer, ptest, args)
            results["seconds"][f"dpo {name}"] = round(time.time() - start, 1)
            print(f"[dpo] {name}: terse-rate var={results['dpo'][name]['terse_rate_variance']:.4f} "
                  f"right-rate var={results['dpo'][name]['right_rate_variance']:.4f}", flush=True)

    if "single LoRA" in results["sft"]:
        results["sft_comparisons"] = sft_comparisons(results["sft"], "single LoRA")
    if len(results["dpo"]) > 1:
        results["dpo_comparisons"] = dpo_comparisons(results["dpo"], next(iter(results["dpo"])))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(write_markdown(results, out / "results.md"))
    plot(results, out / "ensemble_evidence.png")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'ensemble_evidence.png'}")


if __name__ == "__main__":
    main()
