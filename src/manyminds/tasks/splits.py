"""Deterministic, overlap-free train/test assignment by hashing the prompt."""

import hashlib

SPLITS = ("train", "test")
TEST_FRACTION = 0.2


def split_of(prompt: str) -> str:
    """``"test"`` for a fixed ~20% of all possible prompts, ``"train"`` for the rest.

    The split depends on the prompt text alone, so no seed, sample size or difficulty setting can
    put one problem in both splits.
    """
    h = int.from_bytes(hashlib.sha1(prompt.encode()).digest()[:8], "big")
    return "test" if (h % 1000) < TEST_FRACTION * 1000 else "train"
