"""Run by tests/scaleout/test_scaleout.py: ``accelerate launch`` with 2 CPU processes, or alone.

``python worker.py OUT JOB [JOB ...]`` trains each job for 2 steps on a tiny random Qwen2, with a
global batch of ``GLOBAL_BATCH`` rows per step whatever the number of processes (``WORLD_SIZE``,
set by the launcher; a plain ``python worker.py`` is the one-process reference, same global batch):

- ``grpo``: population GRPO, full fine-tuning, label-free, log-probs under each rollout's mind;
- ``grpo_lora``: the same with a PEFT LoRA adapter (``peft_config``);
- ``sft``: alpha-Renyi SFT of a K = 2 LoRA ensemble.

The parallelism comes from the launcher: DDP (``ACCELERATE_USE_CPU=1 --multi_gpu``), FSDP
(``--use_fsdp --fsdp_version 1|2``) or DeepSpeed (``--use_deepspeed --deepspeed_config_file``,
ZeRO-3); without a GPU, :mod:`cpu_fsdp` lets accelerate shard CPU processes over gloo. Each rank writes
``OUT/JOB.rank{r}.json`` (how its model is sharded, norm widths seen on the wrapped model, logged
history; for GRPO the prompt, mind and completion of every local rollout row); rank 0 also writes
``OUT/JOB.pt`` with the initial and final full (gathered) parameters and a probe: logits of one
prompt under minds / members, computed by the wrapped model.
"""

from __future__ import annotations

import json
import os
import sys
import time

FSDP = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
DEEPSPEED = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
import torch

if (FSDP or DEEPSPEED) and not torch.cuda.is_available():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cpu_fsdp

    cpu_fsdp.enable()  # on GPUs accelerate shards by itself
from torch import nn

from manyminds import rewards
from manyminds.population import Population, find_norm_layers
from manyminds.tasks import load_task
from manyminds.training import (
    PopulationGRPOConfig,
    PopulationGRPOTrainer,
    RenyiSFTConfig,
    RenyiSFTTrainer,
)
from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.zoo.models import random_model

PROBE = "Q: 12+7=\nA:"
# A random model never writes "####": take the first character as the final answer so that the
# majority reward (computed over groups gathered from both processes) has a signal.
rewards.extract_answer = lambda text: text[:1] or None

# Rows per optimizer step over all processes: each of W processes takes GLOBAL_BATCH / W (GRPO:
# rollouts of one generation call, one prompt x num_generations; SFT: examples).
GLOBAL_BATCH = 4
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
if GLOBAL_BATCH % WORLD:
    raise SystemExit(f"worker.py: {WORLD} processes cannot split a global batch of {GLOBAL_BATCH}; "
                     f"launch 1, 2 or 4")
PER_DEVICE = GLOBAL_BATCH // WORLD

# (mind ids, grad enabled) of every Population.minds context entered while training
MIND_CALLS: list[tuple[list[int], bool]] = []
_minds = Population.minds
# per generation call: the local rows' prompt and completion token ids and mind ids
ROLLOUTS: list[dict] = []
_generate_and_score = PopulationGRPOTrainer._generate_and_score_completions


def _recording_minds(self, ids):
    MIND_CALLS.append((torch.as_tensor(ids).tolist(), torch.is_grad_enabled()))
    return _minds(self, ids)


def _recording_rollouts(self, inputs):
    out = _generate_and_score(self, inputs)

    def rows(ids, mask):  # [B, T] -> the unpadded rows
        return [row[m.bool()].tolist() for row, m in zip(ids, mask)]

    ROLLOUTS.append({"prompts": rows(out["prompt_ids"], out["prompt_mask"]),
                     "minds": out["mind_ids"].tolist(),
                     "completions": rows(out["completion_ids"], out["completion_mask"])})
    return out


