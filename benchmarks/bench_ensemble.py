"""Benchmark: K-member batched LoRA training step vs K PEFT adapters in a loop vs one LoRA on K*B rows,
and mixture decoding vs plain batched generation of the same rows.

Every measurement runs in its own fresh subprocess (so peak memory is that method's alone), side
by side in one invocation, on random-init weights (speed does not depend on weight values).

    python benchmarks/bench_ensemble.py --size small --members 2,4,8
    python benchmarks/bench_ensemble.py --size qwen2-0.5b --device cuda --batch 2 --seq 256
    python benchmarks/bench_ensemble.py --memory --size long-vocab --members 8 --batch 1 --seq 512,1024 \
        --dtype bfloat16        # peak memory: one LoRA vs K members, log-probs before/after issue 10

Columns: median time per step (s; on CPU the process CPU time of all threads, which other jobs on
a shared machine disturb far less than wall time; on CUDA wall time), peak memory increase over
the loaded model (MiB; CPU: peak RSS, CUDA: max_memory_allocated), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import time

SIZES = {
    # family, overrides
    "tiny": ("qwen2", {}),
    "small": ("qwen2", {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048}),
    "qwen2-0.5b": ("qwen2-0.5b", {}),
    "llama-1b": ("llama-1b", {}),
    # long-sequence memory runs on CPU: a vocabulary that matters, everything else small
    "long-vocab": ("qwen2", {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32000}),
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(size: str, device: str, dtype_name: str):
    import torch

    from manyminds.zoo.models import random_model

    family, overrides = SIZES[size]
    dtype = getattr(torch, dtype_name)
    vocab = overrides.pop("vocab_size", 64 if family == "qwen2" else None)
    return random_model(family, vocab_size=vocab, dtype=dtype, device=device, **overrides).train()


def _worker(spec: dict, queue) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = spec["device"]
    model = _build(spec["size"], device, spec["dtype"])
    V = model.config.vocab_size
    K, B, T = spec["K"], spec["batch"], spec["seq"]
    ids = torch.randint(3, V, (B, T), device=device)
    method = spec["method"]
    if method in ("ensemble", "mixture", "plain"):
        from manyminds.ensemble import EnsembleLoRA

        ens = EnsembleLoRA(model, num_members=K, r=spec["r"], init="diverse")
        params = list(ens.lora_parameters())
    else:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=spec["r"], lora_alpha=2 * spec["r"], task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config, adapter_name="member_0")
        if method == "peft_loop":
            for k in range(1, K):
                peft_model.add_adapter(f"member_{k}", config)
        for name, p in peft_model.named_parameters():
            p.requires_grad_("lora_" in name)
        params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def nll(logits, labels):
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())

    def step():
        opt.zero_grad(set_to_none=True)
        if method == "ensemble":
            from manyminds.ensemble import renyi_loss

            rep = ids.repeat(K, 1)                                            # [K*B, T]
            with ens.all_members():
                logits = ens(input_ids=rep).logits
            logp = -torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), rep[:, 1:].flatten(), reduction="none"
            ).view(K, B, T - 1).sum(-1)                                       # [K, B]
            loss, _ = renyi_loss(logp, 0.8)
            loss.backward()
        elif method == "one_lora":
            rep = ids.repeat(K, 1)
            nll(peft_model(input_ids=rep).logits, rep).backward()
        else:  # peft_loop: K adapters, one forward/backward each
            for k in range(K):
                peft_model.base_model.set_adapter(f"member_{k}")
                for name, p in peft_model.named_parameters():   # set_adapter freezes the others
                    p.requires_grad_("lora_" in name)
                nll(peft_model(input_ids=ids).logits, ids).backward()
        opt.step()

    def generate():
        from manyminds.ensemble import mixture_generate

        prompt = ids[:, : spec["prompt_len"]]
        kw = {"max_new_tokens": spec["new_tokens"], "eos_token_id": None, "pad_token_id": 0}
        if method == "mixture":
            mixture_generate(ens, prompt, **kw)
        else:  # plain: the same K*B rows through generate (each row its own member)
            rep = prompt.repeat(K, 1)
            with ens.all_members():
                ens.generate(input_ids=rep, attention_mask=torch.ones_like(rep), do_sample=False, **kw)

    fn = step if method in ("ensemble", "one_lora", "peft_loop") else generate
    if method in ("mixture", "plain"):
        model.eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad() if fn is generate else torch.enable_grad():
        fn()                                                                 # warm-up
        sync()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated() / 2**20
        else:
            base_mem = _rss_mib()
        times, cpu_times = [], []
        for _ in range(spec["repeats"]):
            t, c = time.perf_counter(), time.process_time()
            fn()
            sync()
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else _peak_rss_mib())
    # CPU: process time (all threads) is robust to other jobs on a shared box; CUDA: wall time
    seconds = statistics.median(times if device.startswith("cuda") else cpu_times)
    queue.put({"seconds": seconds, "wall_seconds": statistics.median(times),
               "peak_mib": max(0.0, peak - base_mem)})


def measure(spec: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(spec, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


# ------------------------------------------------------------------ peak memory of one training step
def naive_token_logps(logits, input_ids):
    """The log-probs before issue 10 (kept to measure against): a float32 copy of all logits."""
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:]
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def _current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _rss_high_water_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _reset_rss_high_water() -> None:
    """Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _memory_worker(spec: dict, queue) -> None:
    import gc

    import torch

    from manyminds.rows import sequence_token_logps

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device, cuda = spec["device"], spec["device"].startswith("cuda")
    model = _build(spec["size"], device, spec["dtype"])
    V = model.config.vocab_size
    K, B, T = spec["K"], spec["batch"], spec["seq"]
    rows = torch.randint(3, V, (K * B, T), device=device)                   # [K*B, T], member-major
    token_logps = naive_token_logps if spec["logps"] == "naive" else sequence_token_logps
    if spec["method"] == "ensemble":
        from manyminds.ensemble import EnsembleLoRA, renyi_loss

        ens = EnsembleLoRA(model, num_members=K, r=spec["r"], init="diverse")
        params = list(ens.lora_parameters())

        def loss_fn():
            with ens.all_members():
                logits = ens(input_ids=rows, use_cache=False).logits                # [K*B, T, V]
            logp = token_logps(logits, rows).view(K, B, T - 1).sum(-1)             # [K, B]
            return renyi_loss(logp, 0.8)[0]
    else:  # one PEFT LoRA on the same K*B rows, the same log-prob code
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(model, LoraConfig(r=spec["r"], lora_alpha=2 * spec["r"],
                                                      task_type="CAUSAL_LM"))
        params = [p for p in peft_model.parameters() if p.requires_grad]

        def loss_fn():
            logits = peft_model(input_ids=rows, use_cache=False).logits             # [K*B, T, V]
            return -token_logps(logits, rows).sum(-1).mean()
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    logits_mib = K * B * T * V * torch.finfo(getattr(torch, spec["dtype"])).bits / 8 / 2**20
    try:
        step()                      # warm-up: optimizer state, lazy initialisations
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        else:
            base = _current_rss_mib()
            _reset_rss_high_water()
        step()
    except RuntimeError as err:     # torch.cuda.OutOfMemoryError is one; CPU: "can't allocate memory"
        if "out of memory" not in str(err) and "can't allocate memory" not in str(err):
            raise
        queue.put({"peak_mib": float("inf"), "base_mib": float("nan"), "logits_mib": logits_mib})
        return
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _rss_high_water_mib()
    queue.put({"peak_mib": peak - base, "base_mib": base, "logits_mib": logits_mib})


