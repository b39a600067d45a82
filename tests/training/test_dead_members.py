"""Dead members: detection, the warning and metric, re-initialisation from a living member, the alpha
warm-up, and the settings' checks."""

import logging

import pytest
import torch

from manyminds.zoo.charlm import VOCAB_SIZE
from manyminds.ensemble import EnsembleLoRA
from manyminds.zoo.models import random_model
from manyminds.tasks import load_task
from manyminds.training import RenyiSFTConfig, RenyiSFTTrainer
from manyminds.training.callbacks import DeadMemberMonitor, reinit_member

TARGETS = ["q_proj", "v_proj", "lm_head"]


def _args(tmp_path, **kw):
    base = {"output_dir": str(tmp_path), "num_members": 2, "r": 2, "lora_alpha": 4, "target_modules": TARGETS,
            "alpha": 1.0, "max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 1e-6,
            "lr_scheduler_type": "constant", "logging_steps": 1, "save_strategy": "no", "use_cpu": True,
            "disable_tqdm": True, "seed": 0, "dead_member_share": 0.05, "dead_member_patience": 2}
    base.update(kw)
    return RenyiSFTConfig(**base)


def _ensemble_with_a_dead_member():
    """K=2 on a tiny random Qwen2: member 0 is the base (B = 0), member 1 adds large random logits
    (a large B on lm_head), so its completions are far less likely and its responsibility
    (alpha = 1) is ~0 on every example."""
    ens = EnsembleLoRA(random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0), num_members=2, r=2, lora_alpha=4,
                       target_modules=TARGETS, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        head = ens.lora_layers["lm_head"]
        head.lora_B[1].copy_(torch.randn(head.lora_B[1].shape, generator=g) * 5.0)
    return ens


def _column(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


def test_monitor_counts_consecutive_windows():
    mon = DeadMemberMonitor(3, share=0.1, patience=2)
    assert mon.update([0.5, 0.45, 0.05]) == ([], [])
    assert mon.update([0.5, 0.45, 0.05]) == ([2], [2])          # second window in a row: dead, once
    assert mon.update([0.5, 0.45, 0.05]) == ([2], [])
    assert mon.update([0.5, 0.2, 0.3]) == ([], [])              # a window above resets the count
    with pytest.raises(ValueError, match="expected 3 shares"):
        mon.update([0.5, 0.5])


def test_warns_and_logs_a_dead_member(char_tokenizer, tmp_path, caplog):
    trainer = RenyiSFTTrainer(_ensemble_with_a_dead_member(), _args(tmp_path), train_dataset=load_task("arith", n=16),
                              processing_class=char_tokenizer)
    with caplog.at_level(logging.WARNING, logger="manyminds.training.common"):
        trainer.train()
    shares = _column(trainer, "member_1/responsibility")
    assert max(shares) < 0.05                                     # it is dead, and stays dead
    assert _column(trainer, "dead_members") == [0, 1, 1, 1, 1, 1]  # dead from the 2nd window on
    assert _column(trainer, "member_reinits") == [0] * 6
    warnings = [r.message for r in caplog.records if "member 1 is dead" in r.message]
    assert len(warnings) == 1 and "dead_member_action='reinit'" in warnings[0]


def test_reinit_revives_the_dead_member(char_tokenizer, tmp_path):
    trainer = RenyiSFTTrainer(_ensemble_with_a_dead_member(), _args(tmp_path, dead_member_action="reinit"),
                              train_dataset=load_task("arith", n=16), processing_class=char_tokenizer)
    trainer.train()
    shares = _column(trainer, "member_1/responsibility")
    assert max(shares[:2]) < 0.05                                 # dead for two windows ...
    assert min(shares[2:]) > 0.3                                  # ... then alive: a near copy of member 0
    assert _column(trainer, "member_reinits") == [0, 1, 1, 1, 1, 1]
    assert _column(trainer, "dead_members") == [0, 0, 0, 0, 0, 0]
    for layer in trainer.ensemble.lora_layers.values():             # close to member 0, not equal
        assert not torch.equal(layer.lora_A[1], layer.lora_A[0])
        torch.testing.assert_close(layer.lora_A[1], layer.lora_A[0], atol=0.05, rtol=0)


def test_reinit_member_copies_the_donor_and_its_optimizer_state():
    ens = EnsembleLoRA(random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0), num_members=3, r=2,
                       target_modules=TARGETS, init="diverse", init_std=0.1, seed=0)
    params = list(ens.lora_parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    sum(p.pow(2).sum() * (i + 1) for i, p in enumerate(params)).backward()
    opt.step()
    before = [p.detach().clone() for p in params]
    reinit_member(ens, dead=2, donor=0, noise=0.01, generator=torch.Generator().manual_seed(0), optimizer=opt)
    for p, old in zip(params, before):
        assert torch.equal(p[0], old[0]) and torch.equal(p[1], old[1])       # donor and others untouched
        rel = ((p[2] - p[0]).pow(2).mean().sqrt() / p[0].pow(2).mean().sqrt()).detach()
        assert 0.005 < float(rel) < 0.02                                      # noise of 1% of the RMS
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key][2], opt.state[p][key][0])
    with pytest.raises(ValueError, match="two different members"):
        reinit_member(ens, dead=1, donor=1, noise=0.0, generator=torch.Generator())


def test_alpha_warmup_schedule_and_effect(char_qwen2, char_tokenizer, tmp_path):
    data = load_task("conflict", n=16)
    warm = RenyiSFTTrainer(char_qwen2, _args(tmp_path / "w", alpha=0.8, alpha_warmup_steps=4, learning_rate=1e-2,
                                             init="diverse", init_std=0.1),
                           train_dataset=data, processing_class=char_tokenizer)
    warm.train()
    # step s trains at global_step s-1: alpha = 0.8 * min(1, (s-1)/4)
    assert _column(warm, "alpha") == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.8])
    assert _column(warm, "member_0/responsibility")[0] == pytest.approx(0.5)   # alpha = 0: uniform
    plain = RenyiSFTTrainer(random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0),
                            _args(tmp_path / "p", alpha=0.8, learning_rate=1e-2, init="diverse", init_std=0.1),
                            train_dataset=data, processing_class=char_tokenizer)
    plain.train()
    assert "alpha" not in plain.state.log_history[0]
    assert _column(plain, "member_0/responsibility")[0] != pytest.approx(0.5)
    a = torch.cat([p.flatten() for p in warm.ensemble.lora_parameters()])
    b = torch.cat([p.flatten() for p in plain.ensemble.lora_parameters()])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kw, match", [
    ({"dead_member_share": 0.5}, "dead_member_share must be in"),
    ({"dead_member_share": -0.1}, "dead_member_share must be in"),
    ({"dead_member_patience": 0}, "dead_member_patience must be >= 1"),
    ({"dead_member_action": "revive"}, "dead_member_action must be 'warn' or 'reinit'"),
    ({"dead_member_action": "reinit", "num_members": 1}, "needs num_members >= 2"),
    ({"alpha_warmup_steps": -1}, "alpha_warmup_steps must be >= 0"),
    ({"reinit_noise": -1.0}, "reinit_noise must be >= 0"),
])
def test_bad_settings_say_what_to_pass(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **kw)