def common_args(out: str) -> dict:
    deepspeed = {"deepspeed": os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"]} if DEEPSPEED else {}
    return dict(**deepspeed, output_dir=out, max_steps=2, logging_steps=1, report_to="none", save_strategy="no", seed=0,
                bf16=False, use_cpu=not (FSDP or DEEPSPEED), gradient_checkpointing=False)


def tiny_model(tok) -> nn.Module:
    return random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def _clean(name: str) -> str:
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module."):
        name = name.replace(wrapper, "")
    return name


def full_parameters(trainer) -> dict[str, torch.Tensor]:
    """Every parameter at full size, gathered from the shards (DDP: the replica itself)."""
    from torch.distributed.tensor import DTensor

    wrapped = trainer.model_wrapped
    if DEEPSPEED:
        import deepspeed

        params = dict(wrapped.module.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {_clean(n): p.detach().clone() for n, p in params.items()}
    if FSDP and not trainer.accelerator.is_fsdp2:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(wrapped, writeback=False):
            return {_clean(n): p.detach().clone() for n, p in wrapped.named_parameters()}
    return {_clean(n): (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for n, p in wrapped.named_parameters()}


def sharding(trainer) -> dict:
    """How the wrapped model holds its parameters on this rank."""
    from torch.distributed.tensor import DTensor

    params = list(trainer.model_wrapped.parameters())
    local = sum((p.to_local() if isinstance(p, DTensor) else getattr(p, "ds_tensor", p)).numel() for p in params)
    units = [type(m).__name__ for m in trainer.model_wrapped.modules()
             if type(m).__name__.startswith("FSDP") or type(m).__name__ == "FullyShardedDataParallel"]
    return {"distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
            "wrapper": type(trainer.model_wrapped).__name__, "fsdp_units": units,
            "param_types": sorted({type(p).__name__ for p in params}),
            "local_numel": local,
            "norm_widths": [layer.width for layer in find_norm_layers(trainer.model_wrapped)]}


def finish(out: str, job: str, trainer, init: dict, probe: torch.Tensor, started: float, shards: dict,
           **extra) -> None:
    final = full_parameters(trainer)
    rank = trainer.accelerator.process_index
    checksum = float(sum(p.double().sum() for p in final.values()))
    info = {"rank": rank, "world": trainer.accelerator.num_processes, **shards, "checksum": checksum,
            "full_numel": sum(p.numel() for p in final.values()),
            "history": trainer.state.log_history, "seconds": time.time() - started, **extra}
    with open(os.path.join(out, f"{job}.rank{rank}.json"), "w") as f:
        json.dump(info, f)
    if rank == 0:
        torch.save({"init": init, "final": final, "probe": probe}, os.path.join(out, f"{job}.pt"))


def run_grpo(out: str, job: str, lora: bool) -> None:
    started = time.time()
    tok = build_tokenizer()
    model = tiny_model(tok)
    kwargs = {}
    if lora:
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    # Greedy rollouts: a row's completion is then a function of its prompt and its mind alone, so
    # a run on W processes and the one-process run roll out the same completions. (Sampling draws
    # every process's rows from its own copy of one seeded stream, which no other layout
    # reproduces.) The minds alone make the rollouts of a group differ.
    args = PopulationGRPOConfig(**common_args(os.path.join(out, job)),
                                per_device_train_batch_size=PER_DEVICE, num_generations=4,
                                steps_per_generation=1, max_completion_length=6,
                                generation_kwargs={"do_sample": False},
                                learning_rate=0.1, mind_sigma=0.5, label_free=True, mind_logprobs="mind",
                                mind_kl_metrics=False)  # the test counts minds contexts: generation, loss
    trainer = PopulationGRPOTrainer(model, args=args, train_dataset=load_task("arith", n=8), processing_class=tok,
                                    **kwargs)
    init = {_clean(n): p.detach().clone() for n, p in trainer.model.named_parameters()}
    MIND_CALLS.clear()
    ROLLOUTS.clear()
    Population.minds = _recording_minds
    PopulationGRPOTrainer._generate_and_score_completions = _recording_rollouts
    try:
        trainer.train()
    finally:
        Population.minds = _minds
        PopulationGRPOTrainer._generate_and_score_completions = _generate_and_score
    shards = sharding(trainer)  # before the probe's forward (FSDP2 keeps the root unsharded after it)
    wrapped = trainer.model_wrapped
    wrapped.eval()
    ids = tok([PROBE], return_tensors="pt")["input_ids"].repeat(3, 1)  # [3, T]
    with torch.no_grad(), trainer.population.minds([0, 1, -1]):
        probe = wrapped(input_ids=ids).logits[:, -1].float()  # [3, V]: minds 0, 1 and the mean model
    finish(out, job, trainer, init, probe, started, shards, mind_calls=list(MIND_CALLS),
           rollouts=list(ROLLOUTS))


def run_sft(out: str, job: str = "sft") -> None:
    started = time.time()
    tok = build_tokenizer()
    args = RenyiSFTConfig(**common_args(os.path.join(out, job)), num_members=2, r=4, alpha=0.8, init="diverse",
                          per_device_train_batch_size=PER_DEVICE, learning_rate=1e-2,
                          # ZeRO-3 partitions the members outside forward, where the prior is computed:
                          # the trainer refuses a prior there
                          prior_weight=0.0 if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" else 0.1,
                          disable_tqdm=True)
    trainer = RenyiSFTTrainer(tiny_model(tok), args, train_dataset=load_task("conflict", n=8), processing_class=tok)
    init = {_clean(n): p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    shards = sharding(trainer)  # before the probe's forward (FSDP2 keeps the root unsharded after it)
    wrapped = trainer.model_wrapped
    wrapped.eval()
    ids = tok([PROBE], return_tensors="pt")["input_ids"].repeat(3, 1)  # [3, T]
    with torch.no_grad(), trainer.ensemble.members([0, 1, -1]):
        probe = wrapped(input_ids=ids).logits[:, -1].float()  # [3, V]: members 0, 1 and the base
    finish(out, job, trainer, init, probe, started, shards)


JOBS = {"grpo": lambda out: run_grpo(out, "grpo", lora=False),
        "grpo_lora": lambda out: run_grpo(out, "grpo_lora", lora=True),
        "sft": run_sft}

if __name__ == "__main__":
    out_dir, jobs = sys.argv[1], sys.argv[2:]
    unknown = [j for j in jobs if j not in JOBS]
    if unknown or not jobs:
        raise SystemExit(f"usage: worker.py OUT JOB [JOB ...] with JOB in {sorted(JOBS)}; got {jobs}")
    for name in jobs:
        JOBS[name](out_dir)
