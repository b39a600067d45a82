"""Shared fixtures: tiny random-init models of several architecture families, built in-process."""

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

from manyminds.zoo.models import TINY_FAMILIES, random_model


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


@pytest.fixture
def char_tokenizer():
    """The zoo's character-level tokenizer."""
    from manyminds.zoo.charlm import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def char_qwen2():
    """A tiny random Qwen2 whose vocabulary matches :func:`manyminds.zoo.charlm.build_tokenizer`."""
    from manyminds.zoo.charlm import VOCAB_SIZE

    return random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Never touch the user's cache from tests unless a test asks for the shared zoo."""
    if not os.environ.get("MANYMINDS_TEST_HOME"):
        monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path_factory.getbasetemp() / "mm_home"))


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """The zoo's ``micro-arith`` model, trained in-process once per test session (< 1 min).

    Returns ``(model, tokenizer)``; the model is a real Qwen2ForCausalLM trained on the tasks'
    formats, small and inaccurate, for behaviour tests. Tests must not modify it in place
    (deep-copy it first).
    """
    from manyminds import zoo

    home = tmp_path_factory.mktemp("trained_tiny_home")
    old = os.environ.get("MANYMINDS_HOME")
    os.environ["MANYMINDS_HOME"] = str(home)
    try:
        path = zoo.build("micro-arith", show_progress=False)
        model, tokenizer = zoo.load(str(path))
    finally:
        if old is None:
            os.environ.pop("MANYMINDS_HOME", None)
        else:
            os.environ["MANYMINDS_HOME"] = old
    return model, tokenizer


@pytest.fixture(scope="session")
def trained_tiny_path(trained_tiny, tmp_path_factory):
    """A folder holding ``trained_tiny`` as an ordinary save_pretrained checkpoint (for CLI tests)."""
    model, tokenizer = trained_tiny
    path = tmp_path_factory.mktemp("trained_tiny_ckpt")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
