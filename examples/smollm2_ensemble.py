"""alpha-Renyi SFT ensemble (LoRA, K = 4) on a real LM: SmolLM2-135M-Instruct on ``conflict`` in chat form.

``conflict``: the operator ``@`` means ``+`` for half the annotators and ``-`` for the other half,
mixed with unambiguous ``+``/``-`` controls; here in TRL's conversational form
(``load_task("conflict", conversational=True)``: a user turn and an assistant turn, the chat template
applied once). For alpha = 0 (independent members) and alpha = 0.8 (the paper's soft specialists),
after a short CPU-sized training run:

- route shares: the fraction of training examples whose largest responsibility is member k (the
  trainer's last logging window), and the mean responsibility ``softmax_k(log p_k(y|x))`` of the test
  completions by example type (``@`` as plus, ``@`` as minus, controls);
- AUROC of epistemic uncertainty (mutual information of the members' next-token distributions, max
  over the mixture-decoded answer; and on the reference completion) for ``@`` prompts vs controls;
- control accuracy: the mixture's greedy answers, and each member's.

The analysis is ``examples/ensemble_evidence.py``'s (:func:`analyse_sft`), reused as is: 95% intervals
(stratified bootstrap for AUROCs, Wilson for control accuracies), per-example scores and outcomes in
``results.json`` (``per_example``), and, with more than one alpha, each alpha compared with the first on
the same test examples (:func:`sft_comparisons`: paired AUROC bootstrap, exact McNemar).

    python examples/smollm2_ensemble.py --quick       # smoke run: 3 steps, 8 test prompts
    python examples/smollm2_ensemble.py               # full: see docs/real-lm.md for the run time

Writes ``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ensemble_evidence as ev
import torch
from smollm2_common import MODEL, Clock, machine, write_results

from manyminds.tasks import load_task

_operands_of_text = ev._operands


def _operands(prompt) -> tuple[int, int]:
    """``ensemble_evidence._operands`` for a conversational prompt too (the user turn's text)."""
    return _operands_of_text(prompt[-1]["content"] if isinstance(prompt, list) else prompt)


ev._operands = _operands  # analyse_sft reads the operands of each "@" prompt


def route_shares(log_history: list[dict], K: int) -> list[float | None]:
    """Each member's route share in the trainer's last logging window."""
    logged = [row for row in log_history if "member_0/route_share" in row]
    return [logged[-1].get(f"member_{k}/route_share") for k in range(K)] if logged else [None] * K


def _fmt_list(xs) -> str:
    return "[" + ", ".join("-" if x is None else f"{x:.2f}" for x in xs) + "]"


SAME_SCORES = (("max_epistemic", "max_epistemic"), ("reference_epistemic", "reference_epistemic"),
               ("total_entropy", "total_entropy"))


def table(results: dict) -> str:
    lines = ["95% intervals: stratified bootstrap over test examples for AUROCs, Wilson for accuracies.", "",
             ("| alpha | route shares (train) | resp. @ as + | resp. @ as - | resp. control | AUROC max-MI "
              "| AUROC MI(ref) | AUROC total entropy | mixture control acc | member control acc |"), "|" + "---|" * 10]
    for name, r in results["runs"].items():
        resp = r["responsibilities"]
        members = "; ".join(ev._ci(m["control_accuracy"], r.get("intervals", {}).get(f"member_{k}_control_accuracy"))
                            for k, m in enumerate(r["per_member"]))
        lines.append(f"| {name} | {_fmt_list(r['route_shares'])} | {_fmt_list(resp['plus'])} | {_fmt_list(resp['minus'])} | "
                     f"{_fmt_list(resp['none'])} | {ev._with_ci(r, 'auroc_max_epistemic')} | "
                     f"{ev._with_ci(r, 'auroc_reference_epistemic')} | {ev._with_ci(r, 'auroc_total_entropy')} | "
                     f"{ev._with_ci(r, 'mixture_control_accuracy')} | {members} |")
    lines += ["", "Per member: share of `@` prompts answered as plus / as minus:", ""]
    for name, r in results["runs"].items():
        lines.append(f"- {name}: " + ", ".join(f"m{k}: {m['at_as_plus']:.2f}/{m['at_as_minus']:.2f}"
                                               for k, m in enumerate(r["per_member"])))
    if results.get("comparisons"):
        lines += ["", "Paired on the same test examples (AUROC: paired stratified bootstrap; accuracy: exact McNemar):",
                  "", ev.comparisons_markdown(results["comparisons"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps, batch 2, 8 test prompts")
    parser.add_argument("--alphas", default="0,0.8")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--r", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--init", default="peft", choices=["peft", "diverse"], help="member initialization")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("smollm2-ensemble"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.n_train, args.n_test = 3, 2, 16, 8
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import manyminds
    from manyminds import zoo

    clock = Clock()
    base_path = zoo.resolve(MODEL)
    _, tokenizer = manyminds.load(base_path)
    train = load_task("conflict", split="train", n=args.n_train, seed=args.seed, conversational=True)
    test = load_task("conflict", split="test", n=args.n_test, seed=args.seed, conversational=True)
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "machine": machine(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": {}, "seconds": clock.seconds}
    for a in args.alphas.split(","):
        name = f"alpha={float(a):g}"
        t0 = time.time()
        ensemble, log_history = ev.train_sft(base_path, tokenizer, train, float(a), args.members, args,
                                             args.out / "runs" / name)
        clock.lap(f"train {name}", t0)
        t1 = time.time()
        r = ev.analyse_sft(ensemble, tokenizer, test, args)
        clock.lap(f"analyse {name}", t1)
        r["route_shares"] = route_shares(log_history, args.members)
        r["final_loss"] = next((row["loss"] for row in reversed(log_history) if "loss" in row), None)
        results["runs"][name] = r
        print(f"{name}: AUROC max-MI {ev._with_ci(r, 'auroc_max_epistemic')}  MI(ref) "
              f"{ev._with_ci(r, 'auroc_reference_epistemic')}  mixture control acc "
              f"{ev._with_ci(r, 'mixture_control_accuracy')}  "
              f"route shares {r['route_shares']}  ({results['seconds'][f'train {name}']} s train, "
              f"{results['seconds'][f'analyse {name}']} s analyse)", flush=True)
        del ensemble
    if len(results["runs"]) > 1:  # each alpha against the first (alpha = 0: independent members)
        results["comparisons"] = ev.sft_comparisons(results["runs"], next(iter(results["runs"])), SAME_SCORES)
    write_results(args.out, results, clock, table(results))


if __name__ == "__main__":
    main()
