"""Population GRPO and alpha-Renyi SFT over 2 CPU processes (DDP, FSDP2, FSDP1) and over one.

Each backend is one ``accelerate launch`` of ``worker.py`` (2 gloo processes, tiny Qwen2, 2 steps per
job, a global batch of 4 rows per step). FSDP runs on CPU through :mod:`cpu_fsdp` (accelerate itself
only shards on GPUs). The reference for DDP is ONE process (a plain ``python worker.py``, no
launcher) with the same global batch: the same rollouts row by row (prompt, mind, completion), the
same losses, the same final parameters up to float reduction order. The reference for FSDP is DDP
with the same seed and data: same losses, same final parameters, same logits of a probe prompt under
minds / members. All of it runs in CI: four launches (one process, DDP, FSDP2, FSDP1) of the three
jobs, about 2 minutes on a loaded 2-core machine, mostly process start-up.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
WORKER = HERE / "worker.py"
JOBS = ("grpo", "grpo_lora", "sft")
HIDDEN = 32  # manyminds.zoo.models tiny shapes
NUM_NORMS = 5  # 2 blocks x (input, post-attention) + the final norm
# no block class named: the wrap policy reads _no_split_modules (EnsembleLoRA forwards its base's)
FSDP_FLAGS = ["--use_fsdp", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              # both need a GPU to materialize weights on
              "--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false"]
BACKENDS = {
    "single": (None, {}),  # no launcher: one plain process, the worker doubles its per-device batch
    "ddp": (["--multi_gpu"], {"ACCELERATE_USE_CPU": "1"}),
    "fsdp2": ([*FSDP_FLAGS, "--fsdp_version", "2"], {}),
    "fsdp1": ([*FSDP_FLAGS, "--fsdp_version", "1", "--fsdp_use_orig_params", "true"], {}),
}


def free_port() -> int:
    with socket.socket() as sock:  # tests may run next to other launches: never the fixed 29500
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# what torchrun sets; the one-process reference must see none of it
DISTRIBUTED_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                   "MASTER_PORT")


def launch(backend: str, out: Path) -> subprocess.CompletedProcess:
    """``accelerate launch`` the worker with 2 CPU processes (``single``: run it as one plain
    process); every job writes its own files."""
    flags, extra_env = BACKENDS[backend]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "FSDP_")) and k not in DISTRIBUTED_ENV}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra_env)
    if flags is None:
        cmd = [sys.executable, str(WORKER), str(out), *JOBS]
    else:
        accelerate = Path(sys.executable).with_name("accelerate")
        cmd = [str(accelerate), "launch", *flags, "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(WORKER), str(out), *JOBS]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


class Run:
    def __init__(self, backend: str, out: Path):
        self.backend, self.out = backend, out
        self.world = 1 if backend == "single" else 2
        self.done = launch(backend, out)

    def ranks(self, job: str) -> list[dict]:
        files = [self.out / f"{job}.rank{r}.json" for r in range(self.world)]
        if not all(f.exists() for f in files):
            pytest.fail(f"{self.backend} {job} did not finish (rc={self.done.returncode}):\n"
                        f"{self.done.stderr[-4000:]}")
        return [json.loads(f.read_text()) for f in files]

    def tensors(self, job: str) -> dict:
        self.ranks(job)
        return torch.load(self.out / f"{job}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache: dict[str, Run] = {}

    def get(backend: str) -> Run:
        if backend not in cache:
            cache[backend] = Run(backend, tmp_path_factory.mktemp(backend))
        return cache[backend]

    return get


def check_sharded(ranks: list[dict], backend: str) -> None:
    """The model really was sharded (accelerate on CPU would otherwise fall back to DDP silently)."""
    for r in ranks:
        assert r["world"] == 2
        if backend == "ddp":
            assert r["distributed_type"] == "MULTI_CPU" and r["wrapper"] == "DistributedDataParallel"
            continue
        assert r["distributed_type"] == "FSDP"
        assert len(r["fsdp_units"]) >= 3, r["fsdp_units"]  # the root and one unit per block at least
        if backend == "fsdp2":
            assert r["param_types"] == ["DTensor"]
        assert r["local_numel"] < 0.6 * r["full_numel"]  # each rank holds about half of the parameters


def compare_with_ddp(run: Run, ddp: Run, job: str, atol: float) -> None:
    """Same losses, same final parameters, same probe logits as the DDP run; training moved them."""
    ref, got = ddp.tensors(job), run.tensors(job)
    assert set(got["final"]) == set(ref["final"])
    moved = max((ref["final"][n] - ref["init"][n]).abs().max().item() for n in ref["final"])
    assert moved > 100 * atol  # the runs differ from the initial model, so agreeing is not trivial
    for name, value in ref["final"].items():
        torch.testing.assert_close(got["final"][name], value, atol=atol, rtol=0, msg=name)
    torch.testing.assert_close(got["probe"], ref["probe"], atol=10 * atol, rtol=0)
    losses = [[h["loss"] for h in r["history"] if "loss" in h] for r in (ddp.ranks(job)[0], run.ranks(job)[0])]
    assert len(losses[0]) == 2
    assert losses[1] == pytest.approx(losses[0], abs=1e-4)


def check_same_rollouts(ddp: Run, single: Run, job: str) -> None:
    """Global row ``r`` of generation call ``t`` has the same prompt, mind and completion in both
    runs (the DDP run's rows in process order, as TRL gathers them)."""
    ref = single.ranks(job)[0]["rollouts"]
    per_rank = [r["rollouts"] for r in ddp.ranks(job)]
    assert len(ref) == 2 and all(len(calls) == 2 for calls in per_rank)  # a generation per step
    for t, one in enumerate(ref):
        assert [len(calls[t]["minds"]) for calls in per_rank] == [2, 2] and len(one["minds"]) == 4
        two = {key: per_rank[0][t][key] + per_rank[1][t][key] for key in one}
        for key in ("prompts", "minds", "completions"):
            assert two[key] == one[key], f"generation call {t}: {key} of the DDP rows differ"
    # all rows of a call share their prompt: their completions differ through the minds alone, so a
    # row rolled out under another mind than in one process shows in its completion
    assert all(len({tuple(p) for p in call["prompts"]}) == 1 for call in ref)
    assert all(len({tuple(c) for c in call["completions"]}) > 1 for call in ref)


def compare_with_single(ddp: Run, single: Run, job: str, atol: float, rtol: float) -> None:
    """The DDP run's final parameters, losses and gradient norms are the one-process run's.

    Both runs add the same per-row terms in a different order (one process: 4 rows in one sum;
    DDP: 2 rows per process, then the all-reduce's mean), so they agree up to float32 rounding of
    the gradients, which Adam's per-element ``m / sqrt(v)`` passes on as ``lr * rounding /
    |gradient|``. Every element of the update ``final - init`` agrees within ``atol``, the whole
    update within ``rtol`` of its norm.
    """
    ref, got = single.tensors(job), ddp.tensors(job)
    assert set(got["final"]) == set(ref["final"])
    for name, value in ref["init"].items():
        assert torch.equal(got["init"][name], value), name  # the same start
    names = sorted(ref["final"])
    update = torch.cat([(ref["final"][n] - ref["init"][n]).flatten() for n in names])
    diff = torch.cat([(got["final"][n] - ref["final"][n]).flatten() for n in names])
    assert update.abs().max() > 100 * atol  # training moved the parameters: agreeing is not trivial
    worst = max(names, key=lambda n: (got["final"][n] - ref["final"][n]).abs().max().item())
    largest, norms = diff.abs().max().item(), (diff.norm().item(), update.norm().item())
    assert largest <= atol, f"{worst} differs by {largest:.3g} > {atol}"
    assert norms[0] <= rtol * norms[1], f"updates differ by {norms[0]:.3g} (norm {norms[1]:.3g})"
    steps = [[h for h in r["history"] if "loss" in h]
             for r in (single.ranks(job)[0], ddp.ranks(job)[0])]
    assert len(steps[0]) == len(steps[1]) == 2
    keys = ["loss", "grad_norm"]
    if job == "sft":  # routing metrics are the global batch's on every backend (gathered over processes)
        keys += [k for k in steps[0][0] if k.startswith("member_") or k in ("responsibility_entropy",
                                                                             "effective_members")]
        assert any(k.endswith("route_share") for k in keys), sorted(steps[0][0])
    for key in keys:
        values = [[h[key] for h in run] for run in steps]
        assert values[1] == pytest.approx(values[0], rel=1e-5, abs=1e-6), key


def check_population_grpo(run: Run, job: str) -> None:
    ranks = run.ranks(job)
    check_sharded(ranks, run.backend)
    # one context per generation call; fresh mind ids never repeat across processes or steps
    generated = [ids for r in ranks for ids, _ in r["mind_calls"][0::2]]
    flat = [i for ids in generated for i in ids]
    assert len(flat) == len(set(flat)) == 8
    # every loss forward (with grad) used exactly the ids its process generated (after TRL's shuffle)
    for r in ranks:
        gen, loss = r["mind_calls"][0::2], r["mind_calls"][1::2]
        assert [sorted(a) for a, _ in gen] == [sorted(b) for b, _ in loss]
        assert all(grad for _, grad in loss)
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # both ranks end with the same model
    history = ranks[0]["history"]
    rewards = [h["rewards/majority_vote_reward/mean"] for h in history if "rewards/majority_vote_reward/mean" in h]
    assert rewards and all(r > 0 for r in rewards)  # majority over groups gathered from both processes
    logged = set().union(*[h.keys() for h in history])
    assert {"minds/unique_answers_per_group", "clip_ratio/region_mean"} <= logged
    # minds act on the sharded model: rows under minds 0 and 1 differ from the mean model and each other
    probe = run.tensors(job)["probe"]  # [3, V]
    assert (probe[0] - probe[2]).abs().max() > 0.1 and (probe[1] - probe[2]).abs().max() > 0.1
    assert (probe[0] - probe[1]).abs().max() > 0.1


def check_renyi_sft(run: Run) -> None:
    ranks = run.ranks("sft")
    check_sharded(ranks, run.backend)
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    tensors = run.tensors("sft")
    changed = {n for n in tensors["final"] if not torch.equal(tensors["final"][n], tensors["init"][n])}
    assert changed and all(".lora_" in n for n in changed), sorted(changed)  # members moved, base frozen
    probe = tensors["probe"]  # [3, V]: members 0, 1 and the base
    assert (probe[0] - probe[1]).abs().max() > 1e-3 and (probe[0] - probe[2]).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["ddp", "fsdp2", "fsdp1"])
