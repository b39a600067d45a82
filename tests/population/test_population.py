"""Population minds: identity, reproducibility, per-row independence, cache consistency,
restoration, generation and bad input, across architecture families."""

import copy

import pytest
import torch
from torch import nn

from manyminds.population import Population, find_norm_layers
from manyminds.population.noise import mind_noise_table, standard_noise
from manyminds.zoo.models import random_model


def _logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


def _hooks(pop):
    return sum(len(layer.module._forward_hooks) for layer in pop.layers)


# ----------------------------------------------------------------------------- norms


EXPECTED_LAYERS = {"llama": 5, "qwen2": 5, "qwen3": 5, "mistral": 5, "gemma": 5, "gpt2": 5, "opt": 5, "phi": 3}


def test_finds_hidden_width_norms(tiny_model):
    family = type(tiny_model).__name__
    layers = find_norm_layers(tiny_model)
    assert all(layer.width == tiny_model.config.hidden_size for layer in layers)
    assert [layer.kind for layer in layers][-1] == "final"
    assert all(layer.kind == "block" for layer in layers[:-1])
    assert [layer.key for layer in layers] == sorted(layer.key for layer in layers)
    assert not any("q_norm" in layer.name or "k_norm" in layer.name for layer in layers), family
    blocks = find_norm_layers(tiny_model, norms="blocks")
    final = find_norm_layers(tiny_model, norms="final")
    assert len(blocks) + len(final) == len(layers)
    assert {layer.key for layer in blocks} | {layer.key for layer in final} == {layer.key for layer in layers}


@pytest.mark.parametrize("family", list(EXPECTED_LAYERS))
def test_layer_counts(family):
    assert Population(random_model(family)).num_layers == EXPECTED_LAYERS[family]


def test_qwen3_qk_norms_opt_in():
    model = random_model("qwen3")
    plain = Population(model, sigma=0.1)
    with_qk = Population(model, sigma=0.1, include_qk_norms=True)
    assert with_qk.num_layers == plain.num_layers + 4  # q_norm, k_norm in each of 2 blocks
    x = torch.randint(4, 64, (2, 6))
    with plain.minds([0, 1]):
        a = _logits(model, x)
    with with_qk.minds([0, 1]):
        b = _logits(model, x)  # per-head outputs [B, T, nh, hd] get offsets [B, 1, 1, hd]
    assert not torch.allclose(a, b)
    # keys are stable: the shared layers draw the same noise in both populations
    shared = {layer.name: layer.key for layer in plain.layers}
    assert all(shared[layer.name] == layer.key for layer in with_qk.layers if layer.name in shared)


def test_unsupported_model_names_class():
    class NoNorms(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Cfg", (), {"hidden_size": 8})()
            self.proj = nn.Linear(8, 8)

    with pytest.raises(ValueError, match="NoNorms is not supported"):
        Population(NoNorms())


# ----------------------------------------------------------------------------- identity & minds


def test_sigma_zero_is_identity(tiny_model, ids_batch):
    base = _logits(tiny_model, ids_batch)
    with Population(tiny_model, sigma=0.05).minds([0, 1, 2]):
        noisy = _logits(tiny_model, ids_batch)
    assert not torch.allclose(noisy, base)  # the feature changes outputs...
    for noise in ("additive", "multiplicative"):
        with Population(tiny_model, sigma=0.0, noise=noise).minds([0, 1, 2]):
            assert torch.equal(_logits(tiny_model, ids_batch), base)  # ...and sigma=0 is exact


def test_unperturbed_rows_and_restoration(tiny_model, ids_batch):
    base = _logits(tiny_model, ids_batch)
    pop = Population(tiny_model, sigma=0.1)
    with pop.minds([-1, 3, -1]):
        out = _logits(tiny_model, ids_batch)
        assert _hooks(pop) == pop.num_layers
    assert torch.equal(out[0], base[0]) and torch.equal(out[2], base[2])
    assert not torch.allclose(out[1], base[1])
    assert _hooks(pop) == 0
    assert torch.equal(_logits(tiny_model, ids_batch), base)


def test_restored_after_exception(tiny_qwen2, ids_batch):
    base = _logits(tiny_qwen2, ids_batch)
    pop = Population(tiny_qwen2, sigma=0.1)
    with pytest.raises(RuntimeError, match="boom"), pop.minds([0, 1, 2]):
        assert not torch.allclose(_logits(tiny_qwen2, ids_batch), base)
        raise RuntimeError("boom")
    assert _hooks(pop) == 0 and pop.active_ids is None
    assert torch.equal(_logits(tiny_qwen2, ids_batch), base)
    # a bad batch size raised inside a forward also leaves the model clean
    with pytest.raises(ValueError, match="3 mind ids but the model got a batch of 2"), pop.minds([0, 1, 2]):
        tiny_qwen2(ids_batch[:2])
    assert torch.equal(_logits(tiny_qwen2, ids_batch), base)


def test_mind_reproducible_and_distinct(tiny_model, ids_batch):
    x = ids_batch[:1].repeat(4, 1)
    pop = Population(tiny_model, sigma=0.05, seed=7)
    state = torch.get_rng_state()
    with pop.minds([5, 5, 6, 5]):
        a = _logits(tiny_model, x)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never used
    with Population(tiny_model, sigma=0.05, seed=7).minds([5, 6, 5, 5]):
        b = _logits(tiny_model, x)
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], b[0]) and torch.equal(a[2], b[1])
    assert not torch.allclose(a[0], a[2])
    with Population(tiny_model, sigma=0.05, seed=8).minds([5, 5, 5, 5]):
        c = _logits(tiny_model, x)
    assert not torch.allclose(a[0], c[0])  # another population seed, another mind 5


