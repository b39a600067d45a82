"""transformers and vLLM score a member's completion from the same token ids.

The rows are the trainers' rows (:func:`manyminds.training.sft.prepare_sft_dataset`, TRL 1.16's
rule): a text prompt and completion tokenised once with eos appended, a conversation through the
chat template, the prompt being the common prefix. ``member_logp_variance`` must report exactly
those ids, and each member's summed log-prob of the completion tokens must equal a float64
log-softmax of the transformers member on the same ids.
"""

import os
import shutil

import pytest
import torch

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer

import manyminds.vllm as mv
from manyminds.ensemble import EnsembleLoRA
from manyminds.training.sft import prepare_sft_dataset

# a template that writes its own BOS per turn (the tokenizer's post-processor adds one too)
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}")
# "quick " + "brown": byte-level BPE merges the space into " brown": the prompt's own ids are
# no prefix of the row's
PROMPTS = ["the quick ", [{"role": "user", "content": "once upon a time"}]]
COMPLETIONS = ["brown fox jumps", [{"role": "assistant", "content": " there was a small model"}]]


@pytest.fixture(scope="module")
def chat_members(tiny_llama, tmp_path_factory):
    """``(directory, ensemble, tokenizer, members_dir)``: the tiny Llama with a chat template and
    two saved members that differ from each other and from the base."""
    source, _, _ = tiny_llama
    directory = tmp_path_factory.mktemp("tiny_llama_chat")
    shutil.copytree(source, directory, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ens = EnsembleLoRA(model, num_members=2, r=4, lora_alpha=8, init="diverse", init_std=0.5,
                       seed=0)
    for layer in ens.lora_layers.values():
        with torch.no_grad():
            layer.lora_A.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    members_dir = tmp_path_factory.mktemp("chat_members")
    ens.save_members(members_dir)
    return str(directory), ens, tokenizer, str(members_dir)


def trainer_rows(tokenizer) -> list[dict]:
    """The SFT trainer's tokenised rows of (prompt, completion), one dataset per row (a column holds
    one kind: text or conversations)."""
    data = [datasets.Dataset.from_list([{"prompt": p, "completion": c}])
            for p, c in zip(PROMPTS, COMPLETIONS)]
    return [prepare_sft_dataset(d, tokenizer, None)[0] for d in data]


def hf_member_logp(ens, ids: list[int], mask: list[int], member: int) -> float:
    """``sum_{t: mask[t] = 1} log_softmax(logits[t - 1])[ids[t]]`` of one member, one row, in
    float64."""
    x = torch.tensor([ids])
    with ens.members([member]), torch.no_grad():
        logits = ens(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].double()   # [T, V]
    logp = torch.log_softmax(logits, dim=-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if mask[t])


def test_old_tokenisation_differs_from_the_trainers(chat_members):
    """Without the shared tokenisation the engines would score other ids: ``tokenizer(prompt +
    completion)`` has no eos, ``len(tokenizer(prompt))`` is not where the completion starts when BPE
    merges across the boundary, and a rendered conversation gets a second BOS."""
    _, _, tokenizer, _ = chat_members
    rows = trainer_rows(tokenizer)
    text = rows[0]
    old_ids = tokenizer(PROMPTS[0] + COMPLETIONS[0]).input_ids
    assert old_ids != text["input_ids"] and text["input_ids"] == old_ids + [tokenizer.eos_token_id]
    old_start = len(tokenizer(PROMPTS[0]).input_ids)
    assert old_start != text["completion_mask"].index(1)
    chat_text = tokenizer.apply_chat_template(PROMPTS[1] + COMPLETIONS[1], tokenize=False)
    assert tokenizer(chat_text).input_ids != rows[1]["input_ids"]


def test_transformers_and_vllm_score_members_from_the_same_ids(chat_members):
    directory, ens, tokenizer, members_dir = chat_members
    rows = trainer_rows(tokenizer)
    ref = torch.tensor([[hf_member_logp(ens, r["input_ids"], r["completion_mask"], k)
                         for r in rows] for k in range(2)], dtype=torch.float64)     # [K, B]
    assert (ref[0] - ref[1]).abs().min() > 1e-2  # the members differ: a wrong adapter would show
    # dtype "auto" would run the float32 checkpoint in 16 bits; float32 leaves only kernel numerics
    llm = mv.make_member_llm(directory, members_dir, dtype="float32", max_model_len=256,
                             enforce_eager=True)
    try:
        got = mv.member_logp_variance(llm, PROMPTS, COMPLETIONS, members_dir)
    finally:
        del llm
    assert got["input_ids"] == [r["input_ids"] for r in rows]
    assert got["completion_mask"] == [r["completion_mask"] for r in rows]
    torch.testing.assert_close(got["member_logps"], ref, atol=2e-3, rtol=1e-4)
