"""Fixtures of the population tests: a char tokenizer with a matching tiny model."""

import pytest
import torch

from manyminds.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.models import random_model


@pytest.fixture
def char_tokenizer():
    return build_tokenizer()


@pytest.fixture
def char_qwen2():
    """A tiny random Qwen2 whose vocabulary matches :func:`build_tokenizer`."""
    return random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0)


@pytest.fixture
def ids_batch():
    """Token ids [3, 7] inside the tiny vocabulary (no special ids)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(4, 64, (3, 7), generator=gen)
