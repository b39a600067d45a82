"""Saving and loading the members of an ensemble as K standard PEFT LoRA adapters.

A saved ensemble is a folder::

    directory/
        ensemble_config.json            the EnsembleLoRA fields, seed and wrapped module names
        member_0/adapter_config.json    a PEFT LoraConfig (r, lora_alpha, target_modules, ...)
        member_0/adapter_model.safetensors
                                        base_model.model.<module>.lora_A.weight  [r, in]
                                        base_model.model.<module>.lora_B.weight  [out, r]
        ...
        member_{K-1}/

Every file is written atomically (:func:`manyminds.files.atomic_write`). Before a load allocates
anything, :func:`read_members_config` checks the folder: ``member_0 .. member_{K-1}`` all present
with one rank, K and r agreeing with ``ensemble_config.json`` and with what the caller asked for;
:func:`check_member_tensors` then reads the safetensors headers (shapes only, no tensor) against the
modules the members will wrap. A mismatch is one ``ValueError`` that names the fix.

The functions take an ensemble (:class:`~manyminds.ensemble.EnsembleLoRA`) as their first
argument and use only its public attributes (``lora_layers``, ``ensemble_config``, ``seed``,
``target_names``, ``member_state_dict``, ``model``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from manyminds.files import atomic_write, atomic_write_text

ENSEMBLE_CONFIG_NAME = "ensemble_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_MEMBER_DIR = re.compile(r"member_(\d+)")


def member_key(module_name: str, part: str) -> str:
    """PEFT's key of a LoRA factor: ``base_model.model.<module>.<part>.weight``, part lora_A/B."""
    return f"base_model.model.{module_name}.{part}.weight"


def peft_adapter_config(ensemble) -> dict:
    """The ``adapter_config.json`` of every member: a PEFT ``LoraConfig`` as a dict."""
    from peft import LoraConfig

    model = ensemble.model
    name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    fan_in_fan_out = any(layer.fan_in_fan_out for layer in ensemble.lora_layers.values())
    fields = ensemble.ensemble_config
    target = fields.target_modules
    config = LoraConfig(r=fields.r, lora_alpha=fields.lora_alpha, lora_dropout=fields.lora_dropout,
                        target_modules=target if isinstance(target, str) else sorted(target),
                        fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM",
                        base_model_name_or_path=name_or_path).to_dict()
    if isinstance(config["target_modules"], (set, list)):
        config["target_modules"] = sorted(config["target_modules"])
    config["peft_type"] = "LORA"
    config["task_type"] = "CAUSAL_LM"
    return config


def save_members(ensemble, directory: str | os.PathLike) -> list[Path]:
    """Write member k to ``directory/member_{k}`` as a PEFT LoRA adapter, plus the ensemble's config.

    Each file is written to a temporary name and renamed into place, so a crash never leaves a
    half-written file under its final name. ``member_{k}`` folders with ``k >= K`` left by an
    earlier save of a larger ensemble are removed last, so the folder describes one ensemble.

    Returns:
        The K member directories.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    adapter_config = json.dumps(peft_adapter_config(ensemble), indent=2)
    K = ensemble.ensemble_config.num_members
    paths = []
    for k in range(K):
        member_dir = directory / f"member_{k}"
        member_dir.mkdir(exist_ok=True)
        state = {key: value.cpu() for key, value in ensemble.member_state_dict(k).items()}
        atomic_write(member_dir / ADAPTER_WEIGHTS_NAME,
                     lambda path, s=state: save_file(s, path, metadata={"format": "pt"}))
        atomic_write_text(member_dir / ADAPTER_CONFIG_NAME, adapter_config)
        paths.append(member_dir)
    meta = {**asdict(ensemble.ensemble_config), "seed": ensemble.seed,
            "target_names": ensemble.target_names}
    atomic_write_text(directory / ENSEMBLE_CONFIG_NAME, json.dumps(meta, indent=2))
    for k in sorted(_member_ids(directory) - set(range(K))):
        shutil.rmtree(directory / f"member_{k}")
    return paths


def _member_ids(directory: Path) -> set[int]:
    """The k of every ``member_{k}`` folder in ``directory``."""
    return {int(m.group(1)) for p in directory.iterdir()
            if p.is_dir() and (m := _MEMBER_DIR.fullmatch(p.name)) is not None}


def checkpoint_shape(directory: str | os.PathLike) -> tuple[int, int]:
    """``(K, r)`` of the ensemble saved in ``directory``, after the checks of
    :func:`read_members_config`."""
    meta = read_members_config(directory)
    return meta["num_members"], meta["r"]


def read_members_config(directory: str | os.PathLike, num_members: int | None = None,
                        r: int | None = None) -> dict:
    """The ``EnsembleLoRA`` fields of the ensemble saved in ``directory``; reads JSON only.

    Args:
        directory: what :func:`save_members` wrote.
        num_members, r: what the caller will build (``None``: whatever was saved).

    Returns:
        ``num_members``, ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules`` (and ``init``,
        ``init_std``, ``seed`` when ``ensemble_config.json`` is there).

    Raises:
        FileNotFoundError: no folder, or no ``member_0/adapter_config.json`` in it.
        ValueError: member folders with a gap or without their files, members of different ranks,
            ``ensemble_config.json`` disagreeing with the member folders, or ``num_members`` / ``r``
            differing from the saved ensemble.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no ensemble checkpoint at {directory}")
    if not (directory / "member_0" / ADAPTER_CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory} has no member_0/{ADAPTER_CONFIG_NAME}; "
                                f"write one with ensemble.save_members(dir)")
    ids = _member_ids(directory)
    K = max(ids) + 1
    missing = sorted(set(range(K)) - ids)
    if missing:
        raise ValueError(f"{directory} holds member_{max(ids)} but no member_{missing[0]}; a saved "
                         f"ensemble has member_0 .. member_{{K-1}}: save it again with "
                         f"ensemble.save_members(dir), or remove the stray member folders")
    adapters = []
    for k in range(K):
        for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
            if not (directory / f"member_{k}" / name).is_file():
                raise ValueError(f"{directory / f'member_{k}'} has no {name} (an interrupted "
                                 f"save?); save the ensemble again with ensemble.save_members(dir)")
        adapters.append(json.loads((directory / f"member_{k}" / ADAPTER_CONFIG_NAME).read_text()))
    ranks = sorted({a["r"] for a in adapters})
    if len(ranks) != 1:
        raise ValueError(f"members in {directory} have different ranks {ranks}; a saved ensemble "
                         f"has one rank: save it again with ensemble.save_members(dir)")
    meta_path = directory / ENSEMBLE_CONFIG_NAME
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta.pop("target_names", None)
        if (meta.get("num_members"), meta.get("r")) != (K, ranks[0]):
            raise ValueError(f"{meta_path} says K={meta.get('num_members')}, r={meta.get('r')} but "
                             f"{directory} holds K={K} member folders of rank r={ranks[0]}; save "
                             f"the ensemble again with ensemble.save_members(dir)")
    else:  # member folders written by hand or by PEFT: the fields of member_0's LoraConfig
        target = adapters[0]["target_modules"]
        meta = {"num_members": K, "r": ranks[0], "lora_alpha": adapters[0]["lora_alpha"],
                "lora_dropout": adapters[0].get("lora_dropout", 0.0),
                "target_modules": target if isinstance(target, str) else list(target)}
    asked = {"num_members": num_members, "r": r}
    wrong = {key: value for key, value in asked.items() if value is not None and value != meta[key]}
    if wrong:
        asked_str = ", ".join(f"{key}={value}" for key, value in wrong.items())
        fix = ", ".join(f"{key}={meta[key]}" for key in wrong)
        raise ValueError(f"{directory} holds K={K} members of rank r={ranks[0]}, but {asked_str} "
                         f"was asked for; pass {fix} (or the folder of a matching ensemble)")
    return meta


