"""Population GRPO under ``accelerate launch`` with 2 CPU processes (slow: spawns two trainers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("accelerate_worker.py")


@pytest.mark.slow
def test_two_cpu_processes(tmp_path):
    # accelerate 1.15: `--cpu --num_processes 2` runs the simple (single-process) launcher unless an MPI
    # hostfile is configured; torchrun via --multi_gpu with ACCELERATE_USE_CPU=1 gives 2 gloo CPU processes.
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(WORKER), str(tmp_path)]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # generation: one context per generation call; fresh ids never repeat across processes or steps
    generated = [ids for r in ranks for ids, _ in r["calls"][0::2]]
    flat = [i for ids in generated for i in ids]
    assert len(flat) == len(set(flat)) == 8
    # every loss forward used exactly the ids its process generated (after TRL's shuffle)
    for r in ranks:
        gen, loss = r["calls"][0::2], r["calls"][1::2]
        assert [sorted(a) for a, _ in gen] == [sorted(b) for b, _ in loss]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # DDP kept the replicas identical
    rewards = [h["rewards/majority_vote_reward/mean"] for h in ranks[0]["history"]
               if "rewards/majority_vote_reward/mean" in h]
    assert rewards and all(r > 0 for r in rewards)  # majority over groups gathered from both processes
    assert "minds/unique_answers_per_group" in ranks[0]["logged"] and "clip_ratio/region_mean" in ranks[0]["logged"]
