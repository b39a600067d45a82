"""Population generation in vLLM, measured side by side in one run.

Four ways to generate the same R rows of N new tokens each (greedy, fixed length, ``ignore_eos``):

- plain vLLM:        a ``vllm.LLM`` without the manyminds extension, the reference;
- plain rows, ext.:  the same rows on the engine with the mind extension, every row the plain model
                     (what the extension costs when no mind is asked for);
- population vLLM:   the same rows, ``--minds`` distinct minds spread over the rows, one
                     ``manyminds.vllm.generate`` call;
- population HF:     the same rows and minds with ``Population.generate`` (transformers ``generate``).

Reports tokens/s and the ratios population / plain vLLM (issue 9's target: >= 0.95) and
population vLLM / population HF. Repetitions are interleaved; the median is reported. Weights
are random (speed only); prompts are random token ids (no tokenizer).

    python benchmarks/bench_vllm.py                          # tiny Qwen2 shape (head_dim 32), CPU
    # GPU (vllm), qwen2-0.5b shape, bf16, 256 rows:
    python benchmarks/bench_vllm.py --size qwen2-0.5b --dtype bfloat16 --rows 256 --new-tokens 128 --compile
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from manyminds.models import random_model
from manyminds.population import Population


def build_model(size: str, dtype: torch.dtype):
    if size == "tiny":  # head_dim 32: vLLM's CPU attention refuses the tiny families' 16
        return random_model("qwen2", vocab_size=512, dtype=dtype, hidden_size=256, intermediate_size=512,
                            num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=4)
    return random_model(size, dtype=dtype)


def grpo_step_seconds(kind: str, size: str, steps: int, rows: int, new_tokens: int) -> float:
    """Median seconds per optimizer step of GRPO with vLLM rollouts (TRL colocate mode, in-process):
    ``kind="plain"``: ``trl.GRPOTrainer``; ``"population"``: ``PopulationGRPOTrainer`` (sigma 0.02)."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

    model = build_model(size, torch.float32)
    vocab = {chr(97 + i % 26) * (1 + i // 26): i for i in range(model.config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="a", pad_token="b", eos_token="c")
    directory = tempfile.mkdtemp()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ds = Dataset.from_dict({"prompt": [" ".join(chr(97 + (i * 7 + j) % 26) for j in range(16)) for i in range(64)]})

    def reward(prompts, completions, **kwargs):
        return [float(len(set(c))) for c in completions]

    cuda = torch.cuda.is_available()
    common = {"output_dir": os.path.join(directory, "out"), "per_device_train_batch_size": rows,
              "num_generations": 4, "max_completion_length": new_tokens, "max_steps": steps,
              "learning_rate": 1e-5, "logging_steps": 1, "report_to": "none", "save_strategy": "no",
              "use_cpu": not cuda, "bf16": cuda, "seed": 0, "use_vllm": True, "vllm_mode": "colocate",
              "vllm_max_model_length": 64 + new_tokens, "vllm_enable_sleep_mode": False}
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    if kind == "plain":
        trainer = GRPOTrainer(directory, reward_funcs=reward, args=GRPOConfig(**common), train_dataset=ds,
                              processing_class=tokenizer, callbacks=[Clock()])
    else:
        trainer = PopulationGRPOTrainer(directory, reward_funcs=reward, train_dataset=ds, processing_class=tokenizer,
                                        args=PopulationGRPOConfig(**common, mind_sigma=0.02), callbacks=[Clock()])
    trainer.train()
    return statistics.median(times[1:])  # the first step warms up


def run_grpo(args) -> None:
    import json
    import subprocess
    import sys

    res = {}
    for rep in range(args.reps):
        for kind in ("plain", "population"):  # one process each: TRL's colocate engine is process-global
            out = subprocess.run([sys.executable, __file__, "--grpo-one", kind, "--size", args.size, "--rows",
                                  str(args.rows), "--new-tokens", str(args.new_tokens), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True).stdout
            res.setdefault(kind, []).append(json.loads(out.strip().splitlines()[-1])["step_s"])
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"# bench_vllm --grpo: size={args.size} rollouts/step={args.rows} new={args.new_tokens} steps={args.steps} "
          f"reps={args.reps} ({platform.machine()}, {os.cpu_count()} cpus)")
    print("| GRPO on vLLM rollouts | median s / step | / plain TRL |")
    print("|---|---|---|")
    for kind, label in (("plain", "plain TRL GRPOTrainer"), ("population", "PopulationGRPOTrainer, sigma 0.02")):
        print(f"| {label} | {med[kind]:.3f} | {med[kind] / med['plain']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="tiny or a manyminds.models shape (qwen2-0.5b, llama-1b)")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--minds", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sigma", type=float, default=0.02)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true", help="let vLLM compile (default: enforce_eager)")
    parser.add_argument("--skip-hf", action="store_true", help="leave out the transformers baseline")
    parser.add_argument("--grpo", action="store_true", help="time GRPO steps on vLLM rollouts instead "
                        "(plain trl.GRPOTrainer vs PopulationGRPOTrainer; --rows = rollouts per step)")
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps per run (--grpo)")
    parser.add_argument("--grpo-one", choices=["plain", "population"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grpo_one:
        import json

        print(json.dumps({"step_s": grpo_step_seconds(args.grpo_one, args.size, args.steps, args.rows,
                                                      args.new_tokens)}))
        return
    if args.grpo:
        run_grpo(args)
        return

    from vllm import LLM, SamplingParams

    import manyminds.vllm as mv

    dtype = getattr(torch, args.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(args.size, dtype)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, vocab, (args.rows, args.prompt_len), generator=gen)  # [R, P]
    rows = [{"prompt_token_ids": p.tolist()} for p in prompts]
    minds = [i % args.minds for i in range(args.rows)]
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
    common = {"dtype": args.dtype, "max_model_len": args.prompt_len + args.new_tokens + 16, "seed": 0,
                  "enforce_eager": not args.compile, "skip_tokenizer_init": True, "max_num_seqs": max(args.rows, 16),
                  "enable_prefix_caching": True}
    if device == "cuda":
        common["gpu_memory_utilization"] = 0.35
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        engines = {"plain": LLM(model=directory, **common), "minds": mv.make_llm(directory, **common)}
        pop = Population(model.to(device), sigma=args.sigma, seed=0)
        tokens = args.rows * args.new_tokens

        def run_plain():
            engines["plain"].reset_prefix_cache()
            return engines["plain"].generate(rows, params, use_tqdm=False)

        def run_ext_plain():
            engines["minds"].reset_prefix_cache()
            return mv.generate(engines["minds"], rows, sampling_params=params)

        def run_pop():
            engines["minds"].reset_prefix_cache()
            return mv.generate(engines["minds"], rows, minds=minds, population=pop, sampling_params=params)

        def run_hf():
            with torch.no_grad():
                return pop.generate(prompts.to(device), minds=minds, max_new_tokens=args.new_tokens,
                                    min_new_tokens=args.new_tokens, do_sample=False)

        cases = {"plain vLLM": run_plain, "plain rows, ext.": run_ext_plain, "population vLLM": run_pop}
        if not args.skip_hf:
            cases["population HF"] = run_hf
        for fn in cases.values():  # warm-up (compilation, first mind draws)
            fn()
        times = {name: [] for name in cases}
        for _ in range(args.reps):
            for name, fn in cases.items():
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        # the population really ran minds: its greedy tokens differ from the plain rows'
        differ = sum(a.outputs[0].token_ids != b.outputs[0].token_ids for a, b in zip(run_pop(), run_plain()))
        engines.clear()
        gc.collect()
    med = {name: statistics.median(t) for name, t in times.items()}
    tps = {name: tokens / t for name, t in med.items()}
    print(f"# bench_vllm: size={args.size} dtype={args.dtype} rows={args.rows} minds={args.minds} "
          f"prompt={args.prompt_len} new={args.new_tokens} compile={args.compile} sigma={args.sigma} "
          f"device={device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cpus) reps={args.reps}")
    print(f"# rows whose greedy tokens differ from the plain model's: {differ}/{args.rows}")
    print("| engine | median s | tokens/s | / plain vLLM |")
    print("|---|---|---|---|")
    for name in cases:
        print(f"| {name} | {med[name]:.3f} | {tps[name]:.0f} | {tps[name] / tps['plain vLLM']:.3f} |")
    if "population HF" in tps:
        print(f"\npopulation vLLM / population HF throughput: {tps['population vLLM'] / tps['population HF']:.2f}x")


if __name__ == "__main__":
    main()
