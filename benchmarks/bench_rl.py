"""Step time of population GRPO vs plain GRPO (trl.GRPOTrainer) at the same settings.

Runs are interleaved (plain, population-mean, population-mind, plain, ...) so that machine load
hits every variant alike; each run trains ``--steps`` optimizer steps and we keep TRL's own
``step_time`` metric of the steps after the first (warm-up). Every completion has exactly
``--completion-length`` tokens (``min_new_tokens``), so all variants do the same work.

Every variant trains at one precision, ``--precision`` (default fp32), passed explicitly as
``bf16=`` to both configs: TRL's ``GRPOConfig`` turns an unset ``bf16`` into True (bf16 autocast,
also on a CPU), while ``PopulationGRPOConfig`` leaves it False without a bf16 GPU, so relying on
the defaults compared bf16 plain GRPO with fp32 population GRPO.

    python benchmarks/bench_rl.py                       # tiny-arith shape, CPU
    python benchmarks/bench_rl.py --size qwen2-0.5b     # real shape (random init)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.zoo.models import random_model
from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer
from manyminds.tasks import load_task

# size -> (family, config overrides); "tiny-arith" is the default zoo model's shape.
SIZES = {
    "micro": ("qwen2", {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "tie_word_embeddings": True}),
    "tiny-arith": ("qwen2", {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
                                 "num_key_value_heads": 2, "tie_word_embeddings": True}),
    "qwen2-0.5b": ("qwen2-0.5b", {}),  # real shape, the char tokenizer's vocabulary
}


def reward(prompts, completions, **kwargs):
    return [(sum(map(ord, c)) % 7) / 6 for c in completions]


class CPUTime(TrainerCallback):
    """Process CPU seconds (all threads) per optimizer step: less sensitive than wall time to other
    jobs on a shared machine."""

    def __init__(self):
        self.steps: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.process_time() - self._start)


# variant -> population settings (None: plain trl.GRPOTrainer)
VARIANTS = {
    "plain": None,
    "population-mean": {"mind_logprobs": "mean"},
    "population-mind": {"mind_logprobs": "mind"},
    # the KL(mind || mean) metrics cost no-grad log-prob passes of their own (mind_kl_metrics)
    "population-mean-nokl": {"mind_logprobs": "mean", "mind_kl_metrics": False},
    "population-mind-nokl": {"mind_logprobs": "mind", "mind_kl_metrics": False},
}


# settings that decide how much work a step does: every variant must agree with plain GRPO on them
SAME_WORK = ("bf16", "fp16", "gradient_checkpointing", "per_device_train_batch_size", "num_generations",
             "max_completion_length", "generation_kwargs", "steps_per_generation", "num_iterations", "beta",
             "torch_empty_cache_steps")


def make_trainer(variant: str, args_kw: dict, tok, ds, size: str, reference: GRPOConfig):
    family, overrides = SIZES[size]
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    model = random_model(family, vocab_size=VOCAB_SIZE, seed=0, **overrides, **ids)
    if VARIANTS[variant] is None:
        args = GRPOConfig(**args_kw)
        trainer = GRPOTrainer(model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok)
    else:
        args = PopulationGRPOConfig(**args_kw, mind_sigma=0.02, **VARIANTS[variant])
        trainer = PopulationGRPOTrainer(model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok)
    for name in SAME_WORK:  # a config default that differs between the two sides is a different benchmark
        if getattr(args, name) != getattr(reference, name):
            raise RuntimeError(f"{variant}: {name}={getattr(args, name)!r}, plain GRPO has "
                               f"{getattr(reference, name)!r}")
    return trainer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny-arith", choices=list(SIZES))
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is warm-up)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every variant")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--completion-length", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="training precision of every variant (bf16: bf16 autocast; slower than fp32 on this CPU)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, from {list(VARIANTS)}; 'plain' is the reference")
    args = p.parse_args()
    variants = args.variants.split(",")
    if variants[0] != "plain" or any(v not in VARIANTS for v in variants):
        p.error(f"--variants must start with plain and come from {list(VARIANTS)}")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    tok = build_tokenizer()
    ds = load_task("arith", n=64, seed=0)
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        args_kw = {"output_dir": tmp, "per_device_train_batch_size": args.num_generations * args.prompts_per_step,
                       "num_generations": args.num_generations, "max_completion_length": args.completion_length,
                       "generation_kwargs": {"min_new_tokens": args.completion_length}, "max_steps": args.steps,
                       "learning_rate": 1e-5, "logging_steps": 1, "report_to": "none", "save_strategy": "no",
                       "use_cpu": not torch.cuda.is_available(), "gradient_checkpointing": False, "seed": 0,
                       "disable_tqdm": True, "bf16": args.precision == "bf16", "fp16": False}
        reference = GRPOConfig(**args_kw)
        for rep in range(args.reps):
            for v in variants:
                trainer = make_trainer(v, dict(args_kw), tok, ds, args.size, reference)
                clock = CPUTime()
                trainer.add_callback(clock)
                start = time.perf_counter()
                trainer.train()
                steps = [h["step_time"] for h in trainer.state.log_history if "step_time" in h][1:]
                times[v] += steps
                cpu[v] += clock.steps[1:]
                print(f"rep {rep} {v:20s} wall {statistics.median(steps):.3f} s/step, cpu "
                      f"{statistics.median(clock.steps[1:]):.3f} s/step (run {time.perf_counter() - start:.1f} s)",
                      flush=True)
    base = statistics.median(times["plain"])
    base_cpu = statistics.median(cpu["plain"])
    device = "cuda" if torch.cuda.is_available() else f"cpu ({args.threads} threads)"
    print(f"\nsize={args.size} device={device} precision={args.precision} (every variant) "
          f"rollouts/step={args.num_generations * args.prompts_per_step} completion={args.completion_length} tokens, "
          f"median over {len(times['plain'])} steps per variant; load average {load_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end\n")
    # min is the classic timeit estimator on a shared machine: other jobs only ever add time.
    best, best_cpu = min(times["plain"]), min(cpu["plain"])
    print("| variant | wall s/step median (ratio) | wall s/step min (ratio) | CPU s/step median (ratio) "
          "| CPU s/step min (ratio) |")
    print("|---|---|---|---|---|")
    for v in variants:
        m, c = statistics.median(times[v]), statistics.median(cpu[v])
        print(f"| {v} | {m:.3f} ({m / base:.3f}x) | {min(times[v]):.3f} ({min(times[v]) / best:.3f}x) "
              f"| {c:.3f} ({c / base_cpu:.3f}x) | {min(cpu[v]):.3f} ({min(cpu[v]) / best_cpu:.3f}x) |")


if __name__ == "__main__":
    main()
