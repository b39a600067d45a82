"""Compare sharded runs of tests/scaleout/worker.py with the DDP run: ``python compare.py OUT``.

Prints, per backend and job, the largest |parameter - DDP parameter|, how far training moved the
parameters (so agreement is not trivial), the probe-logit difference and the two losses.
"""

import json
import sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
ref_dir = out / "ddp"
print(f"{'backend':8} {'job':10} {'max|dp|':>10} {'moved':>8} {'probe':>10}  losses (backend / ddp)")
for backend in sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "ddp"):
    for job in ("grpo", "grpo_lora", "sft"):
        got_file, ref_file = out / backend / f"{job}.pt", ref_dir / f"{job}.pt"
        if not (got_file.exists() and ref_file.exists()):
            print(f"{backend:8} {job:10} missing (see {backend}.log)")
            continue
        got, ref = torch.load(got_file), torch.load(ref_file)
        diff = max((got["final"][n] - v).abs().max().item() for n, v in ref["final"].items())
        moved = max((v - ref["init"][n]).abs().max().item() for n, v in ref["final"].items())
        probe = (got["probe"] - ref["probe"]).abs().max().item()
        losses = [[h["loss"] for h in json.loads((d / f"{job}.rank0.json").read_text())["history"] if "loss" in h]
                  for d in (out / backend, ref_dir)]
        print(f"{backend:8} {job:10} {diff:10.2e} {moved:8.3f} {probe:10.2e}  {losses[0]} / {losses[1]}")
