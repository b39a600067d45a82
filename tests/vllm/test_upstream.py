"""vLLM's entries of manyminds.upstream: true for the installed vLLM, loud when it changes."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from manyminds.upstream import UpstreamChanged, check_overrides


def test_the_installed_vllm_matches_the_table():
    targets = {entry.target.partition(":")[2] for entry in check_overrides("vllm")}
    assert {"GPUModelRunner.load_model", "GPUModelRunner._model_forward"} <= targets


def test_a_changed_runner_signature_fails_loudly(monkeypatch):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def load_model(self, eep_scale_up: bool = False):  # vLLM renames the argument
        pass

    monkeypatch.setattr(GPUModelRunner, "load_model", load_model)
    with pytest.raises(UpstreamChanged, match=r"GPUModelRunner\.load_model now takes \(eep_scale_up=False\)"):
        check_overrides("vllm")
