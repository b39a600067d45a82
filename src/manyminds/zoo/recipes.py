"""Trained zoo models: a recipe (:class:`ZooEntry`: architecture family, config overrides,
training settings) and the build that runs it into a staging folder (:func:`train_into`).

The build trains a random-init model of the family (:func:`manyminds.zoo.models.random_model`) with
the character tokenizer and the short supervised run of :mod:`manyminds.zoo.charlm`, scores it on
held-out arith problems, optionally rewrites a Qwen2 model as the identical ``LlamaForCausalLM``
(:func:`qwen2_as_llama`), and saves an ordinary ``save_pretrained`` checkpoint (safetensors) that
loads with plain ``AutoModelForCausalLM`` / ``AutoTokenizer``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from manyminds.progress import progress_bar
from manyminds.tasks import load_task

from .charlm import VOCAB_SIZE, TrainSettings, build_tokenizer, greedy_accuracy, train
from .models import llama_equivalent_config, random_model, rebuild_as


@dataclass(frozen=True)
class ZooEntry:
    """A buildable model: architecture family, config overrides and training settings."""
    name: str
    family: str
    config: dict
    train: TrainSettings = field(default_factory=TrainSettings)
    description: str = ""
    eval_problems: int = 200  # held-out arith test problems scored (greedy) at the end of the build
    save_as_llama: bool = False  # write a Qwen2-family model as the equivalent LlamaForCausalLM


def train_into(entry: ZooEntry, tmp: Path, show_progress: bool = True) -> dict:
    """Train ``entry``'s model and save it (with its tokenizer) into the staging folder ``tmp``.

    Returns:
        The marker's fields (the caller, :func:`manyminds.zoo.build`, adds the recipe hash and
        the weights' SHA-256, writes the marker and renames ``tmp`` into place).
    """
    tokenizer = build_tokenizer()
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    model = random_model(entry.family, vocab_size=VOCAB_SIZE, seed=entry.train.seed, **entry.config, **ids)
    start = time.time()
    with _progress(show_progress, f"building {entry.name}", entry.train.steps) as advance:
        losses = train(model, tokenizer, entry.train, progress=advance)
    train_s = time.time() - start
    test = list(load_task("arith", "test", n=entry.eval_problems, seed=0))
    acc = greedy_accuracy(model, tokenizer, test)
    if entry.save_as_llama:
        model = qwen2_as_llama(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _check_auto_tokenizer(tmp, tokenizer)
    return {"name": entry.name, "family": entry.family, "arith_test_greedy_accuracy": acc,
            "eval_problems": entry.eval_problems, "final_train_loss": losses[-1],
            "train_seconds": round(train_s, 1),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "train": asdict(entry.train), "torch": torch.__version__}


def qwen2_as_llama(model):
    """The ``LlamaForCausalLM`` computing exactly what a Qwen2 model computes.

    Qwen2 is Llama with biases on q/k/v: :func:`~manyminds.zoo.models.llama_equivalent_config`
    adds those and an ``o_proj`` bias, which :func:`~manyminds.zoo.models.rebuild_as` sets to zero.
    Checked on a probe batch (max |diff| <= 1e-5).
    """
    c = model.config
    config = llama_equivalent_config(c) if c.model_type == "qwen2" else None
    if config is None:
        raise ValueError(f"qwen2_as_llama takes a Qwen2 model without sliding windows, got {c.model_type!r}")
    llama = rebuild_as(model, config)
    probe = torch.arange(2 * 12).reshape(2, 12) % config.vocab_size
    with torch.no_grad():
        diff = (llama(probe).logits - model.eval()(probe).logits).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"Qwen2 -> Llama conversion changed the logits by {diff:.2e}")
    return llama


def _check_auto_tokenizer(path: Path, tokenizer) -> None:
    """Plain ``AutoTokenizer.from_pretrained(path)`` must give back exactly our tokenizer."""
    from transformers import AutoTokenizer

    probe = "Q: 4-5+3-5\nA: 4-5+3-5=-1+3-5=2-5=-3\n#### -3"
    loaded = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(probe, add_special_tokens=False).input_ids
    if loaded(probe, add_special_tokens=False).input_ids != ids or loaded.decode(ids) != probe:
        raise RuntimeError(f"AutoTokenizer loads the tokenizer saved at {path} as {type(loaded).__name__}, "
                           "which does not round-trip; use a model family whose tokenizer mapping keeps it")


class _progress:
    """A rich progress bar whose ``advance(step, loss)`` callback fits :func:`manyminds.zoo.charlm.train`."""

    def __init__(self, enabled: bool, label: str, total: int):
        self.enabled, self.label, self.total = enabled, label, total

    def __enter__(self):
        if not self.enabled:
            return lambda step, loss: None
        self.bar = progress_bar("loss {task.fields[loss]:.3f}", remaining=True)
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total, loss=float("nan"))
        return lambda step, loss: self.bar.update(task, completed=step + 1, loss=loss)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False
