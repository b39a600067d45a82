"""TRL-style weight sync (``model.load_weights([(name, tensor)])``, one tensor per call) into an engine
whose CPU linear kernels hold packed copies of the weights: with
:class:`~manyminds.vllm.weight_sync.RepackAwareWeightLoading` the engine then equals the Hugging
Face model with the new weights (greedy tokens and log-probs).

``kernels="vllm"`` keeps what vLLM chose on this CPU (oneDNN / sgl packing with AVX-512 or AMX;
skipped where vLLM falls back to torch's linear); ``kernels="simulated"`` forces the fallback and
then packs every linear layer the way vLLM's kernels do (a private copy of the weight in
``cpu_linear``'s closure, ``layer.weight`` emptied where vLLM empties it), so the bug and the fix are
exercised on any CPU.
"""

import gc
import os

import pytest
import torch

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

import vllm._custom_ops as vllm_ops
import vllm.model_executor.layers.utils as vllm_layer_utils
from transformers import AutoConfig, LlamaForCausalLM
from vllm import LLM, SamplingParams

from manyminds.vllm import WORKER_EXTENSION
from manyminds.vllm.weight_sync import (
    WEIGHT_SYNC_EXTENSION,
    RepackAwareWeightLoading,
    WeightSyncWorkerExtension,
    finish_weight_sync,
    holds_packed_copy,
    weight_sync_info,
)
from manyminds.vllm.worker import MindWorkerExtension

PROMPTS = ["hello world number 0", "once upon a time there"]
NEW = 8
GREEDY = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True, logprobs=0)


def force_torch_fallback(monkeypatch):
    """vLLM's CPU dispatch picks torch's linear (as on a CPU without AVX-512): nothing packed."""
    monkeypatch.setattr(vllm_ops, "_supports_onednn", False)
    monkeypatch.setattr(vllm_layer_utils, "check_cpu_sgl_kernel", lambda *args, **kwargs: False)


def simulate_packing(monkeypatch):
    """Force the fallback, then pack like vLLM's kernels: the kernel computes with a private copy."""
    force_torch_fallback(monkeypatch)
    dispatch = vllm_layer_utils.dispatch_cpu_unquantized_gemm

    def packing_dispatch(layer, remove_weight):
        dispatch(layer, remove_weight)
        if layer.weight.is_meta or layer.weight.ndim != 2:
            return
        packed = layer.weight.detach().clone()
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, packed, bias)
        if remove_weight:
            layer.weight = torch.nn.Parameter(torch.empty(0, dtype=packed.dtype), requires_grad=False)

    monkeypatch.setattr(vllm_layer_utils, "dispatch_cpu_unquantized_gemm", packing_dispatch)


def engine(directory, mode="eager", extension=None):
    kwargs = {} if extension is None else {"worker_extension_cls": extension}
    return LLM(model=str(directory), dtype="float32", max_model_len=128, enforce_eager=mode == "eager", seed=0,
               **kwargs)


def vllm_model(llm):
    """The module TRL's colocate mode loads weights into."""
    return llm.llm_engine.model_executor.driver_worker.model_runner.model


def sync(llm, weights):
    """What TRL's ``VLLMGeneration.sync_weights`` does in colocate mode: one tensor per call."""
    model = vllm_model(llm)
    for name, tensor in weights.items():
        model.load_weights([(name, tensor)])


def vllm_greedy(llm):
    """``[(tokens, logprobs)]`` per prompt: greedy tokens and their log-probs."""
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    result = []
    for out in outs:
        comp = out.outputs[0]
        result.append((list(comp.token_ids), [lp[t].logprob for t, lp in zip(comp.token_ids, comp.logprobs)]))
    return result


@torch.no_grad()
def hf_greedy(model, tokenizer):
    result = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids                       # [1, P]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)  # [1, P + NEW]
        logp = model(out).logits[0, ids.shape[1] - 1:-1].log_softmax(-1)              # [NEW, V]
        tokens = out[0, ids.shape[1]:]
        result.append((tokens.tolist(), logp.gather(-1, tokens[:, None])[:, 0].tolist()))
    return result


def assert_same(got, want, atol=1e-3):
    for (tokens, logps), (ref_tokens, ref_logps) in zip(got, want, strict=True):
        assert tokens == ref_tokens
        assert torch.allclose(torch.tensor(logps), torch.tensor(ref_logps), atol=atol), (logps, ref_logps)


def perturbed(model, scale=0.05, seed=1):
    """New weights for every parameter (HF names, as TRL sends them; a tied lm_head is sent once)."""
    gen = torch.Generator().manual_seed(seed)
    return {n: p.detach() + scale * torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}


