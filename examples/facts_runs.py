"""Raw answers of SmolLM2-135M-Instruct on the bundled ``facts`` questions, per condition and seed.

The generation half of the real-LM evidence (``examples/facts_report.py`` is the other half: it
reads only the files written here). Each condition answers every question of a split ``k`` times,
laid out as :func:`manyminds.evaluation.evaluate` lays them out (prompt-major rows, one
``generate_completions`` call, minds ``0..k-1`` of ``Population(model, sigma, seed=s)``, sampling
from ``torch.manual_seed(s)`` in a forked RNG), and is written atomically to
``<out>/<split>/<condition>_s<seed>.jsonl`` (one line per question); an existing file is skipped,
so a killed run resumes where it stopped.

Conditions: ``greedy`` (k = 1, with the greedy reply's token NLL under the model, for error
detection), ``temp:T`` (pure sampling at temperature T), ``add:s`` (minds at additive sigma s).

    # dev: the sigma and temperature grid (one seed); then test: greedy + chosen conditions, 3 seeds
    python examples/facts_runs.py --split dev --conditions greedy,temp:0.3,temp:0.7,temp:1.0,add:0.005,add:0.01,add:0.02
    python examples/facts_runs.py --split test --conditions greedy,add:0.01,temp:0.7 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
OUT = Path(__file__).resolve().parent.parent / "docs" / "data" / "facts" / "runs"


def parse_condition(text: str) -> dict:
    """``"greedy"``, ``"temp:0.7"`` or ``"add:0.01"`` -> kind, value and a file-name stem."""
    if text == "greedy":
        return {"kind": "greedy", "value": 0.0, "stem": "greedy"}
    kind, _, value = text.partition(":")
    if kind not in ("temp", "add") or not value:
        raise SystemExit(f"unknown condition {text!r}; write greedy, temp:T or add:SIGMA")
    v = float(value)
    if not v > 0:
        raise SystemExit(f"{text}: the value must be > 0")
    return {"kind": kind, "value": v, "stem": f"{kind}{v:g}"}


def greedy_nll(model, tokenizer, prompts, replies) -> list[dict]:
    """Sum and mean token NLL (nats) of each reply after its prompt under ``model`` (no EOS)."""
    import torch

    from manyminds.rows import tokenize_prompts

    out = []
    prompt_ids = tokenize_prompts(tokenizer, prompts)
    for ids, reply in zip(prompt_ids, replies):
        new = tokenizer(reply, add_special_tokens=False)["input_ids"]
        if not new:
            out.append({"nll_sum": 0.0, "nll_mean": 0.0, "tokens": 0})
            continue
        x = torch.tensor([list(ids) + new])
        with torch.no_grad():
            logp = model(input_ids=x).logits[0, len(ids) - 1:-1].float().log_softmax(-1)
        nll = -logp.gather(-1, torch.tensor(new)[:, None])[:, 0]
        out.append({"nll_sum": float(nll.sum()), "nll_mean": float(nll.mean()), "tokens": len(new)})
    return out


def run_condition(model, tokenizer, rows, cond: dict, seed: int, k: int, args) -> list[dict]:
    from manyminds.evaluation.generation import generate_completions
    from manyminds.population import Population
    from manyminds.rows import group_rows, prompt_grid

    prompts = [r["prompt"] for r in rows]
    k = 1 if cond["kind"] == "greedy" else k
    flat_prompts, mind_ids = prompt_grid(prompts, k)  # prompt-major [P * k] rows, minds 0..k-1, as evaluate()
    gen = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": seed}
    if cond["kind"] == "add":
        population = Population(model, sigma=cond["value"], seed=seed)
        flat = generate_completions(model, tokenizer, flat_prompts, population=population,
                                    mind_ids=mind_ids, temperature=0.0, **gen)
    else:
        temperature = cond["value"] if cond["kind"] == "temp" else 0.0
        flat = generate_completions(model, tokenizer, flat_prompts, temperature=temperature, **gen)
    grid = group_rows(flat, k)  # [P][k]
    nll = greedy_nll(model, tokenizer, prompts, flat) if cond["kind"] == "greedy" else [{}] * len(rows)
    return [{"id": r["id"], "category": r["category"], "question": r["prompt"][0]["content"],
             "accepted": r["accepted"], "condition": cond["stem"], "seed": seed, "completions": g, **extra}
            for r, g, extra in zip(rows, grid, nll)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=["dev", "test"], required=True)
    ap.add_argument("--conditions", required=True, help="comma-separated: greedy, temp:T, add:SIGMA")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (mind seed = sampling seed)")
    ap.add_argument("--k", type=int, default=4, help="answers per question (greedy: 1)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import torch
    import transformers

    import manyminds
    from manyminds.files import atomic_write_text
    from manyminds.tasks import load_task

    conds = [parse_condition(c.strip()) for c in args.conditions.split(",") if c.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    model, tokenizer = manyminds.load(MODEL)
    model.eval()
    rows = list(load_task("facts", split=args.split, conversational=True))
    folder = args.out / args.split
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "runs.log"
    for cond in conds:
        for seed in (seeds if cond["kind"] != "greedy" else [0]):
            path = folder / f"{cond['stem']}_s{seed}.jsonl"
            if path.exists():
                print(f"skip {path} (exists)", flush=True)
                continue
            t0 = time.time()
            records = run_condition(model, tokenizer, rows, cond, seed, args.k, args)
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
            line = (f"{path.name}: {len(rows)} questions x {len(records[0]['completions'])} in "
                    f"{time.time() - t0:.0f} s; {platform.processor() or platform.machine()}, "
                    f"torch {torch.__version__} ({args.threads} threads), transformers "
                    f"{transformers.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, max_new_tokens "
                    f"{args.max_new_tokens}, batch {args.batch_size}")
            with open(log, "a") as f:
                f.write(line + "\n")
            print(line, flush=True)


if __name__ == "__main__":
    main()
