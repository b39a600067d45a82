import copy

import pytest
import torch
from peft import PeftModel

from manyminds.ensemble import EnsembleLoRA, EnsembleLoRALinear
from manyminds.ensemble.layer import RoutedCheckpoint
from manyminds.zoo.models import random_model


def _ids(B=2, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 64, (B, T), generator=g)


def test_disabled_is_exact_base_and_members_differ(tiny_model):
    base = copy.deepcopy(tiny_model)
    ens = EnsembleLoRA(tiny_model, num_members=3, r=4, init="diverse", init_std=0.5)
    x = _ids()
    with torch.no_grad():
        ref = base(input_ids=x).logits
        with ens.all_members():
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
    with torch.no_grad(), ens.all_members():
        out = ens(input_ids=x.repeat(2, 1)).logits
    torch.testing.assert_close(out, base(input_ids=x).logits.repeat(2, 1, 1), rtol=0, atol=1e-6)
    layer = next(iter(ens.lora_layers.values()))
    assert not torch.equal(layer.lora_A[0], layer.lora_A[1])
    assert layer.lora_A.abs().max() <= 1 / layer.in_features ** 0.5
    # initialization is a pure function of the seed
    again = EnsembleLoRA(copy.deepcopy(base), num_members=2, r=4)
    assert torch.equal(next(iter(again.lora_layers.values())).lora_A, layer.lora_A)


def test_only_lora_trainable(tiny_gpt2):
    ens = EnsembleLoRA(tiny_gpt2, num_members=2, r=2)
    trainable = [n for n, p in ens.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    assert ens.target_names == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    layer = ens.lora_layers["transformer.h.0.attn.c_attn"]
    assert layer.lora_A.shape == (2, 2, 32) and layer.lora_B.shape == (2, 96, 2)
    assert layer is tiny_gpt2.transformer.h[0].attn.c_attn   # the wrapper sits in the model


def test_batched_equals_per_member_loop(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=3, r=4, init="diverse", init_std=0.3)
    x = _ids(B=2)
    with torch.no_grad():
        with ens.all_members():
            batched = ens(input_ids=x.repeat(3, 1)).logits.view(3, 2, 6, -1)
        for k in range(3):
            with ens.members([k, k]):
                single = ens(input_ids=x).logits
            torch.testing.assert_close(batched[k], single, rtol=1e-5, atol=1e-5)


def test_members_per_row_and_base_id(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=3, r=4, init="diverse", init_std=0.3)
    x = _ids(B=1)
    with torch.no_grad():
        with ens.all_members():
            allk = ens(input_ids=x.repeat(3, 1)).logits
        with ens.disabled():
            base = ens(input_ids=x).logits
        with ens.members(torch.tensor([2, -1, 0])):
            mixed = ens(input_ids=x.repeat(3, 1)).logits
    torch.testing.assert_close(mixed[0], allk[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], base[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[2], allk[0], rtol=1e-5, atol=1e-5)


def test_plain_forward_without_routing_context_raises(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4)
    x = _ids(B=4)
    # 4 rows on K=2 used to run members [0, 0, 1, 1] silently; now every entry point refuses
    for call in (lambda: ens(input_ids=x), lambda: tiny_qwen2(input_ids=x),
                 lambda: ens.generate(input_ids=x, max_new_tokens=1, pad_token_id=0)):
        with pytest.raises(RuntimeError, match=r"no routing context: use `with ens.all_members\(\):`"):
            call()


def test_all_members_is_explicit_member_major(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4, init="diverse", init_std=0.3)
    x = _ids(B=2)
    rows = x.repeat(2, 1)                                   # 4 rows, member-major for K=2
    with torch.no_grad():
        with ens.all_members():
            explicit = ens(input_ids=rows).logits
        with ens.members([0, 0, 1, 1]):
            routed = ens(input_ids=rows).logits
        with ens.members([0, 1, 0, 1]):
            interleaved = ens(input_ids=rows).logits
    assert not torch.allclose(explicit, interleaved, atol=1e-4)   # the row order matters
    torch.testing.assert_close(explicit, routed, rtol=1e-5, atol=1e-5)


def test_routing_errors(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=3, r=4)
    x = _ids(B=2)
    with pytest.raises(ValueError, match=r"K\*B member-major rows for K=3, got a batch of 2 rows; "
                                         r"repeat the batch"), ens.all_members():
        ens(input_ids=x)
    with pytest.raises(ValueError, match="K=3, got a batch of 4"), ens.all_members():
        ens(input_ids=x.repeat(2, 1))
    with pytest.raises(ValueError, match="one id per row"), ens.members([0, 1, 2]):
        ens(input_ids=x)
    with pytest.raises(ValueError, match=r"\[-1, 2\]"), ens.members([0, 3]):
        pass


def test_context_restored_after_exception(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4, init="diverse", init_std=0.3)
    x = _ids(B=1)
    with torch.no_grad():
        with ens.all_members():
            before = ens(input_ids=x.repeat(2, 1)).logits
            for ctx in (ens.disabled(), ens.members([1, 0]), ens.all_members()):
                with pytest.raises(KeyError), ctx:
                    raise KeyError("boom")
                # the outer all_members mode is back, not the inner one
                assert torch.equal(ens(input_ids=x.repeat(2, 1)).logits, before)
        for ctx in (ens.disabled(), ens.members([1]), ens.all_members()):
            with pytest.raises(KeyError), ctx:
                raise KeyError("boom")
            with pytest.raises(RuntimeError, match="no routing context"):   # back to no mode
                ens(input_ids=x)


def test_members_live_in_the_model(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4, init="diverse", init_std=0.3)
    keys = tiny_qwen2.state_dict().keys()
    name = "model.layers.0.self_attn.q_proj"
    assert {f"{name}.lora_A", f"{name}.lora_B", f"{name}.base_layer.weight"} <= set(keys)
    assert f"model.{name}.lora_A" in ens.state_dict()                  # once, under the model
    assert sum(k.endswith(".lora_A") for k in ens.state_dict()) == len(ens.target_names)
    # model.to() moves the members with their layers
    tiny_qwen2.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in ens.lora_parameters())
    x = _ids(B=1)
    with torch.no_grad(), ens.all_members():
        assert ens(input_ids=x.repeat(2, 1)).logits.dtype == torch.float64
    # a state dict of the model round-trips the members
    other = EnsembleLoRA(random_model("qwen2", vocab_size=64, seed=0).double(), num_members=2, r=4)
    assert not torch.equal(other.lora_layers[name].lora_B, ens.lora_layers[name].lora_B)
    other.model.load_state_dict(tiny_qwen2.state_dict())
    assert torch.equal(other.lora_layers[name].lora_B, ens.lora_layers[name].lora_B)


def test_unload_restores_base_exactly(tiny_qwen2):
    base = copy.deepcopy(tiny_qwen2)
    keys = list(tiny_qwen2.state_dict().keys())
    flags = {n: p.requires_grad for n, p in tiny_qwen2.named_parameters()}
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4, init="diverse", init_std=0.5)
    ens.gradient_checkpointing_enable()
    x = _ids()
    with torch.no_grad(), ens.members([0, 1]):
        assert not torch.allclose(ens(input_ids=x).logits, base(input_ids=x).logits, atol=1e-4)
    model = ens.unload()
    assert model is tiny_qwen2
    assert list(model.state_dict().keys()) == keys
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not any(isinstance(m, EnsembleLoRALinear) for m in model.modules())
    assert all(not isinstance(m.__dict__.get("_gradient_checkpointing_func"), RoutedCheckpoint)
               for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, base(input_ids=x).logits)
    with pytest.raises(RuntimeError, match="unloaded"), ens.disabled():
        ens(input_ids=x)
    EnsembleLoRA(model, num_members=2, r=4).unload()            # the model can be wrapped again


