#!/usr/bin/env bash
# Population GRPO (full FT and LoRA) and Renyi SFT, 2 steps each, under DDP, FSDP2 and ZeRO-3 on
# 2 GPUs, then the same comparison the CPU tests make (tests/scaleout/test_scaleout.py): every
# sharded run against the DDP run. Usage: examples/scaleout/run.sh [OUT]  (from the repo root)
set -uo pipefail
OUT=${1:-scaleout-runs}
JOBS="grpo grpo_lora sft"
WORKER=tests/scaleout/worker.py
mkdir -p "$OUT"
run() {  # name, accelerate flags...
  local name=$1; shift
  mkdir -p "$OUT/$name"
  echo "== $name"
  /usr/bin/time -f "$name: %e s" accelerate launch "$@" --num_processes 2 --num_machines 1 \
    "$WORKER" "$OUT/$name" $JOBS > "$OUT/$name.log" 2>&1 || echo "$name FAILED: see $OUT/$name.log"
  tail -n 1 "$OUT/$name.log"
}
run ddp --multi_gpu --mixed_precision no
run fsdp2 --config_file examples/scaleout/fsdp2.yaml
python -c "import deepspeed" 2>/dev/null && run zero3 --config_file examples/scaleout/zero3.yaml \
  || echo "deepspeed not installed: skipping ZeRO-3"
python examples/scaleout/compare.py "$OUT"
