"""A saved ensemble is checked against what the caller asks for before any member is allocated.

``EnsembleLoRA.from_members``, ``ens.load_members`` and ``manyminds sft --resume`` compare the
requested K (and r, and every factor's shape) with the member folders on disk first: a mismatch is
one ``ValueError`` naming the fix, raised before the ensemble constructor runs (a spy on it proves
it) and before any member of an existing ensemble is overwritten.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from manyminds.cli import app
from manyminds.ensemble import EnsembleLoRA, EnsembleLoRALinear
from manyminds.ensemble.save_and_load import ENSEMBLE_CONFIG_NAME, checkpoint_shape
from manyminds.training.common import COMPLETE_MARKER
from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.zoo.models import random_model


@pytest.fixture
def spy_constructors(monkeypatch):
    """Count the calls of the constructors of the ensemble and its layers (members live there)."""
    calls = []
    for cls in (EnsembleLoRA, EnsembleLoRALinear):
        real = cls.__init__

        def spy(self, *args, _real=real, _name=cls.__name__, **kwargs):
            calls.append(_name)
            _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", spy)
    return calls


def _saved(tmp_path, model, num_members=3, r=4, seed=0):
    """Diverse members saved under ``tmp_path/members``; returns (folder, ensemble)."""
    ens = EnsembleLoRA(copy.deepcopy(model), num_members=num_members, r=r, init="diverse",
                       init_std=0.3, seed=seed)
    folder = tmp_path / "members"
    ens.save_members(folder)
    return folder, ens


def _factors(ens) -> list[torch.Tensor]:
    return [p.detach().clone() for p in ens.lora_parameters()]


def test_from_members_refuses_another_num_members_before_allocating(tiny_qwen2, tmp_path,
                                                                    spy_constructors):
    folder, _ = _saved(tmp_path, tiny_qwen2)
    spy_constructors.clear()
    with pytest.raises(ValueError) as err:
        EnsembleLoRA.from_members(copy.deepcopy(tiny_qwen2), folder, num_members=5)
    line = str(err.value)
    assert "\n" not in line and "K=3 members of rank r=4" in line and "pass num_members=3" in line
    assert spy_constructors == []                # nothing was built, so nothing was allocated
    with pytest.raises(ValueError, match="pass r=4"):
        EnsembleLoRA.from_members(copy.deepcopy(tiny_qwen2), folder, r=8)
    assert spy_constructors == []
    # the same folder with the right K loads (the spy sees the constructor this time)
    ens = EnsembleLoRA.from_members(copy.deepcopy(tiny_qwen2), folder, num_members=3, r=4)
    assert ens.num_members == 3 and spy_constructors.count("EnsembleLoRA") == 1


def test_member_folders_must_agree_with_the_ensemble_config(tiny_qwen2, tmp_path, spy_constructors):
    folder, _ = _saved(tmp_path, tiny_qwen2)
    shutil.rmtree(folder / "member_2")            # ensemble_config.json still says K=3
    spy_constructors.clear()
    with pytest.raises(ValueError, match=r"says K=3, r=4 but .* holds K=2 member folders"):
        EnsembleLoRA.from_members(copy.deepcopy(tiny_qwen2), folder)
    assert spy_constructors == []

    folder, _ = _saved(tmp_path, tiny_qwen2)
    shutil.rmtree(folder / "member_1")            # a gap: member_0 and member_2
    spy_constructors.clear()
    with pytest.raises(ValueError, match="holds member_2 but no member_1"):
        EnsembleLoRA.from_members(copy.deepcopy(tiny_qwen2), folder)
    assert spy_constructors == []

    folder, _ = _saved(tmp_path, tiny_qwen2)
    (folder / "member_1" / "adapter_model.safetensors").unlink()   # an interrupted save
    spy_constructors.clear()
    with pytest.raises(ValueError, match="member_1 has no adapter_model.safetensors"):
        EnsembleLoRA.from_members(copy.deepcopy(tiny_qwen2), folder)
    assert spy_constructors == []


def test_factor_shapes_are_checked_from_the_headers_before_allocating(tiny_qwen2, tmp_path,
                                                                      spy_constructors):
    """Members saved on a model of another width are refused before the ensemble is built."""
    wide = random_model("qwen2", vocab_size=64, seed=0, hidden_size=48, intermediate_size=96)
    folder, _ = _saved(tmp_path, wide, num_members=2)
    spy_constructors.clear()
    with pytest.raises(ValueError, match=r"has shape \(4, 48\), expected \(4, 32\)"):
        EnsembleLoRA.from_members(copy.deepcopy(tiny_qwen2), folder)
    assert spy_constructors == []


def test_failed_load_leaves_every_member_as_it_was(tiny_qwen2, tmp_path):
    """All checks run before the first copy: a bad last member does not half-load the others."""
    from safetensors.torch import load_file, save_file

    folder, saved = _saved(tmp_path, tiny_qwen2, seed=1)
    path = folder / "member_2" / "adapter_model.safetensors"
    state = load_file(path)
    key = next(k for k in state if k.endswith("lora_B.weight"))
    state[key] = state[key][:-1]                  # one factor of the last member has a wrong shape
    save_file(state, path)
    target = EnsembleLoRA(copy.deepcopy(tiny_qwen2), num_members=3, r=4, init="diverse", seed=2)
    before = _factors(target)
    assert not all(torch.equal(a, b) for a, b in zip(before, _factors(saved)))
    with pytest.raises(ValueError, match="of member 2 has shape"):
        target.load_members(folder)
    assert all(torch.equal(a, b) for a, b in zip(before, _factors(target)))


def test_saving_fewer_members_removes_the_stale_folders(tiny_qwen2, tmp_path):
    folder, _ = _saved(tmp_path, tiny_qwen2, num_members=3)
    (folder / "notes").mkdir()                    # not a member folder: left alone
    _, two = _saved(tmp_path, tiny_qwen2, num_members=2, seed=5)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [ENSEMBLE_CONFIG_NAME, "member_0", "member_1", "notes"]
    assert checkpoint_shape(folder) == (2, 4)
    loaded = EnsembleLoRA.from_members(copy.deepcopy(tiny_qwen2), folder)
    assert all(torch.equal(a, b) for a, b in zip(_factors(loaded), _factors(two)))


def test_resume_with_another_num_members_fails_before_the_trainer_is_built(tmp_path, monkeypatch,
                                                                           spy_constructors):
    """``manyminds sft --num_members 3 --resume_from_checkpoint <a K=2 checkpoint>``: one error
    line, raised before the model is loaded or an ensemble is allocated."""
    import manyminds.cli.renyi as cli_renyi

    tok = build_tokenizer()
    model_dir = tmp_path / "model"
    model = random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    EnsembleLoRA(model, num_members=2, r=4).save_members(checkpoint / "members")
    (checkpoint / COMPLETE_MARKER).write_text("")
    loads = []
    real_load = cli_renyi.load_model
    monkeypatch.setattr(cli_renyi, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    spy_constructors.clear()
    args = ["sft", "--model", str(model_dir), "--num_examples", "4", "--max_steps", "1", "--r", "4",
            "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", str(checkpoint)]
    result = CliRunner().invoke(app, [*args, "--num_members", "3"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "K=2 members of rank r=4" in lines[0] and "num_members=2" in lines[0]
    assert spy_constructors == [] and loads == []
    assert not (tmp_path / "out").exists()        # nothing written either
    meta = json.loads((checkpoint / "members" / ENSEMBLE_CONFIG_NAME).read_text())
    assert meta["num_members"] == 2
