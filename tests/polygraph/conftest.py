"""Fixtures of the lm-polygraph tests: the bundled tiny-arith model and a few of its test prompts.

Run with ``tests/polygraph/run.sh`` (its own venv with lm-polygraph 0.7.0). In a venv without
lm-polygraph, ``test_equality.py`` skips unless ``MANYMINDS_REQUIRE_POLYGRAPH=1`` (CI), where a missing
lm-polygraph is a failure; ``test_samples.py`` needs only manyminds and runs everywhere.
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIGMA = 0.2  # above tiny-arith's documented 0.119, so the greedy minds disagree on some prompts


@pytest.fixture(scope="session")
def tiny_arith():
    """``(model, tokenizer)`` of the bundled tiny-arith model (shared: a Population leaves it unchanged)."""
    from manyminds.zoo import load

    return load("tiny-arith")


@pytest.fixture(scope="session")
def arith():
    """Eight tiny-arith test problems: ``(prompts, reference answers)``."""
    from manyminds.tasks import load_task

    ds = load_task("arith", split="test", n=8, seed=0)
    return list(ds["prompt"]), list(ds["answer"])
