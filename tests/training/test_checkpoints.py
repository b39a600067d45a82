"""Checkpoints of the Renyi trainers: transformers' own checkpointing, best-model loading, and a
completion marker so that resume never picks a half-written ``checkpoint-N``."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from manyminds.tasks import load_task
from manyminds.training import RenyiSFTConfig, RenyiSFTTrainer
from manyminds.training.common import COMPLETE_MARKER, MEMBERS_DIR, last_checkpoint


def _args(tmp_path, **kw):
    base = {"output_dir": str(tmp_path), "num_members": 2, "r": 4, "alpha": 0.8, "max_steps": 4,
            "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "learning_rate": 5e-2,
            "logging_steps": 1, "save_strategy": "steps", "save_steps": 2, "use_cpu": True,
            "disable_tqdm": True, "seed": 0, "lr_scheduler_type": "constant"}
    base.update(kw)
    return RenyiSFTConfig(**base)


def _members_on_disk(checkpoint: str, num_members: int) -> list[dict[str, torch.Tensor]]:
    return [load_file(os.path.join(checkpoint, MEMBERS_DIR, f"member_{k}", "adapter_model.safetensors"))
            for k in range(num_members)]


def _members_in_memory(trainer) -> list[dict[str, torch.Tensor]]:
    return [{n: t.detach().cpu().clone() for n, t in trainer.ensemble.member_state_dict(k).items()}
            for k in range(trainer.ensemble.num_members)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(x.keys() == y.keys() and all(torch.equal(x[n], y[n]) for n in x) for x, y in zip(a, b))


class _SnapshotAtLastStep(TrainerCallback):
    """The members as trained, before ``load_best_model_at_end`` swaps them."""

    def __init__(self, trainer):
        self.trainer, self.members = trainer, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps:
            self.members = _members_in_memory(self.trainer)


@pytest.mark.parametrize("metric", ["loss", "eval_loss"])
def test_load_best_model_at_end_with_save_total_limit_one(char_qwen2, char_tokenizer, tmp_path, metric):
    # greater_is_better=True on a falling loss: the best checkpoint is the first, not the last one,
    # so loading it is visible in the parameters.
    args = _args(tmp_path, eval_strategy="steps", eval_steps=2, load_best_model_at_end=True,
                 save_total_limit=1, metric_for_best_model=metric, greater_is_better=True)
    trainer = RenyiSFTTrainer(char_qwen2, args, train_dataset=load_task("conflict", n=16),
                              eval_dataset=load_task("conflict", n=8, seed=1), processing_class=char_tokenizer)
    snapshot = _SnapshotAtLastStep(trainer)
    trainer.add_callback(snapshot)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    evals = {h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h}
    assert best == os.path.join(str(tmp_path), f"checkpoint-{max(evals, key=evals.get)}")
    assert best.endswith("checkpoint-2")
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("checkpoint-")) == ["checkpoint-2"]
    assert os.path.exists(os.path.join(best, COMPLETE_MARKER))
    # the ensemble now holds exactly the best checkpoint's members, not those of the last step
    assert not _same(snapshot.members, _members_on_disk(best, 2))
    assert _same(_members_in_memory(trainer), _members_on_disk(best, 2))


def test_resume_skips_a_checkpoint_without_completion_marker(char_qwen2, char_tokenizer, tmp_path, monkeypatch):
    trainer = RenyiSFTTrainer(char_qwen2, _args(tmp_path), train_dataset=load_task("conflict", n=16),
                              processing_class=char_tokenizer)
    real = trainer.ensemble.save_members
    calls = {"n": 0}

    def flaky(directory):
        calls["n"] += 1
        real(directory)
        if calls["n"] == 2:   # crash in the middle of writing the second checkpoint
            raise OSError("disk full")

    monkeypatch.setattr(trainer.ensemble, "save_members", flaky)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    half = tmp_path / "checkpoint-4"
    assert (half / MEMBERS_DIR).is_dir() and not (half / COMPLETE_MARKER).exists()
    assert (tmp_path / "checkpoint-2" / COMPLETE_MARKER).exists()
    assert last_checkpoint(tmp_path).endswith("checkpoint-2")
    # resume_from_checkpoint=True goes through the same rule (transformers alone would pick checkpoint-4)
    monkeypatch.setattr(trainer.ensemble, "save_members", real)
    loaded = []
    original = trainer._load_from_checkpoint
    monkeypatch.setattr(trainer, "_load_from_checkpoint",
                        lambda path, model=None: (loaded.append(path), original(path, model))[1])
    trainer.train(resume_from_checkpoint=True)
    assert loaded == [str(tmp_path / "checkpoint-2")]
    # the re-saved checkpoint-4 is complete again
    assert (half / COMPLETE_MARKER).exists() and last_checkpoint(tmp_path).endswith("checkpoint-4")


def test_stale_marker_is_removed_before_a_checkpoint_is_overwritten(char_qwen2, char_tokenizer, tmp_path,
                                                                    monkeypatch):
    trainer = RenyiSFTTrainer(char_qwen2, _args(tmp_path), train_dataset=load_task("conflict", n=16),
                              processing_class=char_tokenizer)
    trainer.train()
    assert (tmp_path / "checkpoint-4" / COMPLETE_MARKER).exists()
    # resume from checkpoint-2 and crash while overwriting checkpoint-4: the old marker must not vouch
    # for the mix of old and new files
    real = trainer.ensemble.save_members

    def crash(directory):
        real(directory)
        raise OSError("disk full")

    monkeypatch.setattr(trainer.ensemble, "save_members", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert not (tmp_path / "checkpoint-4" / COMPLETE_MARKER).exists()
    assert last_checkpoint(tmp_path).endswith("checkpoint-2")


def test_resume_true_without_complete_checkpoint_names_the_folder(char_qwen2, char_tokenizer, tmp_path):
    trainer = RenyiSFTTrainer(char_qwen2, _args(tmp_path), train_dataset=load_task("conflict", n=16),
                              processing_class=char_tokenizer)
    (tmp_path / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)


@pytest.mark.parametrize("strategy", ["epoch", "best"])
def test_every_saved_checkpoint_is_marked_complete(char_qwen2, char_tokenizer, tmp_path, strategy):
    kw = {"save_strategy": strategy, "max_steps": 4}
    if strategy == "best":   # a falling loss: every evaluation is a new best, so every step saves
        kw.update(eval_strategy="steps", eval_steps=1, metric_for_best_model="loss")
    else:                    # 8 rows, batch 4: an epoch every 2 steps
        kw.update(num_train_epochs=2, max_steps=-1)
    trainer = RenyiSFTTrainer(char_qwen2, _args(tmp_path, **kw), train_dataset=load_task("conflict", n=8),
                              eval_dataset=load_task("conflict", n=4, seed=1) if strategy == "best" else None,
                              processing_class=char_tokenizer)
    trainer.train()
    saved = sorted((n for n in os.listdir(tmp_path) if n.startswith("checkpoint-")), key=lambda n: int(n[11:]))
    assert saved and all((tmp_path / n / COMPLETE_MARKER).exists() for n in saved)
    assert last_checkpoint(tmp_path).endswith(saved[-1])
