"""critical_alpha on a model: which parameters, which errors, and an output layer against its
closed form."""

import pytest
import torch

from manyminds.ensemble import EnsembleLoRA
from manyminds.ensemble.stability import CurvatureError
from manyminds.tasks import load_task
from manyminds.training.critical import critical_alpha
from manyminds.zoo.charlm import VOCAB_SIZE
from manyminds.zoo.models import random_model


def test_refuses_what_is_not_one_adapter(char_tokenizer):
    ds = load_task("arith", n=4)
    with pytest.raises(ValueError, match="no trainable parameters.*LoraConfig"):
        critical_alpha(random_model("llama", vocab_size=VOCAB_SIZE).requires_grad_(False), char_tokenizer, ds)
    ens = EnsembleLoRA(random_model("llama", vocab_size=VOCAB_SIZE), num_members=2, r=2)
    with pytest.raises(ValueError, match="single solution.*K=2"):
        critical_alpha(ens, char_tokenizer, ds)


def _closed_form_v_j(model, tokenizer, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``V`` and ``J`` ``[P, P]`` (P = vocab * hidden) of the output layer W
    ``[vocab, hidden]``, in closed form and float64, no autograd: with h_t the input of the output
    layer at position t, p_t = softmax(W h_t) and y the next token, summed over the completion
    tokens of one example,

        grad l = sum_t (e_y - p_t) h_t^T          (row-major flattening of W)
        Hess l = -sum_t (diag p_t - p_t p_t^T) kron h_t h_t^T
    """
    head = model.get_output_embeddings()
    W = head.weight.detach().double()                                      # [vocab, hidden]
    seen = []
    hook = head.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    grads, hessians = [], []
    try:
        for row in rows:
            prompt = tokenizer(row["prompt"]).input_ids
            ids = tokenizer(row["prompt"] + row["completion"]).input_ids + [tokenizer.eos_token_id]
            seen.clear()
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0]  # [T, vocab]
            h = seen[0][0].double()                                        # [T, hidden]
            torch.testing.assert_close(h @ W.T, logits.double(), rtol=0, atol=1e-5)  # what W sees
            h = h[len(prompt) - 1:-1]                     # [C, hidden]: predicting the completion
            p = (h @ W.T).softmax(-1)                                      # [C, vocab]
            e = torch.nn.functional.one_hot(torch.tensor(ids[len(prompt):]), len(W)).double()
            grads.append(((e - p).T @ h).reshape(-1))                      # [P]
            curvature = [torch.kron(torch.diag(pt) - torch.outer(pt, pt), torch.outer(ht, ht))
                         for pt, ht in zip(p, h)]                          # [P, P] per position
            hessians.append(-sum(curvature))
    finally:
        hook.remove()
    g = torch.stack(grads)                                                 # [N, P]
    return -torch.stack(hessians).mean(0), g.T @ g / len(rows)


def test_output_layer_matches_the_closed_form(char_tokenizer):
    """Only the output layer is trainable: the NLL is convex in it at any point (V is positive
    semi-definite; the damping lifts the flat directions W -> W + 1 c^T), and V and J have a closed
    form. alpha* from critical_alpha must match the top eigenvalue of S^{-1/2} J S^{-1/2},
    S = V + damping I, on the same rows (the first 3 of 12: max_examples). Hidden size 8 keeps
    P = 128 * 8 = 1024 small enough for dense matrices. S has condition number ~5 and the top two
    eigenvalues differ 3x, so CG and power iteration converge in a few steps; the float32 model
    leaves ~1e-7 (measured 2e-8 relative), hence rel = 1e-5."""
    model = random_model("llama", vocab_size=VOCAB_SIZE, seed=0, hidden_size=8,
                         intermediate_size=16, num_attention_heads=2, num_key_value_heads=1)
    model.requires_grad_(False)
    head = model.get_output_embeddings().weight
    head.requires_grad_(True)
    ds = load_task("conflict", n=12, seed=0)
    damping = 0.1
    res = critical_alpha(model, char_tokenizer, ds, max_examples=3, damping=damping, iters=30,
                         cg_iters=100, tol=1e-7, batch_size=3)
    V, J = _closed_form_v_j(model, char_tokenizer, ds.select(range(3)))
    w, Q = torch.linalg.eigh(V + damping * torch.eye(len(V), dtype=V.dtype))
    s_inv_half = Q @ torch.diag(w.rsqrt()) @ Q.T
    expected = float(torch.linalg.eigvalsh(s_inv_half @ J @ s_inv_half)[-1])
    # V matters here: with V = I the top eigenvalue would be ~3x lower
    v_is_identity = float(torch.linalg.eigvalsh(J)[-1]) / (1 + damping)
    assert expected != pytest.approx(v_is_identity, rel=0.5)
    assert res.converged and res.lambda_max == pytest.approx(expected, rel=1e-5)
    assert res.alpha_star == pytest.approx(1 / expected, rel=1e-5)
    assert res.num_examples == 3 and res.num_params == head.numel() == 1024


def test_an_untrained_lora_is_not_at_a_minimum(char_tokenizer):
    from peft import LoraConfig, get_peft_model

    ds = load_task("conflict", n=12, seed=0)
    lora = get_peft_model(random_model("llama", vocab_size=VOCAB_SIZE, seed=1),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with pytest.raises(CurvatureError, match="not at a minimum"):
        critical_alpha(lora, char_tokenizer, ds, damping=1e-3, iters=3)
