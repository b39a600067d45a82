import copy

import pytest
import torch
from peft import PeftModel

from manyminds.ensemble import EnsembleLoRA
from manyminds.models import random_model


def _ids(B=2, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 64, (B, T), generator=g)


def test_disabled_is_exact_base_and_members_differ(tiny_model):
    base = copy.deepcopy(tiny_model)
    ens = EnsembleLoRA(tiny_model, num_members=3, r=4, init="diverse", init_std=0.5)
    x = _ids()
    with torch.no_grad():
        ref = base(input_ids=x).logits
        out = ens(input_ids=x.repeat(3, 1)).logits.view(3, 2, 6, -1)
        with ens.disabled():
            off = ens(input_ids=x).logits
    assert not torch.allclose(out[0], ref, atol=1e-4)       # the members do change the model
    assert not torch.allclose(out[0], out[1], atol=1e-4)    # and differ from each other
    assert torch.equal(off, ref)


def test_peft_init_starts_at_base_with_distinct_A(tiny_qwen2):
    base = copy.deepcopy(tiny_qwen2)
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4)
    x = _ids()
    with torch.no_grad():
        out = ens(input_ids=x.repeat(2, 1)).logits
    torch.testing.assert_close(out, base(input_ids=x).logits.repeat(2, 1, 1), rtol=0, atol=1e-6)
    layer = next(iter(ens.layers.values()))
    assert not torch.equal(layer.lora_A[0], layer.lora_A[1])
    assert layer.lora_A.abs().max() <= 1 / layer.in_features ** 0.5
    # initialization is a pure function of the seed
    again = EnsembleLoRA(copy.deepcopy(base), num_members=2, r=4)
    assert torch.equal(next(iter(again.layers.values())).lora_A, layer.lora_A)


def test_only_lora_trainable(tiny_gpt2):
    ens = EnsembleLoRA(tiny_gpt2, num_members=2, r=2)
    trainable = [n for n, p in ens.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    assert ens.target_names == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert ens.layers["transformer__h__0__attn__c_attn"].lora_A.shape == (2, 2, 32)
    assert ens.layers["transformer__h__0__attn__c_attn"].lora_B.shape == (2, 96, 2)


def test_batched_equals_per_member_loop(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=3, r=4, init="diverse", init_std=0.3)
    x = _ids(B=2)
    with torch.no_grad():
        batched = ens(input_ids=x.repeat(3, 1)).logits.view(3, 2, 6, -1)
        for k in range(3):
            with ens.members([k, k]):
                single = ens(input_ids=x).logits
            torch.testing.assert_close(batched[k], single, rtol=1e-5, atol=1e-5)


def test_members_per_row_and_base_id(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=3, r=4, init="diverse", init_std=0.3)
    x = _ids(B=1)
    with torch.no_grad():
        allk = ens(input_ids=x.repeat(3, 1)).logits
        with ens.disabled():
            base = ens(input_ids=x).logits
        with ens.members(torch.tensor([2, -1, 0])):
            mixed = ens(input_ids=x.repeat(3, 1)).logits
    torch.testing.assert_close(mixed[0], allk[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], base[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[2], allk[0], rtol=1e-5, atol=1e-5)


def test_routing_errors(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=3, r=4)
    x = _ids(B=2)
    with pytest.raises(ValueError, match="K\\*B member-major"):
        ens(input_ids=x)
    with pytest.raises(ValueError, match="one id per row"), ens.members([0, 1, 2]):
        ens(input_ids=x)
    with pytest.raises(ValueError, match=r"\[-1, 2\]"), ens.members([0, 3]):
        pass


def test_context_restored_after_exception(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4, init="diverse", init_std=0.3)
    x = _ids(B=1)
    with torch.no_grad():
        before = ens(input_ids=x.repeat(2, 1)).logits
        for ctx in (ens.disabled(), ens.members([1, 0])):
            with pytest.raises(RuntimeError), ctx:
                raise RuntimeError("boom")
            assert torch.equal(ens(input_ids=x.repeat(2, 1)).logits, before)


def test_unload_restores_base(tiny_qwen2):
    base = copy.deepcopy(tiny_qwen2)
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4, init="diverse", init_std=0.5)
    model = ens.unload()
    x = _ids()
    assert torch.equal(model(input_ids=x).logits, base(input_ids=x).logits)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_members": 0}, "num_members"), ({"r": 0}, "rank"),
    ({"target_modules": ["nope_proj"]}, "q_proj"), ({"init": "zeros"}, "init"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
])
def test_bad_arguments(tiny_qwen2, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EnsembleLoRA(tiny_qwen2, **kwargs)
    # a failed construction leaves no hooks behind
    assert all(not m._forward_hooks for m in tiny_qwen2.modules())


def test_regex_and_container_targets(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=2, target_modules=r".*\.(k_proj|o_proj)")
    assert len(ens.target_names) == 4
    ens.unload()
    with pytest.raises(TypeError, match="not nn.Linear"):
        EnsembleLoRA(tiny_qwen2, num_members=2, target_modules=["self_attn"])


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "phi", "opt", "llama"])
def test_peft_round_trip(family, tmp_path):
    model = random_model(family, vocab_size=64, seed=0)
    base = copy.deepcopy(model)
    ens = EnsembleLoRA(model, num_members=3, r=4, init="diverse", init_std=0.3, seed=1)
    x = _ids()
    with torch.no_grad():
        out = ens(input_ids=x.repeat(3, 1)).logits.view(3, 2, 6, -1)
    ens.save_members(tmp_path)
    for k in range(3):
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / f"member_{k}")
        with torch.no_grad():
            theirs = peft_model(input_ids=x).logits
        assert not torch.allclose(theirs, out[(k + 1) % 3], atol=1e-4)
        torch.testing.assert_close(theirs, out[k], rtol=1e-5, atol=1e-5)
    loaded = EnsembleLoRA.from_members(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        again = loaded(input_ids=x.repeat(3, 1)).logits.view(3, 2, 6, -1)
    torch.testing.assert_close(again, out, rtol=1e-6, atol=1e-6)


def test_peft_trained_adapter_loads_into_ensemble(tiny_qwen2, tmp_path):
    """The other direction: adapters written by PEFT itself load as ensemble members."""
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(tiny_qwen2)
    x = _ids()
    expected = []
    for k in range(2):
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.3, generator=torch.Generator().manual_seed(k))
        pm.save_pretrained(tmp_path / f"member_{k}")
        with torch.no_grad():
            expected.append(pm(input_ids=x).logits)
    ens = EnsembleLoRA.from_members(tiny_qwen2, tmp_path)
    with torch.no_grad():
        out = ens(input_ids=x.repeat(2, 1)).logits.view(2, 2, 6, -1)
    for k in range(2):
        torch.testing.assert_close(out[k], expected[k], rtol=1e-5, atol=1e-5)


