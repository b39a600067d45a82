"""A killed and resumed Renyi SFT run really continues from its checkpoint.

``test_killed_run_resumes_with_nothing_lost`` compares a resumed run with an uninterrupted one; a
resume that silently trained from scratch (same seed, same data order) would pass it, since six
steps from the initial members give the same result as three steps from the checkpoint plus three
more. So here the resumed run must also

* run exactly the optimizer steps the checkpoint had left (``max_steps - 3``), numbered from the
  checkpoint's step on (a callback records ``state.global_step`` at every ``on_step_end``), and
* depend on the checkpoint's members: resuming from a copy whose members were perturbed ends
  elsewhere than resuming from the checkpoint itself (which ends where the uninterrupted run does).
"""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.zoo.models import random_model
from manyminds.tasks import load_task
from manyminds.training import RenyiSFTConfig, RenyiSFTTrainer
from manyminds.training.common import COMPLETE_MARKER, MEMBERS_DIR, last_checkpoint

MAX_STEPS, SAVE_STEPS, KILL_AT = 6, 3, 4


def _args(output_dir, **kw):
    return RenyiSFTConfig(output_dir=str(output_dir), num_members=2, r=4, alpha=0.8, max_steps=MAX_STEPS,
                          per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1,
                          save_strategy="steps", save_steps=SAVE_STEPS, use_cpu=True, disable_tqdm=True,
                          seed=0, lr_scheduler_type="linear", **kw)


class _Kill(TrainerCallback):
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("killed")


class _StepLog(TrainerCallback):
    """``state.global_step`` after every optimizer step of this run."""

    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def _lora(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.ensemble.named_parameters() if p.requires_grad}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


def _perturb_members(checkpoint: str, num_members: int, scale: float) -> None:
    """Add ``scale`` times a fixed random direction (relative to each tensor's RMS) to every stored member."""
    g = torch.Generator().manual_seed(123)
    for k in range(num_members):
        path = os.path.join(checkpoint, MEMBERS_DIR, f"member_{k}", "adapter_model.safetensors")
        tensors = load_file(path)
        for name, t in tensors.items():
            rms = t.pow(2).mean().sqrt().clamp_min(1e-3)
            tensors[name] = t + scale * rms * torch.randn(t.shape, generator=g, dtype=t.dtype)
        save_file(tensors, path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run's final members, and the folder of a run killed after step KILL_AT."""
    model, tok = random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0), build_tokenizer()
    data = load_task("conflict", n=4 * MAX_STEPS)
    full = RenyiSFTTrainer(copy.deepcopy(model), _args(tmp_path_factory.mktemp("full")), train_dataset=data,
                           processing_class=tok)
    full.train()
    killed_dir = tmp_path_factory.mktemp("killed")
    killed = RenyiSFTTrainer(copy.deepcopy(model), _args(killed_dir), train_dataset=data, processing_class=tok,
                             callbacks=[_Kill(KILL_AT)])
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    return model, tok, data, _lora(full), killed_dir


def _resume(model, tok, data, output_dir, checkpoint):
    log = _StepLog()
    trainer = RenyiSFTTrainer(copy.deepcopy(model), _args(output_dir), train_dataset=data, processing_class=tok,
                              callbacks=[log])
    start = _lora(trainer)
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer, log.steps, start


@pytest.fixture(scope="module")
def resumed(runs, tmp_path_factory):
    """The killed run resumed from its last complete checkpoint: (trainer, steps it ran, members at start)."""
    model, tok, data, _, killed_dir = runs
    checkpoint = last_checkpoint(killed_dir)
    assert checkpoint == os.path.join(str(killed_dir), f"checkpoint-{SAVE_STEPS}")
    return _resume(model, tok, data, tmp_path_factory.mktemp("resumed"), checkpoint)


def test_resume_runs_only_the_remaining_steps_from_the_checkpoint(runs, resumed):
    full_final = runs[3]
    trainer, steps, start = resumed
    assert steps == list(range(SAVE_STEPS + 1, MAX_STEPS + 1))
    assert trainer.state.global_step == MAX_STEPS
    # the checkpoint's log history (steps 1..3) continued by steps 4..6, each step logged once
    logged = [h["step"] for h in trainer.state.log_history if "loss" in h]
    assert logged == list(range(1, MAX_STEPS + 1))
    # it ends where the uninterrupted run does, far from where it started
    assert _max_diff(_lora(trainer), start) > 1e-2
    assert _max_diff(_lora(trainer), full_final) < 1e-6


def test_resume_depends_on_the_checkpoint_members(runs, resumed, tmp_path):
    killed_dir = runs[4]
    checkpoint = last_checkpoint(killed_dir)
    perturbed = str(tmp_path / "perturbed" / os.path.basename(checkpoint))
    shutil.copytree(checkpoint, perturbed)
    assert os.path.exists(os.path.join(perturbed, COMPLETE_MARKER))
    _perturb_members(perturbed, num_members=2, scale=0.5)
    trainer, steps, _ = _resume(*runs[:3], tmp_path / "resumed", perturbed)
    assert steps == list(range(SAVE_STEPS + 1, MAX_STEPS + 1))
    # three steps at lr 1e-2 do not undo a perturbation of half the tensors' RMS
    assert _max_diff(_lora(trainer), _lora(resumed[0])) > 1e-2
