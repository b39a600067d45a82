"""Fixtures of the CLI tests: a tiny random Qwen2 with the char tokenizer, saved as a model folder."""

import pytest

from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.zoo.models import random_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A save_pretrained folder (model + tokenizer) that the commands load by path."""
    tok = build_tokenizer()
    path = tmp_path_factory.mktemp("cli_model")
    random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                 eos_token_id=tok.eos_token_id).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def error_line(result) -> str:
    """The output of a failed command must be exactly one ``error:`` line, no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]
