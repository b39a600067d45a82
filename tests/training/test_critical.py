"""critical_alpha on a model: which parameters, which errors, and a trained output layer."""

import pytest
import torch

from manyminds.charlm import VOCAB_SIZE
from manyminds.ensemble import EnsembleLoRA
from manyminds.ensemble.stability import CurvatureError
from manyminds.models import random_model
from manyminds.tasks import load_task
from manyminds.training.critical import critical_alpha


def test_refuses_what_is_not_one_adapter(char_tokenizer):
    ds = load_task("arith", n=4)
    with pytest.raises(ValueError, match="no trainable parameters.*LoraConfig"):
        critical_alpha(random_model("llama", vocab_size=VOCAB_SIZE).requires_grad_(False), char_tokenizer, ds)
    ens = EnsembleLoRA(random_model("llama", vocab_size=VOCAB_SIZE), num_members=2, r=2)
    with pytest.raises(ValueError, match="single solution.*K=2"):
        critical_alpha(ens, char_tokenizer, ds)


def test_trained_output_layer_gives_a_finite_alpha_star(char_tokenizer):
    """Only the output layer trains: the NLL is convex in it, so after fitting V is positive
    definite (with damping) and alpha* is finite and positive; an untrained LoRA is not at a
    minimum and says so."""
    model = random_model("llama", vocab_size=VOCAB_SIZE, seed=0)
    model.requires_grad_(False)
    head = model.get_output_embeddings().weight
    head.requires_grad_(True)
    ds = load_task("conflict", n=12, seed=0)
    from manyminds.training.sft import SFTCollator, prepare_sft_dataset

    batch = SFTCollator(char_tokenizer.pad_token_id)(list(prepare_sft_dataset(ds, char_tokenizer, 64)))
    opt = torch.optim.LBFGS([head], lr=0.5, max_iter=40)

    def closure():
        opt.zero_grad()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        loss = -(logps * batch["completion_mask"][:, 1:]).sum(-1).mean() + 1e-3 * head.pow(2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    res = critical_alpha(model, char_tokenizer, ds, damping=1e-2, iters=15, batch_size=6)
    assert 0 < res.lambda_max < float("inf") and res.alpha_star == pytest.approx(1 / res.lambda_max)
    assert res.num_examples == 12 and res.num_params == head.numel()

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(random_model("llama", vocab_size=VOCAB_SIZE, seed=1),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with pytest.raises(CurvatureError, match="not at a minimum"):
        critical_alpha(lora, char_tokenizer, ds, damping=1e-3, iters=3)