def measure_memory(spec: dict) -> dict:
    """Run :func:`_memory_worker` in a fresh process. On CPU glibc is told to serve every
    allocation of 64 KiB or more by mmap (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the
    RSS at once and the RSS high-water mark follows the live tensors."""
    import os
    import queue as queue_module

    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_memory_worker, args=(spec, queue))
        proc.start()
        result = None
        while result is None:
            try:
                result = queue.get(timeout=5)
            except queue_module.Empty:
                if not proc.is_alive():     # killed (e.g. out of host memory) before reporting
                    result = {"peak_mib": float("inf"), "base_mib": float("nan"),
                              "logits_mib": float("nan"), "exitcode": proc.exitcode}
        proc.join()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return result


def memory_table(args) -> list[dict]:
    """Peak memory of one training step (forward, backward, AdamW) at each T of ``--seq``:
    one PEFT LoRA on K*B rows vs the K-member ensemble step, with the log-probs of before
    (``naive``: float32 copy of the logits) and after (``selective``) issue 10, side by side."""
    K = int(args.members.split(",")[-1])
    how = ("torch.cuda.max_memory_allocated() - memory_allocated() before the step"
           if args.device.startswith("cuda") else
           "peak RSS (VmHWM, reset through /proc/self/clear_refs) - RSS before the step; "
           "glibc mmap threshold 64 KiB")
    rows = []
    for T in [int(t) for t in str(args.seq).split(",")]:
        for logps in args.logps.split(","):
            res = {m: measure_memory({"size": args.size, "device": args.device, "dtype": args.dtype,
                                      "threads": args.threads, "r": args.r, "K": K,
                                      "batch": args.batch, "seq": T, "logps": logps, "method": m})
                   for m in ("one_lora", "ensemble")}
            rows.append({"T": T, "logps": logps, "K": K, **{f"{m}_{k}": v for m, r in res.items()
                                                              for k, v in r.items()}})
            print(f"T={T} logps={logps} done: " + json.dumps(
                {m: round(r["peak_mib"]) for m, r in res.items()}), flush=True)
    print(f"\npeak memory of one training step, MiB: {how}\n"
          f"size={args.size} K={K} B={args.batch} r={args.r} device={args.device} dtype={args.dtype} "
          f"threads={args.threads}; logits [K*B, T, V] alone = the last column\n")
    print("| T | log-probs | one LoRA on K*B rows | K-member step | K-member / one LoRA "
          "| K-member / K-member naive | logits MiB |")
    print("|" + "---|" * 7)
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if math.isfinite(a) and math.isfinite(b) else "-"

    def mib(x: float) -> str:
        return f"{x:.0f}" if math.isfinite(x) else "out of memory"

    for r in rows:
        naive = next((q for q in rows if q["T"] == r["T"] and q["logps"] == "naive"), None)
        vs_naive = ratio(r["ensemble_peak_mib"], naive["ensemble_peak_mib"]) if naive else "-"
        print(f"| {r['T']} | {r['logps']} | {mib(r['one_lora_peak_mib'])} | {mib(r['ensemble_peak_mib'])} | "
              f"{ratio(r['ensemble_peak_mib'], r['one_lora_peak_mib'])} | {vs_naive} | "
              f"{r['ensemble_logits_mib']:.0f} |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--members", default="2,4,8", help="comma-separated K values")
    parser.add_argument("--batch", type=int, default=4, help="B, rows per member")
    parser.add_argument("--seq", default="64", help="T, tokens per row (--memory: comma-separated list)")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--memory", action="store_true",
                        help="only the peak-memory table: one LoRA vs the K-member step (K = the last "
                             "of --members) at each T of --seq")
    parser.add_argument("--logps", default="naive,selective",
                        help="--memory: log-prob code(s) to compare: naive (float32 copy of the logits, "
                             "before issue 10), selective (manyminds.rows.sequence_token_logps)")
    args = parser.parse_args(argv)
    if args.memory:
        rows = memory_table(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "rows": rows}, f, indent=2)
        return
    args.seq = int(args.seq)

    base = {"size": args.size, "batch": args.batch, "seq": args.seq, "r": args.r, "repeats": args.repeats,
            "device": args.device, "dtype": args.dtype, "threads": args.threads,
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    rows = []
    for K in [int(k) for k in args.members.split(",")]:
        res = {m: measure({**base, "K": K, "method": m})
               for m in ("one_lora", "ensemble", "peft_loop", "plain", "mixture")}
        rows.append({"K": K, **{f"{m}_{k}": v for m, r in res.items() for k, v in r.items()}})
        print(f"K={K} done: " + json.dumps({m: round(r['seconds'], 4) for m, r in res.items()}), flush=True)

    clock = "wall time" if args.device.startswith("cuda") else "process CPU time"
    print(f"\n{clock}; size={args.size} B={args.batch} T={args.seq} r={args.r} device={args.device} "
          f"dtype={args.dtype} threads={args.threads} (median of {args.repeats})\n")
    head = ("| K | one LoRA on K*B rows (s) | K-member batched (s) | PEFT loop of K adapters (s) "
            "| batched / one LoRA | PEFT loop / batched | peak MiB one / batched / loop "
            "| plain gen (s) | mixture gen (s) | mixture speed / plain |")
    print(head)
    print("|" + "---|" * 10)
    for r in rows:
        print(f"| {r['K']} | {r['one_lora_seconds']:.4f} | {r['ensemble_seconds']:.4f} | "
              f"{r['peft_loop_seconds']:.4f} | {r['ensemble_seconds'] / r['one_lora_seconds']:.2f}x | "
              f"{r['peft_loop_seconds'] / r['ensemble_seconds']:.2f}x | "
              f"{r['one_lora_peak_mib']:.0f} / {r['ensemble_peak_mib']:.0f} / {r['peft_loop_peak_mib']:.0f} | "
              f"{r['plain_seconds']:.3f} | {r['mixture_seconds']:.3f} | "
              f"{r['plain_seconds'] / r['mixture_seconds']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
