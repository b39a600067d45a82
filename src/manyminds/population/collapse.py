"""Cheap checks for collapsed minds: generated text stuck in degenerate repetition.

A sigma too large for a model turns its minds into loops ("and and and ...", runs of newlines).
:func:`is_degenerate` spots that in one pass over the text, with no model and no tokenizer, so
it works for word-level and character-level vocabularies alike:

- a text of at least ``min_words`` whitespace words is degenerate when its distinct word
  ``n``-grams are fewer than ``max_distinct`` of all its word ``n``-grams (``n = 3``);
- otherwise, a text of at least ``min_chars`` characters is degenerate when its distinct
  character 4-grams are fewer than ``max_distinct`` of all of them (catches "\\n\\n\\n..." and
  "aaaa...").

:func:`warn_if_collapsed` (called by ``Population.generate``) warns when at least ``share`` of
the minds' answers are degenerate while the plain model's answers in the same call (mind
``-1``) are not. The likelihood-based check (a mind's answers far less likely under the plain
model than the plain model's own) needs forward passes and lives in the calibration curve
(:mod:`manyminds.population.calibrate`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

__all__ = ["MindCollapseWarning", "distinct_ngram_ratio", "is_degenerate", "warn_if_collapsed"]


class MindCollapseWarning(UserWarning):
    """Most minds' answers are degenerate repetition: sigma is too large for this model."""


def distinct_ngram_ratio(items: Sequence, n: int) -> float:
    """``#distinct n-grams / #n-grams`` of a sequence (``1.0`` when it has no ``n``-gram)."""
    grams = [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def is_degenerate(text: str, min_words: int = 12, min_chars: int = 24, max_distinct: float = 0.4) -> bool:
    """Whether ``text`` is degenerate repetition (see the module docstring).

    Args:
        text: one generated answer.
        min_words: shortest text (in whitespace words) judged on word 3-grams.
        min_chars: shortest text (in characters) judged on character 4-grams; shorter texts
            are never degenerate.
        max_distinct: degenerate below this share of distinct n-grams.
    """
    if not 0 < max_distinct <= 1:
        raise ValueError(f"max_distinct must be in (0, 1], got {max_distinct}")
    words = text.split()
    if len(words) >= min_words:
        return distinct_ngram_ratio(words, 3) < max_distinct
    if len(text) >= min_chars:
        return distinct_ngram_ratio(text, 4) < max_distinct
    return False


def warn_if_collapsed(texts: Sequence[str], minds: Sequence[int], share: float = 0.5) -> float:
    """Warn (:class:`MindCollapseWarning`) when minds collapsed into repetition.

    Args:
        texts: generated answers, one per row.
        minds: the mind id of each row (``-1`` = the plain model).
        share: warn when at least this share of the minds' answers (at least two) is
            degenerate and the plain model's answers in ``texts`` (if any) are not mostly
            degenerate too (then the model repeats by itself and sigma is not to blame).

    Returns:
        the share of the minds' answers that are degenerate (``0.0`` without minds).
    """
    if len(texts) != len(minds):
        raise ValueError(f"got {len(texts)} texts for {len(minds)} mind ids; pass one id per text")
    mind_rows = [(t, m) for t, m in zip(texts, minds) if m != -1]
    plain = [t for t, m in zip(texts, minds) if m == -1]
    if not mind_rows:
        return 0.0
    bad = [(t, m) for t, m in mind_rows if is_degenerate(t)]
    frac = len(bad) / len(mind_rows)
    plain_bad = sum(map(is_degenerate, plain)) / len(plain) if plain else 0.0
    if len(bad) >= 2 and frac >= share and plain_bad < share:
        text, mind = bad[0]
        warnings.warn(f"{len(bad)} of {len(mind_rows)} minds' answers are degenerate repetition (e.g. mind {mind}: "
                      f"{text[:40]!r}); sigma is likely too large for this model: lower it, use "
                      "sigma_scale='weight', or calibrated_population(model, tokenizer)",
                      MindCollapseWarning, stacklevel=3)
    return frac
