"""alpha* at one member of a K > 1 ensemble, and the callback that logs it during Renyi training."""

import pytest
import torch

from manyminds.ensemble import EnsembleLoRA
from manyminds.tasks import load_task
from manyminds.training import CriticalAlphaCallback, RenyiSFTConfig, RenyiSFTTrainer
from manyminds.training.critical import critical_alpha, describe
from manyminds.zoo.charlm import VOCAB_SIZE
from manyminds.zoo.models import random_model

# a large damping makes V + damping positive definite at any point, so the estimate is defined even
# for untrained members; what is compared here is the subspace restriction, not the value itself
SETTINGS = {"damping": 30.0, "iters": 6, "cg_iters": 8, "tol": 1e-12, "batch_size": 4}


def _ensemble(K, seed=0):
    model = random_model("llama", vocab_size=VOCAB_SIZE, seed=0).double()
    return EnsembleLoRA(model, num_members=K, r=1, lora_alpha=2, target_modules=["v_proj"], init="diverse",
                        init_std=0.3, seed=seed)


def test_member_of_an_ensemble_equals_the_same_adapter_alone(char_tokenizer):
    """alpha* of member 1 of a K=2 ensemble = alpha* of a K=1 ensemble holding member 1's tensors;
    member 0 (other tensors) gives a different value, so the comparison is not trivial."""
    ds = load_task("conflict", n=4, seed=0)
    pair = _ensemble(2)
    single = _ensemble(1)
    with torch.no_grad():
        for name, layer in pair.lora_layers.items():
            single.lora_layers[name].lora_A[0].copy_(layer.lora_A[1])
            single.lora_layers[name].lora_B[0].copy_(layer.lora_B[1])
    m0 = critical_alpha(pair, char_tokenizer, ds, member=0, **SETTINGS)
    m1 = critical_alpha(pair, char_tokenizer, ds, member=1, **SETTINGS)
    alone = critical_alpha(single, char_tokenizer, ds, **SETTINGS)
    assert m0.lambda_max != pytest.approx(alone.lambda_max, rel=1e-2)
    assert m1.lambda_max == pytest.approx(alone.lambda_max, rel=1e-5)
    assert m1.num_params == alone.num_params == sum(p.numel() for p in single.lora_parameters())
    with pytest.raises(ValueError, match="member must be in"):
        critical_alpha(pair, char_tokenizer, ds, member=2)
    with pytest.raises(ValueError, match="member=k to view member k"):
        critical_alpha(pair, char_tokenizer, ds)


def test_describe_says_which_side_of_alpha_star():
    from manyminds.ensemble.stability import CriticalAlpha

    res = CriticalAlpha(alpha_star=0.5, lambda_max=2.0, iterations=3, converged=True, damping=0.01,
                        num_examples=8, num_params=10)
    assert "spreading pays" in describe(res, 0.8)
    assert "stable" in describe(res, 0.3)
    assert "alpha > 0.5" in describe(res)


def _args(tmp_path, **kw):
    base = {"output_dir": str(tmp_path), "num_members": 2, "r": 1, "lora_alpha": 2, "target_modules": ["v_proj"],
            "alpha": 0.8, "max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-2,
            "logging_steps": 2, "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "seed": 0,
            "init": "diverse", "init_std": 0.3}
    base.update(kw)
    return RenyiSFTConfig(**base)


def test_callback_logs_alpha_star_and_does_not_change_training(char_tokenizer, tmp_path):
    data = load_task("conflict", n=16, seed=0)
    plain = RenyiSFTTrainer(random_model("llama", vocab_size=VOCAB_SIZE, seed=0), _args(tmp_path / "a"),
                            train_dataset=data, processing_class=char_tokenizer)
    plain.train()
    callback = CriticalAlphaCallback(data, char_tokenizer, every=2, members=(0, 1), max_examples=4, damping=30.0,
                                     iters=2, cg_iters=3)
    watched = RenyiSFTTrainer(random_model("llama", vocab_size=VOCAB_SIZE, seed=0), _args(tmp_path / "b"),
                              train_dataset=data, processing_class=char_tokenizer, callbacks=[callback])
    watched.train()
    for a, b in zip(plain.ensemble.lora_parameters(), watched.ensemble.lora_parameters()):
        assert torch.equal(a, b)                       # bit-identical members with and without it
    assert not any(torch.equal(p, torch.zeros_like(p)) for p in plain.ensemble.lora_parameters())
    logged = [h for h in watched.state.log_history if "member_0/alpha_star" in h]
    assert [h["step"] for h in logged] == [2, 4]
    # at the last step the members are the final ones: a fresh estimate there gives the logged
    # numbers (damping 30 makes V + damping positive definite: no NaN); two steps before they differ
    settings = {"max_examples": 4, "damping": 30.0, "iters": 2, "cg_iters": 3, "tol": 1e-3}
    final = [critical_alpha(watched.ensemble, char_tokenizer, data, member=k, **settings)
             for k in (0, 1)]
    assert final[0].lambda_max != pytest.approx(final[1].lambda_max, rel=1e-3)
    assert [h["critical_alpha/indefinite"] for h in logged] == [0.0, 0.0]
    for k in (0, 1):
        assert logged[-1][f"member_{k}/lambda_max"] == pytest.approx(final[k].lambda_max, rel=1e-9)
        assert logged[-1][f"member_{k}/alpha_star"] == pytest.approx(final[k].alpha_star, rel=1e-9)
        assert logged[0][f"member_{k}/lambda_max"] != pytest.approx(final[k].lambda_max, rel=1e-4)
    assert [r.lambda_max for _, _, r in callback.history] == [h[f"member_{k}/lambda_max"]
                                                               for h in logged for k in (0, 1)]
    assert [(s, k) for s, k, _ in callback.history] == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert "member_0/alpha_star" not in plain.state.log_history[0]
    with pytest.raises(ValueError, match="every must be >= 1"):
        CriticalAlphaCallback(data, char_tokenizer, every=0)
