"""An engine built without the mind extension says how to build one."""

import gc
import os

import pytest

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from vllm import LLM, SamplingParams

import manyminds.vllm as mv


def test_plain_llm_refuses_minds_with_a_one_line_error(tiny_llama):
    directory, _, _ = tiny_llama
    llm = LLM(model=directory, dtype="float32", max_model_len=256, enforce_eager=True)
    try:
        with pytest.raises(RuntimeError, match="make_llm") as err:
            mv.generate(llm, "hello", minds=[0], sigma=0.1, sampling_params=SamplingParams(max_tokens=2))
        assert "\n" not in str(err.value)
        # plain rows need no extension
        assert len(mv.generate(llm, "hello", sampling_params=SamplingParams(max_tokens=2))) == 1
    finally:
        del llm
        gc.collect()
