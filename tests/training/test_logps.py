"""Selected-token log-probs without a float32 copy of the logits, and logits only where needed.

* :func:`selected_log_probs` / :func:`sequence_token_logps` against a float64 reference, values
  and gradients, for float32 and bfloat16 logits and block sizes from one position to all rows;
* what autograd keeps for the backward: the old ``logits.float()`` path saves a float32 copy of
  all logits, ours only the logits themselves plus ``[N, T-1]`` statistics;
* ``logits_to_keep`` in the SFT/DPO trainers: the same loss, gradients and metrics as scoring the
  full logits, while the logits really are cut to the completion span.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from manyminds.rows import completion_logits_to_keep, selected_log_probs, sequence_token_logps
from manyminds.training import RenyiDPOConfig, RenyiDPOTrainer, RenyiSFTConfig, RenyiSFTTrainer
from manyminds.training import dpo as dpo_module
from manyminds.training import sft as sft_module
from manyminds.training.common import completion_logits_kwargs, model_accepts_logits_to_keep


def _naive_token_logps(logits, input_ids):
    """The implementation before this change: a float32 copy of all logits."""
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:]
    return torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def _reference(logits, input_ids):
    """float64 ``log_softmax`` then gather: ``[N, T, V], [N, T] -> [N, T-1]``."""
    logq = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    return logq.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def _inputs(dtype, N=3, T=9, V=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (4.0 * torch.randn(N, T, V, generator=g)).to(dtype)
    ids = torch.randint(0, V, (N, T), generator=g)
    return logits, ids


# block sizes: one position per block, a few positions, exactly one row's worth, two rows, all
BLOCKS = [1, 5 * 37, 8 * 37, 16 * 37, 1 << 24]


@pytest.mark.parametrize("block_elements", BLOCKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_match_float64_reference(dtype, block_elements):
    logits, ids = _inputs(dtype)
    ref = _reference(logits, ids)
    # the tolerance below is tight enough to see a low-precision computation (bf16 log_softmax)
    low_precision = torch.log_softmax(logits[:, :-1].bfloat16(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert (low_precision.double() - ref).abs().max() > 1e-3
    out = sequence_token_logps(logits, ids, block_elements=block_elements)
    assert out.shape == (3, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(out, _naive_token_logps(logits, ids), rtol=0, atol=2e-6)


@pytest.mark.parametrize("block_elements", BLOCKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_reference(dtype, block_elements):
    logits, ids = _inputs(dtype)
    weights = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    x64 = logits.double().requires_grad_()
    (_reference(x64, ids) * weights.double()).sum().backward()
    x = logits.clone().requires_grad_()
    (sequence_token_logps(x, ids, block_elements=block_elements) * weights).sum().backward()
    assert x.grad.dtype == dtype
    assert torch.equal(x.grad[:, -1], torch.zeros_like(x.grad[:, -1]))   # last position unused
    # the gradient is rounded to the logits' dtype, as autograd does for the old .float() path
    x_naive = logits.clone().requires_grad_()
    (_naive_token_logps(x_naive, ids) * weights).sum().backward()
    atol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=0, atol=atol)
    torch.testing.assert_close(x.grad, x_naive.grad, rtol=0, atol=atol)


def test_gradcheck_float64():
    logits, ids = _inputs(torch.float64, N=2, T=5, V=6)
    x = logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: selected_log_probs(z, ids[:, 1:], block_elements=7), (x,))


def _saved_bytes(fn, logits, ids) -> list[int]:
    """Bytes of every tensor autograd saves for the backward of ``fn(logits, ids).sum()``."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    x = logits.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, ids).sum()
    return sizes


def test_no_float32_copy_of_the_logits_is_kept_for_backward():
    logits, ids = _inputs(torch.bfloat16, N=4, T=16, V=64)
    full_float32 = logits[:, :-1].numel() * 4
    naive = _saved_bytes(_naive_token_logps, logits, ids)
    assert max(naive) >= full_float32                  # the old path keeps a float32 copy
    ours = _saved_bytes(sequence_token_logps, logits, ids)
    assert max(ours) == logits.numel() * logits.element_size()      # the bf16 logits themselves
    assert sum(ours) < logits.numel() * logits.element_size() + 4 * 16 * 8 * 2


