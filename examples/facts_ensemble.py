"""Error detection on ``facts`` by an alpha-Renyi LoRA ensemble of SmolLM2-135M-Instruct: per-question scores.

One column of the error-detection table (how well a score predicts that the *base* model's greedy
answer is wrong): an SFT ensemble (``K`` LoRA members on the frozen base, the library's
:class:`~manyminds.training.RenyiSFTTrainer`) is trained on the ``facts`` dev questions in chat form,
completion = the first accepted answer as a short sentence (``{"role": "assistant", "content":
answer + "."}``), then every test question is scored as
:func:`manyminds.evaluation.evaluate_ensemble` scores it (the table
:data:`manyminds.ensemble.scores.SCORES`):

- ``epistemic`` / ``max_epistemic``: mean / max over the mixture's greedy answer tokens (up to and
  including eos) of the mutual information ``H(mean_k p_k) - mean_k H(p_k)``;
- ``total`` (entropy of the mixture), ``aleatoric`` (mean member entropy);
- ``reference_epistemic``, ``logp_variance``: the same for the reference completion
  (first accepted answer + ".");
- ``disagreement``: share of members whose answer differs from the members' majority. The library
  computes it on ``####`` final answers, which free-form replies do not have; here it is recomputed
  on the short-answer reader's keys (:data:`manyminds.evaluation.readers.SHORT_ANSWER`), as
  :func:`manyminds.ensemble.uncertainty.answer_disagreement` of those keys. Correctness likewise:
  :func:`manyminds.tasks.short_answer.is_correct` of each member's and the mixture's greedy reply.

One JSON line per test question goes to ``<out>/alpha<a>.jsonl`` and the run's settings, loss curve
and wall time to ``<out>/alpha<a>.meta.json`` (both written atomically).

    python examples/facts_ensemble.py --quick              # smoke: 3 steps, 8 test questions, /tmp
    python examples/facts_ensemble.py --steps 150          # -> docs/data/facts/ensemble/alpha0.8.*
    python examples/facts_ensemble.py --alpha 0 --steps 150
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "data" / "facts" / "ensemble"
MODEL = "smollm2-135m-instruct"


GREEDY_DEV = Path(__file__).resolve().parent.parent / "docs" / "data" / "facts" / "runs" / "dev" / "greedy_s0.jsonl"
TARGETS = {"answer": "first accepted answer + '.'",
           "prose": "the base model's own greedy reply where it is correct, else 'The answer is <first accepted>.'"}


def sft_rows(ds, targets: str = "answer"):
    """Dev questions as prompt / completion conversations.

    ``answer``: completion = first accepted answer + "." (a one-word reply: SmolLM2 recalls worse
    without its own sentence around the answer). ``prose``: the base model's greedy dev reply
    (``docs/data/facts/runs/dev/greedy_s0.jsonl``, written by ``examples/facts_runs.py``) where it is
    correct, else "The answer is <first accepted answer>.": the members stay in the model's own style.
    """
    from manyminds.tasks.short_answer import is_correct

    greedy = {}
    if targets == "prose":
        greedy = {r["id"]: r["completions"][0] for r in map(json.loads, GREEDY_DEV.open())}

    def target(r):
        reply = greedy.get(r["id"])
        if targets == "prose" and reply is not None and is_correct(reply, r["accepted"]):
            return reply
        return f"The answer is {r['accepted'][0]}." if targets == "prose" else r["accepted"][0] + "."

    return ds.map(lambda r: {"completion": [{"role": "assistant", "content": target(r)}]},
                  remove_columns=[c for c in ds.column_names if c not in ("prompt",)])


def window_means(losses: list[float], w: int) -> tuple[float | None, float | None]:
    """Mean of the first and of the last ``w`` logged losses."""
    if not losses:
        return None, None
    w = max(1, min(w, len(losses)))
    return sum(losses[:w]) / w, sum(losses[-w:]) / w


def wall_clock_cap(minutes: float | None, step_times: list[float]):
    """A callback that records each step's end time and stops training after ``minutes`` of steps."""
    from transformers import TrainerCallback

    class Cap(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(round(time.time() - self.t0, 1))
            if minutes is not None and step_times[-1] > 60 * minutes:
                control.should_training_stop = True

    return Cap()


def target_modules(modules: str, layers: str | None) -> str | list[str]:
    """``"q_proj,v_proj"`` as a list (every layer), or with ``layers="22-29"`` a PEFT regex over those
    layers only (backward then stops at layer 22, which roughly halves a CPU step of this model)."""
    names = modules.split(",")
    if layers is None:
        return names
    lo, _, hi = layers.partition("-")
    ids = "|".join(str(i) for i in range(int(lo), int(hi or lo) + 1))
    return rf".*\.layers\.({ids})\.\w+\.({'|'.join(names)})"


def train(args, tokenizer, train_ds, step_times: list[float]):
    import manyminds
    from manyminds.training import RenyiSFTConfig, RenyiSFTTrainer

    model, _ = manyminds.load(MODEL)
    config = RenyiSFTConfig(output_dir=str(args.run_dir), num_members=args.members, alpha=args.alpha, r=args.r,
                            lora_alpha=2 * args.r, target_modules=target_modules(args.modules, args.layers),
                            max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                            learning_rate=args.lr, lr_scheduler_type="constant_with_warmup",
                            warmup_steps=min(10, max(1, args.steps // 10)), logging_steps=1,
                            save_strategy="no", disable_tqdm=True, report_to=[], seed=args.seed,
                            use_cpu=True, dataloader_pin_memory=False)
    trainer = RenyiSFTTrainer(model, config, train_dataset=train_ds, processing_class=tokenizer,
                              callbacks=[wall_clock_cap(args.train_minutes, step_times)])
    trainer.train()
    return trainer.ensemble, trainer.state.log_history


def score(args, ensemble, tokenizer, test) -> list[dict]:
    """Per test question: the library's uncertainty scores, and replies/correctness by the short reader."""
    from manyminds.ensemble.uncertainty import answer_disagreement
    from manyminds.evaluation.ensemble import evaluate_ensemble
    from manyminds.evaluation.readers import SHORT_ANSWER
    from manyminds.tasks.short_answer import is_correct

    # no "answer" column: the library's ####-reader would mark every reply wrong; scored below instead
    ds = test.map(lambda r: {"completion": [{"role": "assistant", "content": r["accepted"][0] + "."}]},
                  remove_columns=["answer"])
    ensemble.eval()
    t0 = time.time()
    ev = evaluate_ensemble(ensemble, tokenizer, ds, batch_size=args.eval_batch, max_new_tokens=args.max_new_tokens,
                           progress=lambda n: print(f"scored {n}/{len(ds)} ({time.time() - t0:.0f} s)", flush=True))
    members_c, mixture_c = ev.conditions
    questions = [r["prompt"][-1]["content"] for r in test]
    K = ensemble.num_members
    member_replies = [r["completions"] for r in members_c.per_prompt]                # [N][K]
    keys = [[SHORT_ANSWER.key(t, q) for t in row] for row, q in zip(member_replies, questions)]
    disagreement = answer_disagreement([[row[k] for row in keys] for k in range(K)])  # [N]
    records = []
    for i, row in enumerate(test):
        reply = mixture_c.per_prompt[i]["completions"][0]
        rec = {"id": row["id"], "category": row["category"], "question": questions[i], "accepted": row["accepted"]}
        rec.update({name: values[i] for name, values in ev.scores.items() if values and name != "disagreement"})
        rec["disagreement"] = disagreement[i]
        rec.update({"mixture_reply": reply, "correct": bool(is_correct(reply, row["accepted"])),
                    "member_replies": member_replies[i],
                    "member_correct": [bool(is_correct(t, row["accepted"])) for t in member_replies[i]]})
        records.append(rec)
    return records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps, 8 test questions, out /tmp")
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--r", type=int, default=4)
    parser.add_argument("--modules", default="q_proj,v_proj", help="LoRA target modules, comma-separated")
    parser.add_argument("--layers", default="22-29", help="LoRA only in these decoder layers (lo-hi); 'all': every layer")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--targets", choices=sorted(TARGETS), default="answer",
                        help="training completions: " + "; ".join(f"{k}: {v}" for k, v in TARGETS.items()))
    parser.add_argument("--n-test", type=int, default=None, help="first N test questions (default: all)")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--train-minutes", type=float, default=None,
                        help="safety cap: stop training after this many minutes even before --steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loss-window", type=int, default=10, help="steps in the first/last loss means")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.n_test = 3, 8
        if args.out == OUT:
            args.out = Path("/tmp/facts_ensemble_quick")
    args.layers = None if args.layers == "all" else args.layers
    args.run_dir = Path("/tmp") / f"facts_ensemble_run_a{args.alpha:g}_{args.targets}"

    import torch

    import manyminds
    from manyminds.files import atomic_write_text
    from manyminds.tasks import load_task

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    _, tokenizer = manyminds.load(MODEL)
    dev = load_task("facts", split="dev", conversational=True)
    test = load_task("facts", split="test", conversational=True)
    if args.n_test is not None:
        test = test.select(range(min(args.n_test, len(test))))
    step_times: list[float] = []
    ensemble, history = train(args, tokenizer, sft_rows(dev, args.targets), step_times)
    train_s = time.time() - start
    losses = [row["loss"] for row in history if "loss" in row and "train_runtime" not in row]
    first, last = window_means(losses, args.loss_window)
    print(f"trained {len(losses)} of {args.steps} steps in {train_s:.0f} s; loss first/last {args.loss_window}: {first} -> {last}",
          flush=True)
    t1 = time.time()
    records = score(args, ensemble, tokenizer, test)
    score_s = time.time() - t1
    stem = f"alpha{args.alpha:g}" + ("" if args.targets == "answer" else f"_{args.targets}")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{stem}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    member_acc = [sum(r["member_correct"][k] for r in records) / len(records) for k in range(args.members)]
    meta = {"model": MODEL, "task": "facts", "train_split": "dev", "train_questions": len(dev),
            "test_split": "test", "test_questions": len(records),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "lr_schedule": "constant_with_warmup", "completion": TARGETS[args.targets],
            "steps_budget": args.steps, "steps_done": len(losses),
            "stopped_by_time_cap": len(losses) < args.steps,
            "epochs": len(losses) * args.batch_size / len(dev), "step_end_seconds": step_times,
            "loss_per_step": losses, "loss_first_window_mean": first, "loss_last_window_mean": last,
            "member_nll_last": {k: v for k, v in (history[-2] if len(history) > 1 else {}).items()
                                if k.startswith("member_")},
            "mixture_accuracy": sum(r["correct"] for r in records) / len(records),
            "member_accuracy": member_acc,
            "seconds": {"train": round(train_s, 1), "score": round(score_s, 1),
                        "total": round(time.time() - start, 1)},
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__, "threads": args.threads},
            "date": date, "command": "python " + " ".join([sys.argv[0]] + sys.argv[1:])}
    atomic_write_text(args.out / f"{stem}.meta.json", json.dumps(meta, indent=1) + "\n")
    print(f"mixture accuracy {meta['mixture_accuracy']:.3f}, members {[round(a, 3) for a in member_acc]}; "
          f"wrote {args.out / stem}.jsonl ({score_s:.0f} s scoring)", flush=True)


if __name__ == "__main__":
    main()
