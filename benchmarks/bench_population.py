"""Population generation speed, measured side by side in one run.

Three ways to generate the same R rows of N new tokens each (sampling, fixed length):

- plain:      ``model.generate`` on the R rows (no population), the reference;
- population: the same R rows under ``population.minds(ids)`` with ``--minds`` distinct minds
              spread over the rows (R / minds prompts x minds);
- population, no noise cache: the same, drawing every offset again on entering the context
              (what a stream of fresh minds costs);
- one mind at a time: the same rows, one ``generate`` call per mind (R / minds rows each).

Reports tokens/s and the ratios population / plain (target >= 0.95 on CPU, >= 0.97 on GPU)
and population / one-at-a-time (the speed-up of batching minds). Repetitions are interleaved
and the median is reported.

    python benchmarks/bench_population.py                         # tiny default-model shape, CPU
    python benchmarks/bench_population.py --size qwen2-0.5b --device cuda --dtype bfloat16 --rows 64
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from manyminds.zoo.models import random_model
from manyminds.population import Population


def build_model(size: str, device: str, dtype: torch.dtype):
    if size == "tiny":
        from manyminds.zoo.charlm import VOCAB_SIZE
        from manyminds.zoo import ZOO

        entry = ZOO["tiny-arith"]  # the default model's shape (random weights: speed only)
        return random_model(entry.family, vocab_size=VOCAB_SIZE, dtype=dtype, device=device, **entry.config)
    return random_model(size, dtype=dtype, device=device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="tiny (default zoo model shape), qwen2-0.5b, llama-1b")
    parser.add_argument("--rows", type=int, default=64, help="rows generated per call")
    parser.add_argument("--minds", type=int, default=16, help="distinct minds among the rows")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median reported)")
    parser.add_argument("--sigma", type=float, default=0.02)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()
    if args.rows % args.minds:
        parser.error("--rows must be a multiple of --minds")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = build_model(args.size, args.device, dtype)
    pop = Population(model, sigma=args.sigma, seed=0)
    cold = Population(model, sigma=args.sigma, seed=0, cache_bytes=0)  # draws every offset on each entry
    vocab = model.config.vocab_size
    per_mind = args.rows // args.minds
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, vocab, (per_mind, args.prompt_len), generator=gen)
    # rows: prompt-major, each prompt answered by every mind -> [rows, prompt_len]
    ids = prompts.repeat_interleave(args.minds, dim=0).to(args.device)
    minds = list(range(args.minds)) * per_mind
    kw = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": True,
          "pad_token_id": 0, "attention_mask": torch.ones_like(ids)}

    def plain():
        return model.generate(ids, **kw)

    def population():
        with pop.minds(minds):
            return model.generate(ids, **kw)

    def population_cold():
        with cold.minds(minds):
            return model.generate(ids, **kw)

    def one_at_a_time():
        for m in range(args.minds):
            rows = ids[m::args.minds]
            with pop.minds([m] * rows.shape[0]):
                model.generate(rows, **dict(kw, attention_mask=torch.ones_like(rows)))

    runs = {"plain batched sampling": plain, "population (one batch)": population,
            "population, no noise cache": population_cold, "one mind at a time": one_at_a_time}
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.reps):
            for name, fn in runs.items():
                sync(args.device)
                start = time.perf_counter()
                fn()
                sync(args.device)
                times[name].append(time.perf_counter() - start)
    tokens = args.rows * args.new_tokens
    med = {name: statistics.median(t) for name, t in times.items()}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"model: {args.size} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"params, {args.dtype}) on {device}; {pop.num_layers} perturbed norms")
    print(f"rows={args.rows} minds={args.minds} prompt_len={args.prompt_len} new_tokens={args.new_tokens} "
          f"reps={args.reps} (median)")
    print()
    print("| method | seconds | tokens/s | ratio to plain |")
    print("|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {med[name]:.3f} | {tokens / med[name]:.0f} | {med['plain batched sampling'] / med[name]:.3f} |")
    print()
    ratio = med["plain batched sampling"] / med["population (one batch)"]
    speedup = med["one mind at a time"] / med["population (one batch)"]
    print(f"population / plain throughput: {ratio:.3f}")
    print(f"population vs one mind at a time ({args.minds} minds): {speedup:.2f}x faster")


if __name__ == "__main__":
    main()