def test_bad_shapes_name_the_fix():
    logits, ids = _inputs(torch.float32)
    with pytest.raises(ValueError, match=r"logits \[N, T, V\] and index \[N, L<=T\]"):
        selected_log_probs(logits, ids[:, :3].repeat(1, 4))
    with pytest.raises(ValueError, match="must match the logits"):
        sequence_token_logps(logits, ids[:2])
    with pytest.raises(ValueError, match="block_elements must be >= 1"):
        selected_log_probs(logits, ids, block_elements=0)


def test_completion_logits_to_keep():
    right = torch.tensor([[0, 0, 0, 1, 1, 0, 0],      # completion from position 3
                          [0, 0, 0, 0, 1, 1, 1]])     # right-padded rows
    assert completion_logits_to_keep(right) == 7 - 3 + 1
    left = torch.tensor([[0, 0, 0, 0, 0, 1, 1],
                         [0, 0, 0, 0, 1, 1, 1]])      # left-padded rows
    assert completion_logits_to_keep(left) == 7 - 4 + 1
    text = torch.tensor([[1, 1, 1, 1]])               # no prompt: position 0 is never predicted
    assert completion_logits_to_keep(text) == 4
    assert completion_logits_to_keep(torch.zeros(2, 5, dtype=torch.long)) == 5


def test_completion_logits_kwargs_only_for_models_that_take_it(char_qwen2):
    comp = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    assert model_accepts_logits_to_keep(char_qwen2)
    assert completion_logits_kwargs(char_qwen2, comp) == (5, {"logits_to_keep": 5})
    assert completion_logits_kwargs(torch.nn.Linear(2, 2), comp) == (6, {})


# --------------------------------------------------------------------- trainers
PROMPTS = ["Q: 12+345\nA:", "Q: 7+8+9+10\nA:", "Q: 1+2+3+4+5+6\nA:", "Q: 99+1\nA:"]


def _no_trim(model, completion_mask):
    return completion_mask.shape[1], {}


def _loss_grads_metrics(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    trainer._init_metrics()
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[0] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics, outputs.logits.shape[1]


def _compare_trimmed_to_full(trainer, batch, module, monkeypatch):
    T = batch["input_ids"].shape[1]
    loss, grads, metrics, kept = _loss_grads_metrics(trainer, batch)
    with monkeypatch.context() as m:
        m.setattr(module, "completion_logits_kwargs", _no_trim)
        full_loss, full_grads, full_metrics, full_kept = _loss_grads_metrics(trainer, batch)
    assert full_kept == T and kept < T - 5          # the prompt's logits were really cut
    assert grads and grads.keys() == full_grads.keys()
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-6)
    for name, g in grads.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(g, full_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert metrics.keys() == full_metrics.keys()
    for key, value in metrics.items():
        assert value == pytest.approx(full_metrics[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("routing", ["sequence", "token"])
def test_sft_logits_to_keep_is_exact(char_qwen2, char_tokenizer, tmp_path, routing, monkeypatch):
    data = Dataset.from_dict({"prompt": PROMPTS, "completion": [" 357", " 34 done", " 21", " 100 ok!"]})
    args = RenyiSFTConfig(output_dir=str(tmp_path), num_members=2, r=4, init="diverse", init_std=0.1,
                          routing=routing, use_cpu=True, report_to="none", seed=0)
    trainer = RenyiSFTTrainer(char_qwen2, args, train_dataset=data, processing_class=char_tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(data))])
    assert batch["completion_mask"][:, -1].min() == 0          # right padding inside the batch
    _compare_trimmed_to_full(trainer, batch, sft_module, monkeypatch)


def test_dpo_logits_to_keep_is_exact(char_qwen2, char_tokenizer, tmp_path, monkeypatch):
    data = Dataset.from_dict({"prompt": PROMPTS, "chosen": [" 357", " 34", " 21", " 100"],
                              "rejected": ["356 no", "33", "20 or so", "10"]})   # differ at token 1
    args = RenyiDPOConfig(output_dir=str(tmp_path), num_members=2, r=4, init="diverse", init_std=0.1,
                          use_cpu=True, report_to="none", seed=0)
    trainer = RenyiDPOTrainer(char_qwen2, args, train_dataset=data, processing_class=char_tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(data))])
    _compare_trimmed_to_full(trainer, batch, dpo_module, monkeypatch)