def check_member_tensors(directory: str | os.PathLike, num_members: int,
                         shapes: dict[str, tuple[int, int, int]]) -> None:
    """Check every member's saved factors against ``shapes`` from the safetensors headers only.

    Args:
        directory: a saved ensemble of ``num_members`` members (checked by
            :func:`read_members_config`).
        shapes: module name -> ``(r, in_features, out_features)`` of the layer a member loads into;
            A must be ``[r, in]`` and B ``[out, r]``.

    Raises:
        ValueError: a factor is missing (saved for other target modules) or has another shape.
    """
    from safetensors import safe_open

    directory = Path(directory)
    for k in range(num_members):
        path = directory / f"member_{k}" / ADAPTER_WEIGHTS_NAME
        with safe_open(str(path), framework="pt") as f:
            saved = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        for name, (r, n_in, n_out) in shapes.items():
            for part, shape in (("lora_A", (r, n_in)), ("lora_B", (n_out, r))):
                key = member_key(name, part)
                if key not in saved:
                    raise ValueError(f"{path.parent} has no tensor {key!r}: it was saved for other "
                                     f"target modules; pass the target_modules it was trained with")
                if saved[key] != shape:
                    raise ValueError(f"{key} of member {k} has shape {saved[key]}, expected "
                                     f"{shape}: it was saved from another base model; load it on "
                                     f"that model")


@torch.no_grad()
def load_members(ensemble, directory: str | os.PathLike) -> None:
    """Copy ``directory/member_{k}`` (k < K) into the members of ``ensemble``.

    Every check runs before the first tensor is read, so a failed load leaves the members as
    they were.

    Raises:
        ValueError: the checkpoint's K or rank differs from the ensemble's, or a factor is
            missing or has another shape.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    fields = ensemble.ensemble_config
    meta = read_members_config(directory)
    if (meta["num_members"], meta["r"]) != (fields.num_members, fields.r):
        raise ValueError(
            f"checkpoint {directory} holds K={meta['num_members']} members of rank r={meta['r']}, "
            f"but this ensemble has K={fields.num_members}, r={fields.r}; build it with "
            f"num_members={meta['num_members']}, r={meta['r']} or use "
            f"EnsembleLoRA.from_members(model, {str(directory)!r})")
    shapes = {name: (layer.r, layer.in_features, layer.out_features)
              for name, layer in ensemble.lora_layers.items()}
    check_member_tensors(directory, fields.num_members, shapes)
    for k in range(fields.num_members):
        state = load_file(str(directory / f"member_{k}" / ADAPTER_WEIGHTS_NAME))
        for name, layer in ensemble.lora_layers.items():
            layer.lora_A[k].copy_(state[member_key(name, "lora_A")])
            layer.lora_B[k].copy_(state[member_key(name, "lora_B")])
