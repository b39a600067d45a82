"""Evidence for the critical alpha and for keeping every member alive, on the default model.

Part 1, ``alpha*`` and the onset of spread: on ``conflict`` (the operator ``@`` means ``+`` for half
the annotators and ``-`` for the other half) and on the same task with ``conflict_fraction=0``
(unambiguous: ``+`` and ``-`` only),

- train one LoRA adapter (K = 1, plain SFT) and estimate ``alpha*`` at it
  (:func:`manyminds.training.critical.critical_alpha`; damping raised along a ladder until
  ``V + damping`` is positive definite, the damping used is reported);
- train K members at each alpha of a sweep and measure their spread on test completions:
  ``logp std`` (mean over examples of the std across members of ``log p_k(y|x)``),
  ``specialisation`` (1 - entropy / log K of the posterior responsibilities ``softmax_k log p_k``,
  mean over examples) and ``dW dist`` (mean pairwise ``||B_k A_k - B_j A_j||_F`` over the LoRA
  layers, relative to the mean ``||B_k A_k||_F``).

Part 2, dead members: ``conflict`` at alpha = 0.8, K = 4, several seeds, without a remedy, with the
alpha warm-up (``alpha_warmup_steps``) and with re-initialisation (``dead_member_action="reinit"``):
members dead at the end of training (the trainer's monitor), test route shares, AUROC of the
epistemic uncertainty for ``@`` prompts vs controls and the mixture's control accuracy, with 95%
intervals (stratified bootstrap for the AUROC, Wilson for accuracies); each remedy is compared with no
remedy at the same seed on the same test examples (paired AUROC bootstrap, exact McNemar on the
control answers; ``ensemble_evidence.sft_comparisons``). ``results.json`` keeps the per-example
scores and outcomes (``per_example``).

    python examples/alpha_evidence.py                        # both parts
    python examples/alpha_evidence.py --part spread --steps 60

Writes ``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch

import manyminds
from manyminds.ensemble import EnsembleLoRA, auroc
from manyminds.ensemble.stability import CurvatureError
from manyminds.ensemble.uncertainty import sequence_uncertainty
from manyminds.evaluation.ensemble import evaluate_ensemble
from manyminds.tasks import load_task
from manyminds.training import RenyiSFTConfig, RenyiSFTTrainer
from manyminds.training.critical import critical_alpha, train_single_adapter

sys.path.insert(0, str(Path(__file__).parent))
from ensemble_evidence import (
    ALL_LINEAR,
    _ci,
    _encode,
    _with_ci,
    comparisons_markdown,
    sft_comparisons,
    sft_intervals,
)

TASKS = {"conflict": {}, "unambiguous": {"conflict_fraction": 0.0}}


def train_members(tokenizer, train, alpha, K, args, seed, **extra):
    model, _ = manyminds.load(args.model)
    config = RenyiSFTConfig(output_dir=str(Path(args.out) / "runs"), num_members=K, alpha=alpha, r=args.r,
                            lora_alpha=2 * args.r, target_modules=ALL_LINEAR, max_steps=args.steps,
                            per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                            lr_scheduler_type="constant_with_warmup", warmup_steps=10, logging_steps=10,
                            save_strategy="no", disable_tqdm=True, seed=seed, use_cpu=True,
                            dataloader_pin_memory=False, **extra)
    trainer = RenyiSFTTrainer(model, config, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    return trainer.ensemble, trainer.state.log_history


@torch.no_grad()
def spread(ensemble: EnsembleLoRA, tokenizer, test, args) -> dict:
    """Member spread on the test completions and in weight space."""
    ensemble.eval()
    logps = []
    for s in range(0, len(test), args.eval_batch):
        rows = test[s:s + args.eval_batch]
        ids, attn, comp = _encode(tokenizer, rows["prompt"], rows["completion"])
        logps.append(sequence_uncertainty(ensemble, ids, attn, comp)["member_logps"])
    logp = torch.cat(logps, 1).double()                                   # [K, N]
    K = logp.shape[0]
    post = torch.softmax(logp, 0)                                         # [K, N]
    entropy = -(post * post.clamp_min(1e-300).log()).sum(0)               # [N]
    deltas = {}
    for name, layer in ensemble.lora_layers.items():
        deltas[name] = torch.einsum("kor,kri->koi", layer.lora_B.double(), layer.lora_A.double())  # [K, out, in]
    pair = [sum(float((d[i] - d[j]).norm()) for d in deltas.values()) for i, j in itertools.combinations(range(K), 2)]
    size = sum(float(d[k].norm()) for d in deltas.values() for k in range(K)) / K
    return {"logp_std": float(logp.std(0).mean()), "specialisation": float(1 - entropy.mean() / math.log(K)),
            "dw_dist": sum(pair) / len(pair) / max(size, 1e-12)}


def estimate_alpha_star(tokenizer, train, args) -> dict:
    """alpha* at one adapter trained for ``--critical-steps``; damping raised until V + damping is PD."""
    model, _ = manyminds.load(args.model)
    start = time.time()
    adapter = train_single_adapter(model, tokenizer, train, steps=args.critical_steps, r=args.r,
                                   target_modules=ALL_LINEAR, learning_rate=args.lr, batch_size=args.batch_size,
                                   seed=args.seed, use_cpu=True)
    out = {"train_seconds": round(time.time() - start, 1), "tries": []}
    for damping in args.dampings:
        start = time.time()
        try:
            res = critical_alpha(adapter, tokenizer, train, max_examples=args.critical_n, batch_size=args.critical_n,
                                 damping=damping, iters=args.iters, cg_iters=args.cg_iters, tol=1e-3)
        except CurvatureError as err:
            out["tries"].append({"damping": damping, "error": str(err).split(":")[0],
                                 "seconds": round(time.time() - start, 1)})
            continue
        out.update(alpha_star=res.alpha_star, lambda_max=res.lambda_max, damping=damping,
                   iterations=res.iterations, converged=res.converged, num_params=res.num_params,
                   seconds=round(time.time() - start, 1))
        break
    return out


def part_spread(tokenizer, args, results):
    for task, knobs in TASKS.items():
        train = load_task("conflict", split="train", n=args.n_train, seed=args.seed, **knobs)
        test = load_task("conflict", split="test", n=args.n_test, seed=args.seed, **knobs)
        entry = results["spread"].setdefault(task, {"sweep": {}})
        entry["critical"] = estimate_alpha_star(tokenizer, train, args)
        print(f"[alpha*] {task}: {entry['critical']}", flush=True)
        for alpha in args.alphas:
            start = time.time()
            ensemble, _ = train_members(tokenizer, train, alpha, args.members, args, args.seed)
            row = spread(ensemble, tokenizer, test, args)
            row["seconds"] = round(time.time() - start, 1)
            entry["sweep"][f"{alpha:g}"] = row
            print(f"[spread] {task} alpha={alpha:g}: {row}", flush=True)


REMEDIES = {"none": {}, "warmup": {"alpha_warmup_steps": None}, "reinit": {"dead_member_action": "reinit"}}


def part_dead(tokenizer, args, results):
    train_by_seed = {}
    for seed in args.seeds:
        train_by_seed[seed] = load_task("conflict", split="train", n=args.n_train, seed=seed)
    test = load_task("conflict", split="test", n=args.n_test, seed=0)
    labels = [int(x) for x in test["conflicting"]]
    control = [i for i, c in enumerate(labels) if not c]
    for remedy, extra in REMEDIES.items():
        extra = {k: (args.warmup if v is None else v) for k, v in extra.items()}
        for seed in args.seeds:
            start = time.time()
            ensemble, history = train_members(tokenizer, train_by_seed[seed], args.dead_alpha, args.members, args,
                                              seed, dead_member_share=args.dead_share, **extra)
            logs = [h for h in history if "dead_members" in h]
            ensemble.eval()
            logps = []
            for s in range(0, len(test), args.eval_batch):
                rows = test[s:s + args.eval_batch]
                ids, attn, comp = _encode(tokenizer, rows["prompt"], rows["completion"])
                logps.append(sequence_uncertainty(ensemble, ids, attn, comp)["member_logps"])
            post = torch.softmax(torch.cat(logps, 1).double(), 0)          # [K, N]
            top = post.argmax(0)
            shares = [float((top == k).double().mean()) for k in range(args.members)]
            ev = evaluate_ensemble(ensemble, tokenizer, test, batch_size=args.eval_batch,
                                   max_new_tokens=args.max_new_tokens)
            row = {"dead_at_end": logs[-1]["dead_members"] if logs else None,
                   "max_dead": max((h["dead_members"] for h in logs), default=None),
                   "reinits": logs[-1]["member_reinits"] if logs else None,
                   "test_route_shares": shares, "test_dead": sum(s < args.dead_share for s in shares),
                   "auroc_max_epistemic": auroc(ev.max_epistemic, labels),
                   "mixture_control_accuracy": sum(ev.mixture_correct[i] for i in control) / len(control),
                   "member_control_accuracy": [sum(ev.member_correct[k][i] for i in control) / len(control)
                                               for k in range(args.members)],
                   "seconds": round(time.time() - start, 1),
                   "per_example": {"labels": labels, "max_epistemic": list(ev.max_epistemic),
                                   "mixture_answer": list(ev.mixture_answer), "mixture_correct": list(ev.mixture_correct),
                                   "member_correct": [list(c) for c in ev.member_correct]}}
            row["intervals"] = sft_intervals(row)
            results["dead"].setdefault(remedy, {})[str(seed)] = row
            print(f"[dead] {remedy} seed={seed}: " + str({k: v for k, v in row.items() if k != "per_example"}),
                  flush=True)
    results["dead_comparisons"] = dead_comparisons(results["dead"])


def dead_comparisons(dead: dict[str, dict[str, dict]], baseline: str = "none") -> list[dict]:
    """Each remedy against ``baseline`` (no remedy) at the same seed, on the same test examples:
    AUROC max-MI (paired stratified bootstrap) and mixture control accuracy (exact McNemar)."""
    rows = []
    for remedy, seeds in dead.items():
        if remedy == baseline or baseline not in dead:
            continue
        for seed, row in seeds.items():
            if seed in dead[baseline]:
                runs = {f"{baseline} seed={seed}": dead[baseline][seed], f"{remedy} seed={seed}": row}
                rows += sft_comparisons(runs, f"{baseline} seed={seed}", (("max_epistemic", "max_epistemic"),))
    return rows


def _fmt(x) -> str:
    return "-" if x is None else f"{x:g}"


def write_markdown(results: dict, path: Path) -> str:
    lines = []
    if results["spread"]:
        lines += ["### alpha* and member spread", "",
                  "| task | alpha* | lambda_max | damping | converged | " +
                  " | ".join(f"alpha={a}" for a in next(iter(results["spread"].values()))["sweep"]) + " |",
                  "|" + "---|" * (5 + len(next(iter(results["spread"].values()))["sweep"]))]
        for task, entry in results["spread"].items():
            c = entry["critical"]
            star = f"{c['alpha_star']:.3g}" if "alpha_star" in c else "indefinite"
            cells = [f"{r['logp_std']:.2f} / {r['specialisation']:.2f} / {r['dw_dist']:.2f}"
                     for r in entry["sweep"].values()]
            lines.append(f"| {task} | {star} | {c.get('lambda_max', float('nan')):.3g} | {c.get('damping', '-')} | "
                         f"{c.get('converged', '-')} | " + " | ".join(cells) + " |")
        lines += ["", "Cells: logp std / specialisation / dW dist (see the script's docstring).", ""]
    if results["dead"]:
        lines += ["### Dead members at alpha = 0.8, K = 4", "",
                  "95% intervals: stratified bootstrap over test examples for the AUROC, Wilson for accuracies.", "",
                  ("| remedy | seed | dead (train, end / max) | test dead | test route shares | AUROC max-MI "
                  "| mixture control acc |"), "|" + "---|" * 7]
        for remedy, seeds in results["dead"].items():
            for seed, r in seeds.items():
                lines.append(f"| {remedy} | {seed} | {_fmt(r['dead_at_end'])} / {_fmt(r['max_dead'])} | {r['test_dead']} | "
                             + ", ".join(f"{s:.2f}" for s in r["test_route_shares"])
                             + f" | {_with_ci(r, 'auroc_max_epistemic')} | {_with_ci(r, 'mixture_control_accuracy')} |")
        lines += ["", "Member control accuracy [95% CI]:", ""]
        for remedy, seeds in results["dead"].items():
            for seed, r in seeds.items():
                lines.append(f"- {remedy} seed={seed}: " + ", ".join(
                    f"m{k}: {_ci(a, r.get('intervals', {}).get(f'member_{k}_control_accuracy'))}"
                    for k, a in enumerate(r["member_control_accuracy"])))
        if results.get("dead_comparisons"):
            lines += ["", ("Each remedy vs none at the same seed, paired on the same test examples "
                           "(AUROC: paired stratified bootstrap; accuracy: exact McNemar):"), "",
                      comparisons_markdown(results["dead_comparisons"])]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="zoo name or model folder (default: the default model)")
    parser.add_argument("--part", default="both", choices=["both", "spread", "dead"])
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,0.9,0.99")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--critical-steps", type=int, default=200)
    parser.add_argument("--critical-n", type=int, default=64)
    parser.add_argument("--dampings", default="0.01,0.1,1,10")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--cg-iters", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dead-alpha", type=float, default=0.8)
    parser.add_argument("--dead-share", type=float, default=0.02)
    parser.add_argument("--warmup", type=int, default=50, help="alpha_warmup_steps of the warm-up remedy")
    parser.add_argument("--remedies", default="none,warmup,reinit")
    parser.add_argument("--out", default="alpha-evidence")
    args = parser.parse_args(argv)
    args.alphas = [float(a) for a in args.alphas.split(",")]
    args.dampings = [float(d) for d in args.dampings.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    for name in set(REMEDIES) - set(args.remedies.split(",")):
        REMEDIES.pop(name)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # the runs are small; threads only fight over a shared CPU

    from manyminds import zoo

    args.model = str(zoo.resolve(args.model or zoo.DEFAULT_MODEL))
    _, tokenizer = manyminds.load(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"settings": {k: v for k, v in vars(args).items()}, "spread": {}, "dead": {}}
    start = time.time()
    if args.part in ("both", "spread"):
        part_spread(tokenizer, args, results)
    if args.part in ("both", "dead"):
        part_dead(tokenizer, args, results)
    results["seconds"] = round(time.time() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(write_markdown(results, out / "results.md"))
    print(f"{results['seconds']}s; wrote {out / 'results.json'}, {out / 'results.md'}")


if __name__ == "__main__":
    main()