def test_norms_found_on_the_sharded_model(runs, backend):
    # the norms a Population built after prepare() perturbs: all of them, at the hidden width
    for r in runs(backend).ranks("grpo"):
        assert r["norm_widths"] == [HIDDEN] * NUM_NORMS, r["norm_widths"]


@pytest.mark.parametrize("job", ["grpo", "grpo_lora"])
def test_population_grpo_ddp(runs, job):
    check_population_grpo(runs("ddp"), job)


@pytest.mark.parametrize("job", ["grpo", "grpo_lora"])
def test_population_grpo_ddp_matches_one_process(runs, job):
    """Population GRPO on 2 processes == on one process with the same global batch (4 rollouts of
    one prompt per step): the same minds on the same rows, the same completions, the same training.
    GRPO's gradient is a sum of ``A_i * grad log p_i`` with advantages summing to zero over a group,
    so a few elements cancel to rounding level and Adam (lr 0.1) turns their rounding into up to
    ~1e-4 (measured: 14 of 26,912 elements above 1e-5, the largest 1.6e-4, median update 0.13).
    Hence every element within lr / 100 and the whole update within 1e-4 of its norm; a wrong mind
    or batch changes most elements by about lr."""
    check_same_rollouts(runs("ddp"), runs("single"), job)
    compare_with_single(runs("ddp"), runs("single"), job, atol=1e-3, rtol=1e-4)


