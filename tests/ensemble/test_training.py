import copy
import math
import os

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from manyminds.tasks import load_task
from manyminds.training import RenyiDPOConfig, RenyiDPOTrainer, RenyiSFTConfig, RenyiSFTTrainer
from manyminds.training.common import COMPLETE_MARKER, last_checkpoint


def _sft_args(tmp_path, **kw):
    base = {"output_dir": str(tmp_path), "num_members": 2, "r": 4, "alpha": 0.8, "max_steps": 3,
                "per_device_train_batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1,
                "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "seed": 0}
    base.update(kw)
    return RenyiSFTConfig(**base)


def _lora_state(trainer):
    return {n: p.detach().clone() for n, p in trainer.ensemble.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("routing", ["sequence", "token"])
def test_sft_high_lr_changes_every_member_param(char_qwen2, char_tokenizer, tmp_path, routing):
    base = {n: p.detach().clone() for n, p in char_qwen2.named_parameters()}
    trainer = RenyiSFTTrainer(char_qwen2, _sft_args(tmp_path, routing=routing),
                              train_dataset=load_task("conflict", n=16), processing_class=char_tokenizer)
    before = _lora_state(trainer)
    trainer.train()
    after = _lora_state(trainer)
    for name, value in before.items():
        # every member's slice of every tensor moved
        changed = (after[name] - value).flatten(1).abs().amax(1) > 0
        assert changed.all(), name
    for name, p in char_qwen2.named_parameters():   # the base is frozen (members wrap its layers)
        if ".lora_" not in name:
            assert torch.equal(p, base[name.replace(".base_layer", "")]), name
    logs = trainer.state.log_history[0]
    for key in ("loss", "grad_norm", "learning_rate", "responsibility_entropy", "effective_members",
                "member_0/nll", "member_1/nll", "member_0/route_share", "member_1/responsibility"):
        assert key in logs, key
    # step 1 ran on the initial members, all equal to the base (init="peft": B = 0), so every
    # responsibility is exactly 1/2: two effective members, entropy log 2
    assert logs["effective_members"] == pytest.approx(2.0, rel=1e-6)
    assert logs["responsibility_entropy"] == pytest.approx(math.log(2), rel=1e-6)


def test_sft_loss_decreases(char_qwen2, char_tokenizer, tmp_path):
    data = load_task("conflict", n=8)
    trainer = RenyiSFTTrainer(char_qwen2, _sft_args(tmp_path, max_steps=8, learning_rate=2e-2,
                                                    per_device_train_batch_size=8, lr_scheduler_type="constant",
                                                    target_modules=["q_proj", "v_proj", "lm_head"]),
                              train_dataset=data, processing_class=char_tokenizer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert losses[-1] < losses[0]


class _Kill(TrainerCallback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("killed")


def test_killed_run_resumes_with_nothing_lost(char_qwen2, char_tokenizer, tmp_path):
    data = load_task("conflict", n=24)
    kw = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3, "per_device_train_batch_size": 4}
    full = RenyiSFTTrainer(copy.deepcopy(char_qwen2), _sft_args(tmp_path / "full", **kw),
                           train_dataset=data, processing_class=char_tokenizer)
    full.train()
    killed = RenyiSFTTrainer(copy.deepcopy(char_qwen2), _sft_args(tmp_path / "run", **kw),
                             train_dataset=data, processing_class=char_tokenizer, callbacks=[_Kill(4)])
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    ckpt = last_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.endswith("checkpoint-3")
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json", "members"} <= set(os.listdir(ckpt))
    assert os.path.exists(os.path.join(ckpt, "members", "member_1", "adapter_model.safetensors"))
    resumed = RenyiSFTTrainer(copy.deepcopy(char_qwen2), _sft_args(tmp_path / "run", **kw),
                              train_dataset=data, processing_class=char_tokenizer)
    resumed.train(resume_from_checkpoint=ckpt)
    a, b = _lora_state(full), _lora_state(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_checkpoint_is_atomic(char_qwen2, char_tokenizer, tmp_path, monkeypatch):
    data = load_task("conflict", n=16)
    trainer = RenyiSFTTrainer(char_qwen2, _sft_args(tmp_path, max_steps=4, save_strategy="steps",
                                                    save_steps=2),
                              train_dataset=data, processing_class=char_tokenizer)
    real = trainer.ensemble.save_members
    calls = {"n": 0}

    def flaky(directory):
        calls["n"] += 1
        if calls["n"] == 2:   # crash in the middle of writing the second checkpoint
            real(directory)
            raise OSError("disk full")
        return real(directory)

    monkeypatch.setattr(trainer.ensemble, "save_members", flaky)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    # the half-written checkpoint-4 has no completion marker: resume never picks it
    assert not os.path.exists(os.path.join(tmp_path, "checkpoint-4", COMPLETE_MARKER))
    assert last_checkpoint(tmp_path).endswith("checkpoint-2")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        trainer.train(resume_from_checkpoint=os.path.join(tmp_path, "checkpoint-4"))
    # a full save completes it
    monkeypatch.setattr(trainer.ensemble, "save_members", real)
    trainer.train(resume_from_checkpoint=True)
    assert last_checkpoint(tmp_path).endswith("checkpoint-4")


def test_dpo_reference_is_base_and_members_train(char_tokenizer, tmp_path):
    from manyminds.zoo.charlm import VOCAB_SIZE
    from manyminds.zoo.models import random_model

    model = random_model("gpt2", vocab_size=VOCAB_SIZE)
    args = RenyiDPOConfig(output_dir=str(tmp_path), num_members=2, r=4, max_steps=3, beta=0.5,
                          per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1,
                          save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = RenyiDPOTrainer(model, args, train_dataset=load_task("prefs", n=12),
                              processing_class=char_tokenizer)
    before = _lora_state(trainer)
    trainer.train()
    first = trainer.state.log_history[0]
    # members start as the base, so the policy equals the reference: margin 0, loss log 2
    assert first["rewards/margin"] == pytest.approx(0.0, abs=1e-6)
    assert first["member_0/nll"] == pytest.approx(0.693147, abs=1e-5)
    assert first["member_0/route_share"] == pytest.approx(0.5)   # tied responsibilities are shared
    after = _lora_state(trainer)
    assert all((after[n] - before[n]).flatten(1).abs().amax(1).gt(0).all() for n in before)


def test_missing_columns_are_named(char_qwen2, char_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="missing column 'completion'"):
        RenyiSFTTrainer(char_qwen2, _sft_args(tmp_path), processing_class=char_tokenizer,
                        train_dataset=Dataset.from_dict({"prompt": ["a"], "answer": ["b"]}))
    args = RenyiDPOConfig(output_dir=str(tmp_path), use_cpu=True, num_members=2)
    with pytest.raises(ValueError, match="missing column 'rejected'"):
        RenyiDPOTrainer(char_qwen2, args, processing_class=char_tokenizer,
                        train_dataset=Dataset.from_dict({"prompt": ["a"], "chosen": ["b"]}))


def test_text_column_is_accepted(char_qwen2, char_tokenizer, tmp_path):
    data = Dataset.from_dict({"text": ["Q: 1+1\nA: 2", "Q: 2+2\nA: 4"]})
    trainer = RenyiSFTTrainer(char_qwen2, _sft_args(tmp_path, max_steps=1), train_dataset=data,
                              processing_class=char_tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("kwargs, message", [({"alpha": 1.5}, "alpha"), ({"num_members": 0}, "num_members"),
                                             ({"r": 0}, "rank"), ({"routing": "word"}, "routing")])
def test_bad_config(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _sft_args(tmp_path, **kwargs)


def test_evaluate_reports_loss_and_routing(char_qwen2, char_tokenizer, tmp_path):
    trainer = RenyiSFTTrainer(char_qwen2, _sft_args(tmp_path, per_device_eval_batch_size=4,
                                                    prediction_loss_only=True),
                              train_dataset=load_task("conflict", n=4),
                              eval_dataset=load_task("conflict", split="test", n=4),
                              processing_class=char_tokenizer)
    metrics = trainer.evaluate()
    # untrained members all equal the base (init="peft": B = 0), so for any alpha the Renyi loss is the
    # base's NLL of each completion (summed over its tokens), averaged, plus the Gaussian prior
    # (default lambda = 1e-4, sigma_p = 1) of the A factors
    ens = trainer.ensemble
    batch = trainer.data_collator(list(trainer.eval_dataset))
    with torch.no_grad(), ens.disabled():
        logits = ens(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logq = logits[:, :-1].double().log_softmax(-1)
    nll = -(logq.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1) * batch["completion_mask"][:, 1:]).sum(-1)
    prior = 1e-4 * sum(p.double().pow(2).sum() for p in ens.lora_parameters()) / 2
    assert metrics["eval_loss"] == pytest.approx((nll.mean() + prior).item(), rel=1e-5)
    logged = trainer.state.log_history[-1]
    assert "eval_effective_members" in logged and "eval_member_1/nll" in logged


def test_conversational_columns(char_qwen2, char_tokenizer, tmp_path):
    from manyminds.training.sft import prepare_sft_dataset

    char_tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                                    "{% if add_generation_prompt %}assistant: {% endif %}")
    data = Dataset.from_dict({"messages": [[{"role": "user", "content": "1+1"},
                                            {"role": "assistant", "content": "2"}]]})
    enc = prepare_sft_dataset(data, char_tokenizer, None)[0]
    completion = [t for t, m in zip(enc["input_ids"], enc["completion_mask"]) if m]
    assert char_tokenizer.decode(completion, skip_special_tokens=True) == "2\n"
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": "1+1"}]],
                              "completion": [[{"role": "assistant", "content": "2"}]]})
    enc2 = prepare_sft_dataset(data, char_tokenizer, None)[0]
    assert enc2 == {**enc2, "input_ids": enc["input_ids"], "completion_mask": enc["completion_mask"]}