def test_checkpoint_shape_mismatch(tiny_qwen2, tmp_path):
    base = copy.deepcopy(tiny_qwen2)
    EnsembleLoRA(tiny_qwen2, num_members=3, r=4).save_members(tmp_path)
    other = EnsembleLoRA(copy.deepcopy(base), num_members=2, r=4)
    with pytest.raises(ValueError, match="K=3 members of rank r=4"):
        other.load_members(tmp_path)
    other = EnsembleLoRA(copy.deepcopy(base), num_members=3, r=8)
    with pytest.raises(ValueError, match="r=4"):
        other.load_members(tmp_path)
    with pytest.raises(ValueError, match="num_members=2"):
        EnsembleLoRA.from_members(copy.deepcopy(base), tmp_path, num_members=2)


def test_gradients_reach_every_member(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=3, r=4, init="diverse")
    x = _ids()
    ens(input_ids=x.repeat(3, 1)).logits.sum().backward()
    for p in ens.lora_parameters():
        assert p.grad is not None and (p.grad.flatten(1).abs().sum(1) > 0).all()


def test_member_ids_validation_and_repeat(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=3, r=4, init="diverse", init_std=0.3)
    with pytest.raises(TypeError, match="integers"), ens.members([0.5, 1]):
        pass
    with pytest.raises(ValueError, match="empty"), ens.members([]):
        pass
    x = _ids(B=2)
    with torch.no_grad():
        with ens.members([2, 0]):
            once = ens(input_ids=x).logits
        with ens.members([2, 0]):   # 2 rows per id, as generate(num_return_sequences=2) expands them
            twice = ens(input_ids=x.repeat_interleave(2, dim=0)).logits
    torch.testing.assert_close(twice[::2], once, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(twice[1::2], once, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_keeps_lora_grads(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4, init="diverse")
    x = _ids()
    ens.train()
    ens(input_ids=x.repeat(2, 1)).logits.pow(2).mean().backward()
    plain = [p.grad.clone() for p in ens.lora_parameters()]
    ens.zero_grad()
    ens.gradient_checkpointing_enable({"use_reentrant": True})
    ens(input_ids=x.repeat(2, 1)).logits.pow(2).mean().backward()
    for g, p in zip(plain, ens.lora_parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