def set_weights(model, weights):
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights[name])


@pytest.fixture(scope="module")
def tied_llama(tiny_llama, tmp_path_factory):
    """The tiny Llama with ``lm_head`` tied to the input embeddings (as SmolLM2)."""
    directory, _, tokenizer = tiny_llama
    config = AutoConfig.from_pretrained(directory)
    config.tie_word_embeddings = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    out = tmp_path_factory.mktemp("tied_llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out), model, tokenizer


def inject(worker_class, extension):
    """vLLM's ``WorkerWrapperBase.__init__`` (vllm 0.32, v1/worker/worker_base.py): how an extension
    joins the process's one worker class."""
    if extension not in worker_class.__bases__:
        for attr in dir(extension):
            if not attr.startswith("__"):
                assert not hasattr(worker_class, attr), attr
        worker_class.__bases__ = worker_class.__bases__ + (extension,)


@pytest.mark.parametrize("order", ["sync_first", "minds_first"])
def test_both_extensions_join_one_worker_class_in_either_order(order):
    """A plain-TRL engine and a population engine can live in one process (a benchmark runs both)."""
    assert issubclass(MindWorkerExtension, RepackAwareWeightLoading)
    assert WEIGHT_SYNC_EXTENSION.rpartition(".")[2] == WeightSyncWorkerExtension.__name__
    assert WORKER_EXTENSION != WEIGHT_SYNC_EXTENSION

    class WorkerBase:
        pass

    class Worker(WorkerBase):
        pass

    extensions = [WeightSyncWorkerExtension, MindWorkerExtension]
    for extension in extensions if order == "sync_first" else extensions[::-1]:
        inject(Worker, extension)
        inject(Worker, extension)  # a second engine with the same extension
    assert issubclass(Worker, MindWorkerExtension) and issubclass(Worker, WeightSyncWorkerExtension)


def test_sync_and_mind_engines_in_one_process(tiny_llama):
    directory, _, _ = tiny_llama
    for extension in (WEIGHT_SYNC_EXTENSION, WORKER_EXTENSION, WEIGHT_SYNC_EXTENSION):
        llm = engine(directory, extension=extension)
        try:
            assert "model.layers.0.self_attn.qkv_proj" in llm.collective_rpc(weight_sync_info)[0]["packed_layers"] \
                or not any(holds_packed_copy(m) for m in vllm_model(llm).modules())
            if extension == WORKER_EXTENSION:
                assert llm.collective_rpc("manyminds_layout")[0]["model"] == "LlamaForCausalLM"
        finally:
            del llm
            gc.collect()


@pytest.mark.parametrize(("kernels", "mode", "tied"), [("vllm", "compiled", False), ("simulated", "eager", False),
                                                        ("vllm", "eager", True), ("simulated", "eager", True)])
def test_weights_sync_into_packed_kernels(kernels, mode, tied, tiny_llama, tied_llama, monkeypatch):
    directory, hf, tokenizer = tied_llama if tied else tiny_llama
    if kernels == "simulated":
        simulate_packing(monkeypatch)
    original = {n: p.detach().clone() for n, p in hf.named_parameters()}
    new = perturbed(hf)
    before = hf_greedy(hf, tokenizer)
    set_weights(hf, new)
    after = hf_greedy(hf, tokenizer)
    set_weights(hf, original)
    assert [t for t, _ in before] != [t for t, _ in after]  # the new weights change the greedy tokens

    # Without the extension: linear layers refuse the weights, the output embedding takes them and ignores them.
    llm = engine(directory)
    try:
        packed = [n for n, m in vllm_model(llm).named_modules() if holds_packed_copy(m)]
        if not packed:
            pytest.skip("vLLM packs no linear layer on this CPU; kernels='simulated' covers the bug here")
        with pytest.raises(AttributeError, match="weight_loader"):
            sync(llm, {"model.layers.0.self_attn.q_proj.weight": new["model.layers.0.self_attn.q_proj.weight"]})
        head = "model.embed_tokens.weight" if tied else "lm_head.weight"
        sync(llm, {head: new[head]})
        module = vllm_model(llm).get_submodule(head.removesuffix(".weight"))
        assert torch.equal(module.weight[: new[head].shape[0]], new[head])  # the weight landed...
        set_weights(hf, {**original, head: new[head]})
        stale = hf_greedy(hf, tokenizer)
        set_weights(hf, original)
        got = vllm_greedy(llm)  # ...but the kernel still computes with the old packed copy
        assert not all(torch.allclose(torch.tensor(a[1]), torch.tensor(b[1]), atol=1e-3) for a, b in zip(got, stale))
    finally:
        del llm
        gc.collect()

    llm = engine(directory, mode, extension=WEIGHT_SYNC_EXTENSION)
    try:
        info = llm.collective_rpc(weight_sync_info)[0]
        assert "model.layers.0.self_attn.qkv_proj" in info["packed_layers"]
        assert_same(vllm_greedy(llm), before)
        sync(llm, new)
        # the padded vocab rows of the output embedding are never sent: it is finished before the next forward
        waiting = llm.collective_rpc(weight_sync_info)[0]["waiting_layers"]
        assert waiting == (["model.embed_tokens"] if tied else ["lm_head", "model.embed_tokens"])
        assert_same(vllm_greedy(llm), after)
        assert llm.collective_rpc(weight_sync_info)[0]["waiting_layers"] == []
        sync(llm, original)  # and again (TRL syncs every step)
        assert llm.collective_rpc(finish_weight_sync)[0] >= 0
        assert_same(vllm_greedy(llm), before)
        # vLLM's own in-place reload (one call, all weights) re-processes one layer of a tied pair; the other follows
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(new.items()), "is_checkpoint_format": True})
        assert_same(vllm_greedy(llm), after)
    finally:
        del llm
        gc.collect()


