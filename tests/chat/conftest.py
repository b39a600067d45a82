"""Fixtures of the chat tests: a tiny chat tokenizer (ChatML template with a BOS, as SmolLM2's
family renders conversations) and a tiny random Qwen2 whose vocabulary covers it."""

import pytest
from tokenizers.processors import TemplateProcessing

from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.zoo.models import random_model

# SmolLM2-style ChatML, plus the BOS that Llama-family templates write themselves: the template is
# what puts special tokens into a conversation, so adding the tokenizer's own on top doubles the BOS.
CHATML = ("{{ bos_token }}{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def make_chat_tokenizer():
    """The char tokenizer with ``<|im_start|>``/``<|im_end|>`` special tokens, a post-processor that
    prepends ``<bos>`` to plain text (as Llama's does) and :data:`CHATML`; eos = ``<|im_end|>``
    (as SmolLM2-Instruct's)."""
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.bos_token_id)])
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    assert len(tok) <= VOCAB_SIZE
    return tok


@pytest.fixture
def chat_tokenizer():
    return make_chat_tokenizer()


@pytest.fixture
def chat_model():
    """A tiny random Qwen2 over the chat tokenizer's ids (float32, CPU)."""
    tok = make_chat_tokenizer()
    return random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
