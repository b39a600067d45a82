"""The real chat LM (``smollm2-135m-instruct``) answers a conversational prompt in English.

Slow (about 15 s to load plus generation on CPU) and only run where the converted checkpoint is
already cached (``manyminds zoo build smollm2-135m-instruct``; ``MANYMINDS_REAL_HOME`` points at
another cache): the test never downloads or converts it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

SMOL = "smollm2-135m-instruct"


@pytest.mark.slow
def test_smollm2_population_answers_a_chat_prompt_in_english(monkeypatch):
    from manyminds import zoo

    home = os.environ.get("MANYMINDS_REAL_HOME") or str(Path.home() / ".cache" / "manyminds")
    monkeypatch.setenv("MANYMINDS_HOME", home)
    if not zoo.is_built(SMOL):
        pytest.skip(f"{SMOL} is not cached under {home}; run `manyminds zoo build {SMOL}` once")
    import manyminds
    from manyminds.population import Population

    model, tok = manyminds.load(SMOL)
    pop = Population(model, sigma=0.01, seed=0, tokenizer=tok)
    answers = pop.generate([[{"role": "user", "content": "What is the capital of France?"}]], minds=2,
                           max_new_tokens=20)
    assert len(answers) == 2
    for answer in answers:
        assert answer.isascii() and re.search(r"\b(the|is|of|capital)\b", answer, re.IGNORECASE), answer
    assert any("Paris" in a for a in answers), answers
