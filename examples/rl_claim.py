"""Does population GRPO help? Population GRPO vs plain GRPO vs plain GRPO at a higher temperature.

Three methods train the same model from the same start, with the same prompts, rollouts per step,
steps, learning rate and seeds; only how the rollouts are drawn differs:

- ``grpo``: plain GRPO (``mind_sigma=0``), rollouts sampled at temperature 1.0;
- ``grpo-hot``: plain GRPO with rollouts sampled at a higher temperature (``--hot-temperature``, 1.3):
  the cheap way to get more diverse groups, the baseline population GRPO has to beat;
- ``population``: population GRPO (a fresh mind per rollout, ``mind_sigma`` of the setting, update on
  the mean model's log-probs as in the paper), rollouts at temperature 1.0.

Two settings (``--settings``):

- ``smollm2``: SmolLM2-135M-Instruct with a LoRA adapter (r=8 on q/v, as in the paper), the ``mental``
  chat task (free-form answers, reward = the last number, ``manyminds.rl.free_form``);
- ``tiny-arith``: the zoo's 0.8M-parameter model, full fine-tuning, the ``arith`` task made harder
  (2 operations out of ``+-*``: 42% greedy on 200 held-out problems, vs 85% on the default task).

Before and after training, on the held-out split: greedy pass@1 and ``k`` samples at temperature 1.0
per problem (pass@k, and pass@1 of the samples). During training: the share of GRPO groups whose
rewards are all equal (TRL's ``frac_reward_zero_std``). Every method is compared with plain GRPO
and with the model before training, paired on the same problems (exact McNemar test and a paired
bootstrap; ``manyminds.evaluation.stats``).

Writes into ``--out``: ``problems.jsonl`` (one row per setting, method, seed, problem: greedy correct
and correct samples of k), ``runs.jsonl`` (one row per training run: per-step curves, seconds),
``meta.json`` (settings, machine, date), ``summary.json`` and ``summary.md`` (the tables). Runs found
in ``problems.jsonl`` are skipped, so an interrupted run continues where it stopped. A gzipped copy
(``problems.jsonl.gz``, as committed under ``docs/data/rl_claim/``) is read the same way.

    python examples/rl_claim.py --quick --out /tmp/rl_claim_quick   # ~1-2 min smoke run
    python examples/rl_claim.py --out docs/data/rl_claim            # the full run (see docs/rl.md)
    python examples/rl_claim.py --report docs/data/rl_claim         # tables again from the raw files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = ("grpo", "grpo-hot", "population")
CURVES = ("reward", "frac_reward_zero_std", "minds/frac_groups_zero_reward_var", "minds/kl_mind_mean")


@dataclass
class Setting:
    """One model + task + training recipe; every method of the setting uses all of it."""

    model: str
    task: str
    knobs: dict
    reward: str                  # "last_number" (free-form) or "answer" (the #### verifier)
    lora: bool                   # LoRA r=8 on q/v (True) or full fine-tuning
    lr: float
    sigma: float                 # mind_sigma of the population method
    steps: int
    num_generations: int         # rollouts per prompt (a GRPO group)
    prompts_per_step: int
    max_completion_length: int
    n_train: int
    n_test: int
    k: int = 4                   # samples per held-out problem for pass@k
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    eval_temperature: float = 1.0


SETTINGS = {
    "smollm2": Setting(model="smollm2-135m-instruct", task="mental", knobs={"max_operand": 20, "operators": "+-"},
                       reward="last_number", lora=True, lr=3e-4, sigma=0.01, steps=10, num_generations=8,
                       prompts_per_step=1, max_completion_length=32, n_train=400, n_test=100),
    "tiny-arith": Setting(model="tiny-arith", task="arith", knobs={"ops": 2, "operators": "+-*"}, reward="answer",
                          lora=False, lr=5e-5, sigma=0.05, steps=40, num_generations=8, prompts_per_step=4,
                          max_completion_length=48,
                          n_train=400, n_test=200, seeds=[0, 1, 2, 3, 4]),
}
QUICK = {"steps": 1, "num_generations": 4, "prompts_per_step": 1, "max_completion_length": 16, "n_train": 8,
         "n_test": 6, "k": 2, "seeds": [0]}


# ----------------------------------------------------------------------------- training and evaluation

def reward_fn(name: str):
    if name == "last_number":
        from manyminds.rl.free_form import last_number_reward
        return last_number_reward
    from manyminds.rewards import answer_reward
    return answer_reward


def load_rows(s: Setting, split: str):
    from manyminds.tasks import load_task

    return load_task(s.task, split=split, n=s.n_train if split == "train" else s.n_test, seed=0,
                     conversational=s.task != "arith", **s.knobs)


def method_args(method: str, s: Setting, hot_temperature: float) -> dict:
    if method == "grpo":
        return {"mind_sigma": 0.0, "temperature": 1.0}
    if method == "grpo-hot":
        return {"mind_sigma": 0.0, "temperature": hot_temperature}
    return {"mind_sigma": s.sigma, "temperature": 1.0, "mind_logprobs": "mean"}


def train_one(method: str, seed: int, s: Setting, hot_temperature: float, out_dir: str):
    """Train one (method, seed); returns the trained model, tokenizer, per-step curves and seconds."""
    import torch
    from transformers import PrinterCallback

    import manyminds
    from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

    model, tok = manyminds.load(s.model)
    args = PopulationGRPOConfig(
        output_dir=out_dir, max_steps=s.steps, num_generations=s.num_generations,
        per_device_train_batch_size=s.num_generations * s.prompts_per_step,
        max_completion_length=s.max_completion_length, learning_rate=s.lr, logging_steps=1, report_to="none",
        save_strategy="no", gradient_checkpointing=False, seed=seed, mind_seed=seed, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), **method_args(method, s, hot_temperature))
    peft_config = None
    if s.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                 task_type="CAUSAL_LM")
    trainer = PopulationGRPOTrainer(model, reward_funcs=[reward_fn(s.reward)], args=args,
                                    train_dataset=load_rows(s, "train"), processing_class=tok,
                                    peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    history = [h for h in trainer.state.log_history if "reward" in h]
    curves = {c: [h.get(c) for h in history] for c in CURVES}
    return trainer.model, tok, curves, seconds


def eval_problems(model, tok, s: Setting, seed: int) -> list[dict]:
    """Per held-out problem: greedy correct (0/1) and correct samples out of ``k`` at ``eval_temperature``."""
    from manyminds.evaluation.generation import generate_completions

    rows = load_rows(s, "test")
    prompts, answers = list(rows["prompt"]), list(rows["answer"])
    reward = reward_fn(s.reward)
    greedy = generate_completions(model, tok, prompts, max_new_tokens=s.max_completion_length, batch_size=64)
    g = reward(prompts, greedy, answer=answers)
    flat = [p for p in prompts for _ in range(s.k)]  # prompt-major: [P * k]
    samples = generate_completions(model, tok, flat, max_new_tokens=s.max_completion_length,
                                   temperature=s.eval_temperature, seed=1000 + seed, batch_size=64)
    r = reward(flat, samples, answer=[a for a in answers for _ in range(s.k)])
    out = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        out.append({"problem": i, "prompt": text, "answer": answer, "greedy": int(g[i]), "k": s.k,
                    "n_correct": int(sum(r[i * s.k:(i + 1) * s.k])), "greedy_text": greedy[i][:200]})
    return out


def append_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: str) -> list[dict]:
    """Rows of ``path`` and of ``path + ".gz"`` (the committed, compressed copy), if either exists."""
    import gzip

    rows = []
    for name, opener in ((path + ".gz", gzip.open), (path, open)):
        if os.path.exists(name):
            with opener(name, "rt") as f:
                rows += [json.loads(line) for line in f if line.strip()]
    return rows


def run(opts, settings: dict[str, Setting]) -> None:
    import torch

    import manyminds

    torch.set_num_threads(opts.threads)
    os.makedirs(opts.out, exist_ok=True)
    problems_path, runs_path = os.path.join(opts.out, "problems.jsonl"), os.path.join(opts.out, "runs.jsonl")
    done = {(r["setting"], r["method"], r["seed"]) for r in read_jsonl(problems_path)}
    meta_path = os.path.join(opts.out, "meta.json")
    meta = read_json(meta_path) or {"started": now(), "wall_seconds": 0.0}
    command = " ".join(["python", "examples/rl_claim.py", *sys.argv[1:]])
    meta["commands"] = [*meta.get("commands", []), command]  # every invocation that wrote into this folder
    meta.update({"machine": machine(),
                 "hot_temperature": opts.hot_temperature, "methods": opts.methods,
                 "settings": {**meta.get("settings", {}), **{name: asdict(s) for name, s in settings.items()}}})
    wall = time.time()

    def save_meta():
        meta["finished"] = now()
        meta["wall_seconds"] = meta.get("wall_seconds_before", 0.0) + time.time() - wall
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)

    meta["wall_seconds_before"] = meta.get("wall_seconds", 0.0)
    for name, s in settings.items():
        if (name, "before", 0) not in done:
            start = time.time()
            model, tok = manyminds.load(s.model)
            rows = eval_problems(model, tok, s, 0)
            append_jsonl(problems_path, [{"setting": name, "method": "before", "seed": 0, **r} for r in rows])
            acc = statistics.mean(r["greedy"] for r in rows)
            print(f"[{name}] before training: greedy {acc:.3f} ({time.time() - start:.0f} s)", flush=True)
            save_meta()
        for seed in s.seeds:
            for method in opts.methods:
                if (name, method, seed) in done:
                    continue
                model, tok, curves, secs = train_one(method, seed, s, opts.hot_temperature,
                                                     os.path.join(opts.scratch, f"{name}-{method}-{seed}"))
                start = time.time()
                rows = eval_problems(model, tok, s, seed)
                eval_secs = time.time() - start
                append_jsonl(runs_path, [{"setting": name, "method": method, "seed": seed, "train_seconds": secs,
                                          "eval_seconds": eval_secs, "curves": curves}])
                append_jsonl(problems_path, [{"setting": name, "method": method, "seed": seed, **r} for r in rows])
                zero = [v for v in curves["frac_reward_zero_std"] if v is not None]
                print(f"[{name}] {method} seed {seed}: train {secs:.0f} s, eval {eval_secs:.0f} s, greedy "
                      f"{statistics.mean(r['greedy'] for r in rows):.3f}, pass@{s.k} "
                      f"{statistics.mean(r['n_correct'] > 0 for r in rows):.3f}, zero-var groups "
                      f"{statistics.mean(zero) if zero else float('nan'):.2f}", flush=True)
                save_meta()
    save_meta()
    report(opts.out)


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def machine() -> str:
    import torch
    import transformers
    import trl

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} thread(s)), "
            f"transformers {transformers.__version__}, trl {trl.__version__}, Python {platform.python_version()}")


# ----------------------------------------------------------------------------- the report (from raw files only)

def _fmt_ci(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]"


def _per_problem(rows: list[dict], metric: str) -> dict[int, dict[int, float]]:
    """``{seed: {problem: value}}``; metric ``greedy`` (0/1), ``pass@k`` (0/1) or ``sample_acc`` (c/k)."""
    out: dict[int, dict[int, float]] = {}
    for r in rows:
        v = {"greedy": r["greedy"], "pass@k": int(r["n_correct"] > 0), "sample_acc": r["n_correct"] / r["k"]}[metric]
        out.setdefault(r["seed"], {})[r["problem"]] = v
    return out


def summarize_setting(rows: list[dict], runs: list[dict]) -> dict:
    """Per method: accuracies with intervals; paired tests vs ``grpo`` and vs ``before``; training curves."""
    from manyminds.evaluation.stats import (
        bootstrap_interval,
        mcnemar_exact,
        paired_bootstrap,
        wilson_interval,
    )

    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    methods = [m for m in ("before", *METHODS) if m in by_method]
    out = {"methods": {}, "comparisons": []}
    for m in methods:
        entry = {"seeds": sorted({r["seed"] for r in by_method[m]}), "n_problems": len({r["problem"] for r in by_method[m]})}
        for metric in ("greedy", "pass@k", "sample_acc"):
            grid = _per_problem(by_method[m], metric)
            problems = sorted(set.intersection(*(set(g) for g in grid.values())))
            per_seed = [statistics.mean(g[p] for p in problems) for g in grid.values()]
            avg = [statistics.mean(g[p] for g in grid.values()) for p in problems]  # seed-averaged, [P]
            pooled = [g[p] for g in grid.values() for p in problems]
            e = {"mean": statistics.mean(pooled), "per_seed": per_seed,
                 "seed_sd": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                 "bootstrap_ci": bootstrap_interval(avg, seed=0)}
            if metric != "sample_acc":  # binary: Wilson on the pooled (seed, problem) outcomes
                e["wilson_ci"] = wilson_interval(int(sum(pooled)), len(pooled))
            entry[metric] = e
        mine = [r for r in runs if r["method"] == m]
        if mine:
            for c in ("frac_reward_zero_std", "minds/frac_groups_zero_reward_var", "reward", "minds/kl_mind_mean"):
                vals = [statistics.mean(v) for r in mine if (v := [x for x in r["curves"].get(c, []) if x is not None])]
                if vals:
                    entry[f"train {c}"] = {"mean": statistics.mean(vals),
                                           "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}
            entry["train_minutes"] = statistics.mean(r["train_seconds"] for r in mine) / 60
            entry["eval_minutes"] = statistics.mean(r["eval_seconds"] for r in mine) / 60
        out["methods"][m] = entry

    for m, ref in [(m, ref) for ref in ("grpo", "before") for m in METHODS if m != ref]:
        if m not in by_method or ref not in by_method:
            continue
        for metric in ("greedy", "pass@k"):
            a, b = _per_problem(by_method[m], metric), _per_problem(by_method[ref], metric)
            # pairs: (seed, problem)
            seeds = sorted(set(a) & set(b)) if ref != "before" else sorted(a)
            if not seeds:
                continue
            # "before" has one evaluation (seed 0): every seed of m is paired with it
            ref_runs = {s: b[s] if ref != "before" else b[min(b)] for s in seeds}
            problems = sorted(set.intersection(*(set(a[s]) & set(ref_runs[s]) for s in seeds)))
            x = [a[s][p] for s in seeds for p in problems]
            y = [ref_runs[s][p] for s in seeds for p in problems]
            xa = [statistics.mean(a[s][p] for s in seeds) for p in problems]
            ya = [statistics.mean(ref_runs[s][p] for s in seeds) for p in problems]
            diff, ci, p_boot = paired_bootstrap(xa, ya, seed=0)
            out["comparisons"].append({
                "method": m, "reference": ref, "metric": metric, "seeds": seeds, "n_problems": len(problems),
                "difference": diff, "bootstrap_ci": ci, "p_bootstrap": p_boot, "p_mcnemar": mcnemar_exact(x, y),
                "discordant": [sum(1 for u, v in zip(x, y) if u > v), sum(1 for u, v in zip(x, y) if u < v)]})
    return out


def markdown(name: str, summ: dict, k: int) -> str:
    lines = [f"**{name}**", "",
             (f"| method | seeds | greedy pass@1 | Wilson 95% | bootstrap 95% | pass@{k} (T=1) | Wilson 95% | "
              f"bootstrap 95% | sample acc. | zero-var groups (train) |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m, e in summ["methods"].items():
        g, pk, sa = e["greedy"], e["pass@k"], e["sample_acc"]
        zero = e.get("train frac_reward_zero_std")
        zero_s = f"{zero['mean']:.2f} ± {zero['sd']:.2f}" if zero else "-"
        many = len(e["seeds"]) > 1

        def sd(x, many=many):
            return f" ± {x['seed_sd']:.3f}" if many else ""

        lines.append(f"| {'before training' if m == 'before' else m} | {len(e['seeds']) if m != 'before' else '-'} | "
                     f"{g['mean']:.3f}{sd(g)} | {_fmt_ci(*g['wilson_ci'])} | {_fmt_ci(*g['bootstrap_ci'])} | "
                     f"{pk['mean']:.3f}{sd(pk)} | {_fmt_ci(*pk['wilson_ci'])} | {_fmt_ci(*pk['bootstrap_ci'])} | "
                     f"{sa['mean']:.3f} | {zero_s} |")
    lines += ["", ("| comparison | metric | difference | bootstrap 95% | p (bootstrap) | p (McNemar) | "
                   "discordant (+/-) |"), "|---|---|---|---|---|---|---|"]
    for c in summ["comparisons"]:
        metric = "greedy pass@1" if c["metric"] == "greedy" else f"pass@{k}"
        ref = "before training" if c["reference"] == "before" else c["reference"]
        lines.append(f"| {c['method']} vs {ref} | {metric} | {c['difference']:+.3f} | {_fmt_ci(*c['bootstrap_ci'])} | "
                     f"{c['p_bootstrap']:.3f} | {c['p_mcnemar']:.3f} | {c['discordant'][0]}/{c['discordant'][1]} |")
    return "\n".join(lines)


def report(out_dir: str) -> dict:
    """Recompute every table from ``problems.jsonl`` and ``runs.jsonl``; write summary.json / summary.md."""
    rows, runs = read_jsonl(os.path.join(out_dir, "problems.jsonl")), read_jsonl(os.path.join(out_dir, "runs.jsonl"))
    meta_path = os.path.join(out_dir, "meta.json")
    meta = read_json(meta_path) or {}
    summary = {"meta": meta, "settings": {}}
    parts = [*(f"command: `{c}`" for c in meta.get("commands", [])), f"machine: {meta.get('machine', '?')}",
             (f"date: {meta.get('started', '?')} to {meta.get('finished', '?')}, wall time "
              f"{meta.get('wall_seconds', 0) / 60:.0f} min"), ""]
    for name in dict.fromkeys(r["setting"] for r in rows):
        k = next(r["k"] for r in rows if r["setting"] == name)
        summ = summarize_setting([r for r in rows if r["setting"] == name], [r for r in runs if r["setting"] == name])
        summary["settings"][name] = summ
        parts += [markdown(name, summ, k), ""]
    text = "\n".join(parts)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/rl_claim", help="output folder (raw JSONL, summary)")
    p.add_argument("--report", metavar="DIR", help="only recompute the tables from DIR's raw files")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 step, 6 problems, k=2")
    p.add_argument("--settings", default="smollm2,tiny-arith", help="comma-separated: " + ",".join(SETTINGS))
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--seeds", help="override every setting's seeds, e.g. 0,1,2")
    p.add_argument("--steps", type=int, help="override every setting's optimizer steps")
    p.add_argument("--hot-temperature", type=float, default=1.3, help="rollout temperature of grpo-hot")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "rl_claim"),
                   help="trainer output_dir parent (nothing is saved there; kept out of --out)")
    opts = p.parse_args(argv)
    if opts.report:
        report(opts.report)
        return
    opts.methods = [m for m in opts.methods.split(",") if m]
    bad = sorted(set(opts.methods) - set(METHODS)) + sorted(set(opts.settings.split(",")) - set(SETTINGS))
    if bad:
        p.error(f"unknown method(s)/setting(s) {bad}")
    settings = {n: SETTINGS[n] for n in opts.settings.split(",")}
    if opts.quick:
        settings = {n: replace(s, **QUICK) for n, s in settings.items()}
    if opts.seeds:
        settings = {n: replace(s, seeds=[int(x) for x in opts.seeds.split(",")]) for n, s in settings.items()}
    if opts.steps:
        settings = {n: replace(s, steps=opts.steps) for n, s in settings.items()}
    run(opts, settings)


if __name__ == "__main__":
    main()
