"""Fixtures of the population tests: a char tokenizer with a matching tiny model."""

import pytest
import torch


@pytest.fixture
def ids_batch():
    """Token ids [3, 7] inside the tiny vocabulary (no special ids)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(4, 64, (3, 7), generator=gen)