def test_nothing_to_do_where_vllm_uses_torch_linear(tiny_llama, monkeypatch):
    directory, hf, tokenizer = tiny_llama
    force_torch_fallback(monkeypatch)
    original = {n: p.detach().clone() for n, p in hf.named_parameters()}
    new = perturbed(hf, seed=2)
    llm = engine(directory, extension=WEIGHT_SYNC_EXTENSION)
    try:
        assert llm.collective_rpc(weight_sync_info)[0]["packed_layers"] == []
        sync(llm, new)
        set_weights(hf, new)
        assert_same(vllm_greedy(llm), hf_greedy(hf, tokenizer))
    finally:
        set_weights(hf, original)
        del llm
        gc.collect()


def varied_reward(prompts, completions, **kwargs):
    return [(sum(ord(ch) * (i + 1) for i, ch in enumerate(t)) % 101) / 100 for t in completions]


def test_plain_trl_grpo_with_the_weight_sync_extension_alone(tiny_llama, tmp_path, monkeypatch):
    """The plain-TRL baseline: TRL's colocated engine (its default dtype: bfloat16 on a CPU, where AMX
    machines use the sgl packed kernels) with only the weight-sync extension, no minds. After TRL's
    sync the engine computes exactly what a fresh engine loaded from the trained checkpoint does."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer
    from trl.generation import vllm_generation

    directory, _, tokenizer = tiny_llama
    build_llm = vllm_generation.LLM
    monkeypatch.setattr(vllm_generation, "LLM",
                        lambda *args, **kwargs: build_llm(*args, worker_extension_cls=WEIGHT_SYNC_EXTENSION, **kwargs))
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, max_steps=2, learning_rate=0.1, logging_steps=1, report_to="none",
                      save_strategy="no", use_cpu=True, seed=0, bf16=False, use_vllm=True, vllm_mode="colocate",
                      vllm_max_model_length=128, vllm_enable_sleep_mode=False)
    ds = Dataset.from_dict({"prompt": ["hello world", "once upon a time", "the quick brown", "numbers one"]})
    trainer = GRPOTrainer(model, reward_funcs=varied_reward, args=args, train_dataset=ds, processing_class=tokenizer)
    try:
        llm = trainer.vllm_generation.llm
        dtype = llm.llm_engine.model_config.dtype
        before = vllm_greedy(llm)
        trainer.train()  # TRL syncs the weights before each step's rollouts
        trainer.vllm_generation.sync_weights()  # and the final ones
        synced = vllm_greedy(llm)
        info = llm.collective_rpc(weight_sync_info)[0]
        assert info["reloaded_layers"] >= 3 * len(info["packed_layers"])  # three syncs, every packed layer each time
        trainer.model.save_pretrained(tmp_path / "trained")
        tokenizer.save_pretrained(tmp_path / "trained")
    finally:
        del trainer, llm
        gc.collect()
    assert not all(torch.allclose(torch.tensor(a[1]), torch.tensor(b[1]), atol=1e-3) for a, b in zip(synced, before))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # set by TRL's engine above
        monkeypatch.delenv(name, raising=False)
    fresh = LLM(model=str(tmp_path / "trained"), dtype=dtype, max_model_len=128, max_num_batched_tokens=4096,
                logprobs_mode="processed_logprobs", seed=0)
    try:
        assert_same(synced, vllm_greedy(fresh), atol=1e-5)
    finally:
        del fresh
        gc.collect()