def test_offsets_pure_function():
    model = random_model("llama")
    pop = Population(model, sigma=0.02, seed=3)
    z = pop.offsets(4, 1)
    assert z.shape == (32,) and z.dtype == torch.float32
    eps = standard_noise(3, 4, pop.layers[1].key, 32)
    torch.testing.assert_close(z, 0.02 * eps, rtol=0, atol=0)
    assert torch.equal(pop.offsets(-1, 0), torch.zeros(32))
    table = mind_noise_table(3, [4, -1, 4], pop.layers[1].key, 32, 0.02)
    assert torch.equal(table[0], z) and torch.equal(table[2], z) and not table[1].any()
    # the noise of a layer does not depend on which norms are perturbed
    blocks = Population(model, sigma=0.02, seed=3, norms="blocks")
    assert torch.equal(blocks.offsets(4, 1), z)
    # per-layer sigma scales each layer separately
    per_layer = Population(model, sigma=[0.0, 0.02, 0.0, 0.0, 0.0], seed=3)
    assert torch.equal(per_layer.offsets(4, 1), z) and not per_layer.offsets(4, 0).any()
    assert pop.num_layers == 5 and pop.hidden_size == 32 and len(pop.layer_names) == 5


def test_offsets_in_norm_dtype():
    model = random_model("qwen2", dtype=torch.bfloat16)
    pop = Population(model, sigma=0.05)
    assert pop.offsets(0, 0).dtype == torch.bfloat16
    x = torch.randint(4, 64, (2, 5))
    with pop.minds([0, 1]):
        out = _logits(model, x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_per_layer_sigma_and_multiplicative(tiny_qwen2, ids_batch):
    base = _logits(tiny_qwen2, ids_batch)
    with Population(tiny_qwen2, sigma=[0.0] * 5).minds([0, 1, 2]):
        assert torch.equal(_logits(tiny_qwen2, ids_batch), base)
    with Population(tiny_qwen2, sigma=[0.0, 0.0, 0.0, 0.0, 0.1]).minds([0, 1, 2]):
        final_only = _logits(tiny_qwen2, ids_batch)
    with Population(tiny_qwen2, sigma=0.1, norms="final").minds([0, 1, 2]):
        assert torch.equal(_logits(tiny_qwen2, ids_batch), final_only)
    with Population(tiny_qwen2, sigma=0.1, noise="multiplicative").minds([0, 1, 2]):
        assert not torch.allclose(_logits(tiny_qwen2, ids_batch), base)


# ----------------------------------------------------------------------------- batching


def _left_pad(rows, pad=0):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return ids, mask


def test_row_independence_with_left_padding(tiny_model):
    rows = [[5, 9, 11, 7, 30, 12], [8, 20, 4], [13, 14, 15, 16]]
    minds = [3, -1, 0]
    ids, mask = _left_pad(rows)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    pop = Population(tiny_model, sigma=0.05)
    with pop.minds(minds):
        batched = _logits(tiny_model, ids, attention_mask=mask, position_ids=pos)
    for b, (row, mind) in enumerate(zip(rows, minds)):
        alone_ids = torch.tensor([row])
        with pop.minds([mind]):
            alone = _logits(tiny_model, alone_ids)
        got = batched[b, ids.shape[1] - len(row):]
        torch.testing.assert_close(got, alone[0], rtol=1e-5, atol=1e-5)
        with pop.minds([(mind + 1) if mind >= 0 else 0]):
            other = _logits(tiny_model, alone_ids)
        assert (other[0] - alone[0]).abs().max() > 1e-3  # another mind is far away


def test_batch_expansion_repeats_ids(tiny_qwen2, ids_batch):
    pop = Population(tiny_qwen2, sigma=0.05)
    x = ids_batch[:2]
    with pop.minds([4, 9]):
        two = _logits(tiny_qwen2, x)
        six = _logits(tiny_qwen2, x.repeat_interleave(3, dim=0))  # rows 0,0,0,1,1,1
    torch.testing.assert_close(six[:3], two[0].expand(3, -1, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(six[3:], two[1].expand(3, -1, -1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one id per row"), pop.minds([4, 9]):
        tiny_qwen2(ids_batch)  # 3 rows for 2 ids


def test_kv_cache_consistency(tiny_model):
    torch.manual_seed(0)
    seq = torch.randint(4, 64, (2, 10))
    pop = Population(tiny_model, sigma=0.05)
    with pop.minds([1, 2]):
        full = _logits(tiny_model, seq)
        with torch.no_grad():
            out = tiny_model(seq[:, :4], use_cache=True)
            steps = [out.logits]
            past = out.past_key_values
            for t in range(4, 10):
                out = tiny_model(seq[:, t:t + 1], past_key_values=past, use_cache=True)
                past = out.past_key_values
                steps.append(out.logits)
    incremental = torch.cat(steps, dim=1)
    assert not torch.allclose(full, _logits(tiny_model, seq))
    torch.testing.assert_close(incremental, full, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- generation


def test_generate_minds_and_num_return_sequences(tiny_qwen2):
    pop = Population(tiny_qwen2, sigma=0.3)
    prompt = torch.tensor([[5, 6, 7, 8]])
    kw = {"max_new_tokens": 8, "pad_token_id": 0, "eos_token_id": None}
    # greedy: each mind is deterministic, and minds differ
    greedy = pop.generate(prompt.repeat(4, 1), minds=[0, 1, 2, 3], do_sample=False, **kw)
    assert greedy.shape == (4, 12)
    assert len({tuple(r.tolist()) for r in greedy}) > 1
    again = pop.generate(prompt.repeat(2, 1), minds=[2, 0], do_sample=False, **kw)
    assert torch.equal(again[0], greedy[2]) and torch.equal(again[1], greedy[0])
    # num_return_sequences: rows expand with repeat_interleave, each copy keeps its mind
    expanded = pop.generate(prompt.repeat(2, 1), minds=[1, 3], do_sample=True, top_k=1,
                            num_return_sequences=3, **kw)
    assert expanded.shape == (6, 12)
    for r in range(3):
        assert torch.equal(expanded[r], greedy[1]) and torch.equal(expanded[3 + r], greedy[3])
    # sampling under minds works and the model is restored afterwards
    torch.manual_seed(0)
    sampled = pop.generate(prompt.repeat(3, 1), minds=[0, 1, 2], do_sample=True, **kw)
    assert sampled.shape == (3, 12) and _hooks(pop) == 0


def test_generate_text_with_left_padding(char_qwen2, char_tokenizer):
    pop = Population(char_qwen2, sigma=0.2, tokenizer=char_tokenizer)
    kw = {"max_new_tokens": 6, "do_sample": False}
    prompts = ["Q: 1+2\nA:", "Q: 12+34-5\nA:"]
    texts, minds = pop.generate(prompts, minds=3, return_minds=True, **kw)
    assert len(texts) == 6 and minds == [0, 1, 2, 0, 1, 2]
    # a row of the padded batch equals the same prompt and mind generated alone
    alone = pop.generate(prompts[0], minds=[2], **kw)
    assert alone[0] == texts[2]
    alone = pop.generate(prompts[1], minds=[1], **kw)
    assert alone[0] == texts[4]
    assert pop.generate(prompts, minds=[-1, 4], **kw)[1] == pop.generate([prompts[1]], minds=[4], **kw)[0]
    with pytest.raises(ValueError, match="2 mind ids for 3 prompts"):
        pop.generate(["a", "b", "c"], minds=[0, 1])
    with pytest.raises(ValueError, match="needs a tokenizer"):
        Population(char_qwen2).generate("Q: 1+1\nA:", minds=2)


# ----------------------------------------------------------------------------- gradients


def test_gradients_flow_and_checkpointing():
    model = random_model("qwen2").train()
    x = torch.randint(4, 64, (2, 8))
    pop = Population(model, sigma=0.1)

    def grads():
        model.zero_grad()
        with pop.minds([0, 1]):
            model(x, labels=x).loss.backward()  # backward inside the context
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    noisy = grads()
    model.zero_grad()
    model(x, labels=x).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(noisy) == set(plain)
    assert any(not torch.allclose(noisy[n], plain[n]) for n in noisy)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    replayed = grads()
    for n in noisy:
        torch.testing.assert_close(replayed[n], noisy[n], rtol=1e-5, atol=1e-6)


def test_peft_wrapped_model_same_minds(tiny_qwen2, ids_batch):
    peft = pytest.importorskip("peft")
    pop = Population(tiny_qwen2, sigma=0.05)
    with pop.minds([0, 1, 2]):
        ref = _logits(tiny_qwen2, ids_batch)
    wrapped = peft.get_peft_model(copy.deepcopy(tiny_qwen2), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    wpop = Population(wrapped, sigma=0.05)
    assert [layer.key for layer in wpop.layers] == [layer.key for layer in pop.layers]
    with wpop.minds([0, 1, 2]):
        got = _logits(wrapped, ids_batch)  # LoRA B = 0 at init: same function as the base
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])
def test_bad_sigma(tiny_qwen2, sigma):
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        Population(tiny_qwen2, sigma=sigma)


def test_bad_arguments(tiny_qwen2):
    with pytest.raises(ValueError, match="one value per layer"):
        Population(tiny_qwen2, sigma=[0.1, 0.2])
    with pytest.raises(TypeError, match="sigma"):
        Population(tiny_qwen2, sigma="0.1")
    with pytest.raises(ValueError, match="noise must be one of"):
        Population(tiny_qwen2, noise="gaussian")
    with pytest.raises(ValueError, match="norms must be one of"):
        Population(tiny_qwen2, norms="some")
    pop = Population(tiny_qwen2)
    for ids, err, match in [([0, -2], ValueError, ">= 0, or -1"), ([], ValueError, "empty"),
                            ([0.5], TypeError, "integers"), (torch.zeros(2, 2, dtype=torch.long), ValueError, "1-D"),
                            (torch.tensor([0.0]), TypeError, "integers"), ("01", TypeError, "list of ints")]:
        with pytest.raises(err, match=match), pop.minds(ids):
            pass
    with pytest.raises(ValueError, match=">= 0"):
        pop.offsets(-3, 0)
    with pop.minds([0]), pytest.raises(RuntimeError, match="already has an active"), pop.minds([1]):
        pass
    other = Population(tiny_qwen2)
    with pop.minds([0]), pytest.raises(RuntimeError, match="another population"), other.minds([1]):
        pass
    assert _hooks(pop) == 0


def test_noise_cache_is_bounded_and_transparent(tiny_qwen2, ids_batch):
    cached = Population(tiny_qwen2, sigma=0.05, seed=2)
    uncached = Population(tiny_qwen2, sigma=0.05, seed=2, cache_bytes=0)
    with cached.minds([0, 1, 2]):
        a = _logits(tiny_qwen2, ids_batch)
    with cached.minds([0, 1, 2]):  # served from the cache
        b = _logits(tiny_qwen2, ids_batch)
    with uncached.minds([0, 1, 2]):
        c = _logits(tiny_qwen2, ids_batch)
    assert torch.equal(a, b) and torch.equal(a, c) and not uncached._noise_cache
    small = Population(tiny_qwen2, sigma=0.05, cache_bytes=3 * 32 * 4)  # room for 3 vectors of [32] float32
    for mind in range(4):
        small.offsets(mind, 0)
    assert len(small._noise_cache) == 3 and small._cache_used <= small.cache_bytes
    assert torch.equal(small.offsets(0, 0), Population(tiny_qwen2, sigma=0.05).offsets(0, 0))  # evicted: redrawn
