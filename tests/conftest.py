"""Shared fixtures: tiny random-init models of several architecture families, built in-process."""

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

from manyminds.models import TINY_FAMILIES, random_model  # noqa: E402


@pytest.fixture(params=TINY_FAMILIES)
def tiny_model(request):
    """A tiny float32 random-init causal LM of each family in turn (vocab 64)."""
    return random_model(request.param, vocab_size=64, seed=0)


@pytest.fixture
def tiny_qwen2():
    return random_model("qwen2", vocab_size=64, seed=0)


@pytest.fixture
def tiny_gpt2():
    return random_model("gpt2", vocab_size=64, seed=0)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Never touch the user's cache from tests unless a test asks for the shared zoo."""
    if not os.environ.get("MANYMINDS_TEST_HOME"):
        monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path_factory.getbasetemp() / "mm_home"))