def test_wrapping_twice_is_refused(tiny_qwen2):
    EnsembleLoRA(tiny_qwen2, num_members=2, r=4)
    with pytest.raises(ValueError, match="already carries EnsembleLoRA members"):
        EnsembleLoRA(tiny_qwen2, num_members=2, r=4)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_members": 0}, "num_members"), ({"r": 0}, "rank"),
    ({"target_modules": ["nope_proj"]}, "q_proj"), ({"init": "zeros"}, "init"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
])
def test_bad_arguments(tiny_qwen2, kwargs, message):
    keys = list(tiny_qwen2.state_dict().keys())
    with pytest.raises(ValueError, match=message):
        EnsembleLoRA(tiny_qwen2, **kwargs)
    # a failed construction leaves the model as it was
    assert list(tiny_qwen2.state_dict().keys()) == keys
    assert all(p.requires_grad for p in tiny_qwen2.parameters())


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
    with torch.no_grad(), ens.all_members():
        out = ens(input_ids=x.repeat(3, 1)).logits.view(3, 2, 6, -1)
    ens.save_members(tmp_path)
    for k in range(3):
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / f"member_{k}")
        with torch.no_grad():
            theirs = peft_model(input_ids=x).logits
        assert not torch.allclose(theirs, out[(k + 1) % 3], atol=1e-4)
        torch.testing.assert_close(theirs, out[k], rtol=1e-5, atol=1e-5)
    loaded = EnsembleLoRA.from_members(copy.deepcopy(base), tmp_path)
    with torch.no_grad(), loaded.all_members():
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
    with torch.no_grad(), ens.all_members():
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
    with ens.all_members():
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


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_replays_the_forward_routing(tiny_qwen2, reentrant):
    """backward() runs after the context exited: checkpointed layers replay the forward's mode."""
    x = _ids()
    base = copy.deepcopy(tiny_qwen2)
    grads = {}
    for checkpointing in (False, True):
        ens = EnsembleLoRA(copy.deepcopy(base), num_members=2, r=4, init="diverse")
        ens.train()
        if checkpointing:
            ens.gradient_checkpointing_enable({"use_reentrant": reentrant})
        with ens.all_members():
            loss = ens(input_ids=x.repeat(2, 1)).logits.pow(2).mean()
        with ens.members([1, -1]):
            loss = loss + ens(input_ids=x).logits.pow(3).mean()
        loss.backward()                                      # outside both contexts
        grads[checkpointing] = [p.grad.clone() for p in ens.lora_parameters()]
    assert all(g.abs().sum() > 0 for g in grads[False])
    for g, plain in zip(grads[True], grads[False]):
        torch.testing.assert_close(g, plain, rtol=1e-5, atol=1e-7)