def test_renyi_sft_ddp_matches_one_process(runs):
    """alpha-Renyi SFT on 2 processes x 2 examples == one process x 4 examples (the loss is a mean
    over examples; nothing cancels: measured 1e-7 apart at most)."""
    compare_with_single(runs("ddp"), runs("single"), "sft", atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("job", ["grpo", "grpo_lora"])
def test_population_grpo_fsdp2_matches_ddp(runs, job):
    check_population_grpo(runs("fsdp2"), job)
    compare_with_ddp(runs("fsdp2"), runs("ddp"), job, atol=1e-5)


def test_renyi_sft_ddp(runs):
    check_renyi_sft(runs("ddp"))


def test_renyi_sft_fsdp2_matches_ddp(runs):
    run = runs("fsdp2")
    check_renyi_sft(run)
    compare_with_ddp(runs("fsdp2"), runs("ddp"), "sft", atol=1e-5)


@pytest.mark.parametrize("job", ["grpo", "grpo_lora"])
def test_population_grpo_fsdp1_matches_ddp(runs, job):
    check_population_grpo(runs("fsdp1"), job)
    compare_with_ddp(runs("fsdp1"), runs("ddp"), job, atol=1e-5)


def test_renyi_sft_fsdp1_matches_ddp(runs):
    check_renyi_sft(runs("fsdp1"))
    compare_with_ddp(runs("fsdp1"), runs("ddp"), "sft", atol=1e-5)
