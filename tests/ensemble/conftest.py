"""Fixtures of the ensemble tests: a char tokenizer and tiny models with its vocabulary."""

import pytest

from manyminds.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.models import random_model


@pytest.fixture
def char_tokenizer():
    return build_tokenizer()


@pytest.fixture
def char_qwen2():
    """A tiny random Qwen2 whose vocabulary fits the char tokenizer."""
    return random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0)
