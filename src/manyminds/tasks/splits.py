"""Deterministic, overlap-free train/test assignment by hashing the prompt."""

import hashlib
from collections.abc import Callable, Iterator

SPLITS = ("train", "test")
TEST_FRACTION = 0.2


def split_of(prompt: str) -> str:
    """``"test"`` for a fixed ~20% of all possible prompts, ``"train"`` for the rest.

    The split depends on the prompt text alone, so no seed, sample size or difficulty setting can
    put one problem in both splits.
    """
    h = int.from_bytes(hashlib.sha1(prompt.encode()).digest()[:8], "big")
    return "test" if (h % 1000) < TEST_FRACTION * 1000 else "train"


def distinct_in_split(split: str, n: int, draw: Callable[[], tuple[str, object]],
                      too_few: Callable[[int], str]) -> Iterator:
    """Yield the items of ``n`` distinct draws whose key falls in ``split``.

    ``draw()`` returns ``(key, item)``; a draw is kept when its key is new and ``split_of(key) == split``.
    Items are yielded as they are accepted, so a caller may draw more randomness between them. After
    ``200 n + 10000`` draws without ``n`` accepted, ``ValueError(too_few(accepted))``.
    """
    seen, tries = set(), 0
    while len(seen) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(too_few(len(seen)))
        key, item = draw()
        if key in seen or split_of(key) != split:
            continue
        seen.add(key)
        yield item
