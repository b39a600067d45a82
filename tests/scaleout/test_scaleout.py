"""Population GRPO and alpha-Renyi SFT over 2 CPU processes: DDP, FSDP2 and FSDP1.

Each backend is one ``accelerate launch`` of ``worker.py`` (2 gloo processes, tiny Qwen2, 2 steps per
job). FSDP runs on CPU through :mod:`cpu_fsdp` (accelerate itself only shards on GPUs). The
reference for FSDP is DDP with the same seed and data: same losses, same final parameters (up to
float reduction order), same logits of a probe prompt under minds / members. The FSDP1 run is
slow-marked (FSDP1 is deprecated in favour of FSDP2 and adds a third launch).
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
HIDDEN = 32  # manyminds.models tiny shapes
NUM_NORMS = 5  # 2 blocks x (input, post-attention) + the final norm
# no block class named: the wrap policy reads _no_split_modules (EnsembleLoRA forwards its base's)
FSDP_FLAGS = ["--use_fsdp", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              # both need a GPU to materialize weights on
              "--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false"]
BACKENDS = {
    "ddp": (["--multi_gpu"], {"ACCELERATE_USE_CPU": "1"}),
    "fsdp2": ([*FSDP_FLAGS, "--fsdp_version", "2"], {}),
    "fsdp1": ([*FSDP_FLAGS, "--fsdp_version", "1", "--fsdp_use_orig_params", "true"], {}),
}


def free_port() -> int:
    with socket.socket() as sock:  # tests may run next to other launches: never the fixed 29500
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(backend: str, out: Path) -> subprocess.CompletedProcess:
    """``accelerate launch`` the worker with 2 CPU processes; every job writes its own files."""
    flags, extra_env = BACKENDS[backend]
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra_env)
    cmd = [str(accelerate), "launch", *flags, "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(WORKER), str(out), *JOBS]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


class Run:
    def __init__(self, backend: str, out: Path):
        self.backend, self.out = backend, out
        self.done = launch(backend, out)

    def ranks(self, job: str) -> list[dict]:
        files = [self.out / f"{job}.rank{r}.json" for r in (0, 1)]
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


@pytest.mark.parametrize("backend", ["ddp", "fsdp2", pytest.param("fsdp1", marks=pytest.mark.slow)])
def test_norms_found_on_the_sharded_model(runs, backend):
    # the norms a Population built after prepare() perturbs: all of them, at the hidden width
    for r in runs(backend).ranks("grpo"):
        assert r["norm_widths"] == [HIDDEN] * NUM_NORMS, r["norm_widths"]


@pytest.mark.parametrize("job", ["grpo", "grpo_lora"])
def test_population_grpo_ddp(runs, job):
    check_population_grpo(runs("ddp"), job)


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


@pytest.mark.slow
@pytest.mark.parametrize("job", ["grpo", "grpo_lora"])
def test_population_grpo_fsdp1_matches_ddp(runs, job):
    check_population_grpo(runs("fsdp1"), job)
    compare_with_ddp(runs("fsdp1"), runs("ddp"), job, atol=1e-5)


@pytest.mark.slow
def test_renyi_sft_fsdp1_matches_ddp(runs):
    check_renyi_sft(runs("fsdp1"))
    ref, got = runs("ddp").tensors("sft"), runs("fsdp1").tensors("sft")
    for name, value in ref["final"].items():
        torch.testing.assert_close(got["final"][name], value, atol=1e-5, rtol=0, msg=name)
