"""``manyminds generate --engine vllm`` == ``--engine transformers``: the same minds' greedy answers."""

import json
import os

import pytest

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from typer.testing import CliRunner

from manyminds.cli import app

PROMPT = "Q: 7+8-3\nA:"
ARGS = ["generate", "--minds", "8", "--sigma", "0.1", "--max-new-tokens", "24", PROMPT]


def records(tmp_path, *extra):
    out = tmp_path / f"{'-'.join(extra) or 'default'}.jsonl"
    result = CliRunner().invoke(app, [*ARGS, *extra, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_generate_engine_vllm_gives_the_transformers_minds(tmp_path):
    hf = records(tmp_path, "--engine", "transformers")
    vl = records(tmp_path, "--engine", "vllm")
    plain = records(tmp_path, "--engine", "vllm", "--sigma", "0")
    texts = [r["text"] for r in hf]
    assert len(set(texts)) > 1, "sigma 0.1 gave every mind the same answer: the comparison would be empty"
    assert [r["text"] for r in plain] != texts  # without the minds, vLLM answers differently
    assert [r["text"] for r in vl] == texts
    assert [r["mind"] for r in vl] == list(range(8))


def test_generate_engine_is_checked(tmp_path):
    result = CliRunner().invoke(app, [*ARGS, "--engine", "sglang"])
    assert result.exit_code != 0 and "--engine must be transformers or vllm" in result.output
