#!/usr/bin/env bash
# Run the lm-polygraph tests (tests/polygraph) in their own virtual environment.
#
# lm-polygraph 0.7.0 pulls spacy, fschat, openai, bitsandbytes, hydra-core... (2.2 GB with torch) and
# hydra-core pins antlr4-python3-runtime 4.9.*, against the 4.13.2 that math-verify brings into the main
# venv, so these tests live in .venv-polygraph (created here on first use, reused afterwards).
# MANYMINDS_REQUIRE_POLYGRAPH=1 turns a missing lm-polygraph into a test failure instead of a skip.
#
#   tests/polygraph/run.sh                   # install if needed, then run tests/polygraph
#   tests/polygraph/run.sh -k prr            # extra arguments go to pytest
#   POLYGRAPH_VENV=/path/to/venv tests/polygraph/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${POLYGRAPH_VENV:-$ROOT/.venv-polygraph}"
# Every install below is constrained by constraints.txt: the exact versions of every package the tests
# passed with (the main constraints.txt, antlr4 aside; regenerate it with the command in its header).
CONSTRAINTS="$ROOT/tests/polygraph/constraints.txt"
TORCH_PIN="torch==2.13.0"            # CPU build; an unpinned torch may pull CUDA
POLYGRAPH_PIN="lm-polygraph==0.7.0"
EXTRA_PINS=("pytest>=8,<10")
STAMP="$VENV/.manyminds-polygraph-ready"
# The constraints file's hash is part of the stamp: changing a pinned version reinstalls.
WANT="$TORCH_PIN $POLYGRAPH_PIN ${EXTRA_PINS[*]} constraints-sha256=$(sha256sum "$CONSTRAINTS" | cut -d' ' -f1)"
PIP=("$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS")

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "[run.sh] setting up $VENV" >&2
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "${PIP[@]}" "$TORCH_PIN"
  "${PIP[@]}" -e "$ROOT" "$POLYGRAPH_PIN" "${EXTRA_PINS[@]}" "$TORCH_PIN"
  "$VENV/bin/python" -c "import lm_polygraph, manyminds.polygraph" >&2
  echo "$WANT" > "$STAMP"
fi

export MANYMINDS_REQUIRE_POLYGRAPH=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
cd "$ROOT"
# Default to tests/polygraph unless a test path is given (never the main suite: it needs the main venv).
PATHS=(tests/polygraph)
for arg in "$@"; do [[ "$arg" == tests/polygraph* ]] && PATHS=(); done
exec "$VENV/bin/python" -m pytest -q "${PATHS[@]}" "$@"