def test_deep_copy_replays_its_own_routing(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4, init="diverse")
    ens.train()
    ens.gradient_checkpointing_enable({"use_reentrant": False})
    twin = copy.deepcopy(ens)
    assert twin.lora_layers["model.layers.0.self_attn.q_proj"] is twin.model.model.layers[0].self_attn.q_proj
    with twin.all_members():
        loss = twin(input_ids=_ids().repeat(2, 1)).logits.pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in twin.lora_parameters())
    assert all(p.grad is None for p in ens.lora_parameters())


def test_checkpointing_enabled_behind_the_ensemble_says_so(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4, init="diverse")
    ens.train()
    tiny_qwen2.gradient_checkpointing_enable({"use_reentrant": False})   # not through the ensemble
    with ens.all_members():
        loss = ens(input_ids=_ids().repeat(2, 1)).logits.pow(2).mean()
    with pytest.raises(RuntimeError, match="gradient-checkpoint replay ran with no routing context"):
        loss.backward()


@pytest.mark.parametrize("reentrant", [True, False])
def test_trainer_with_gradient_checkpointing_matches_plain(char_qwen2, char_tokenizer, tmp_path, reentrant):
    """The Trainer's backward runs outside compute_loss's all_members(): replays keep the routing."""
    from manyminds.tasks import load_task
    from manyminds.training import RenyiSFTConfig, RenyiSFTTrainer

    data = load_task("conflict", n=8)
    params = {}
    for checkpointing in (False, True):
        args = RenyiSFTConfig(output_dir=str(tmp_path / str(checkpointing)), num_members=2, r=4,
                              init="diverse", max_steps=2, per_device_train_batch_size=4,
                              learning_rate=1e-2, save_strategy="no", use_cpu=True, disable_tqdm=True,
                              seed=0, report_to="none", gradient_checkpointing=checkpointing,
                              gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        trainer = RenyiSFTTrainer(copy.deepcopy(char_qwen2), args, train_dataset=data,
                                  processing_class=char_tokenizer)
        start = [p.detach().clone() for p in trainer.ensemble.lora_parameters()]
        trainer.train()
        layer = trainer.ensemble.model.model.layers[0]
        assert layer.gradient_checkpointing == checkpointing
        assert isinstance(layer.__dict__.get("_gradient_checkpointing_func"), RoutedCheckpoint) == checkpointing
        params[checkpointing] = [p.detach().clone() for p in trainer.ensemble.lora_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(start, params[True]))
    for a, b in zip(params[True], params[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_trainer_disables_base_dropout_but_keeps_lora_dropout(char_qwen2, char_tokenizer, tmp_path):
    from manyminds.training import RenyiSFTConfig, RenyiSFTTrainer

    char_qwen2.config.attention_dropout = 0.1
    args = RenyiSFTConfig(output_dir=str(tmp_path), num_members=2, r=4, lora_dropout=0.2, use_cpu=True,
                          report_to="none")
    trainer = RenyiSFTTrainer(char_qwen2, args, processing_class=char_tokenizer)
    assert all(layer.dropout.p == 0.2 for layer in trainer.ensemble.lora_layers.values())
    lora = {id(layer.dropout) for layer in trainer.ensemble.lora_layers.values()}
    assert all(m.p == 0.0 for m in char_qwen2.modules()
               if isinstance(m, torch.nn.Dropout) and id(m) not in lora)
