"""Inference with an ensemble: mixture decoding, per-member generation, majority vote.

Mixture decoding samples from the ensemble's Bayesian predictive ``mean_k p_k(token | prefix)``.
It runs the K-repeated (member-major) batch through ``model.generate`` with the KV cache, inside
``ensemble.all_members()``; at every step a logits processor averages the K members' next-token
probabilities of each prompt, picks one token from the mixture and forces that same token on all
K copies, so the caches stay aligned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from manyminds.metrics import majority_share
from manyminds.rows import check_context, pad_id_of, pad_left, tokenize_prompts

from .model import EnsembleLoRA
from .uncertainty import CHUNK_ELEMENTS


class MixtureLogitsProcessor(LogitsProcessor):
    """Replace each member row's scores by a one-hot choice drawn from the members' mixture.

    Input scores are ``[K*B, V]`` (member-major). The mixture is
    ``mix = mean_k softmax(scores_k / temperature)`` (no temperature when it is 0: greedy). Per step
    it records the token-level uncertainty of the mixture (total / aleatoric / epistemic, ``[B]``
    each) and the mixture log-prob of the chosen token. The softmaxes are taken on blocks of
    prompts of at most ``chunk_elements`` float32 logits.
    """

    def __init__(self, num_members: int, temperature: float = 0.0, seed: int = 0,
                 track_uncertainty: bool = True, chunk_elements: int = CHUNK_ELEMENTS):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy on the mixture), got {temperature}")
        self.num_members = num_members
        self.chunk_elements = chunk_elements
        self.temperature = temperature
        self.seed = seed
        self.track_uncertainty = track_uncertainty
        self._generator: torch.Generator | None = None
        self.steps: list[dict[str, torch.Tensor]] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        K = self.num_members
        V = scores.shape[-1]
        logits = scores.view(K, -1, V)                                  # [K, B, V]
        B = logits.shape[1]
        mix = torch.empty(B, V, dtype=torch.float32, device=scores.device)  # the predictive
        total = torch.empty(B, dtype=torch.float32, device=scores.device)
        aleatoric = torch.empty(B, dtype=torch.float32, device=scores.device)
        # blocks of prompts: the float32 softmax copies are [K, b, V], never [K, B, V]
        step = max(1, self.chunk_elements // (K * V))
        for i in range(0, B, step):
            block = logits[:, i:i + step].float()                       # [K, b, V]
            if self.temperature > 0:
                block = block / self.temperature
            q = torch.log_softmax(block, dim=-1).exp()                  # [K, b, V]
            mix[i:i + step] = q.mean(0)
            if self.track_uncertainty:
                # the same xlogy for both terms, so K = 1 (or identical members) gives exactly 0 MI
                aleatoric[i:i + step] = -torch.special.xlogy(q, q).sum(-1).mean(0)  # mean_k H[p_k]
                total[i:i + step] = -torch.special.xlogy(mix[i:i + step], mix[i:i + step]).sum(-1)
        if self.temperature > 0:
            if self._generator is None or self._generator.device != scores.device:
                self._generator = torch.Generator(device=scores.device)
                self._generator.manual_seed(self.seed)
            chosen = torch.multinomial(mix, 1, generator=self._generator).squeeze(-1)
        else:
            chosen = mix.argmax(-1)                                     # [B]
        if self.track_uncertainty:
            self.steps.append({"token": chosen, "logp": mix.gather(-1, chosen[:, None])[:, 0].log(),
                               "total": total, "aleatoric": aleatoric,
                               "epistemic": (total - aleatoric).clamp_min(0.0)})
        # the same token on all K copies of each prompt (a new tensor: generate may keep `scores`)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(-1, chosen.repeat(K)[:, None], 0.0)
        return forced


@dataclass
class MixtureOutput:
    """Result of :func:`mixture_generate`.

    Attributes:
        sequences: ``[B, T_prompt + T_new]`` prompt and generated tokens.
        uncertainty: ``total``, ``aleatoric``, ``epistemic``, ``logp`` per generated token,
            ``[B, T_new]`` each (steps after a row finished are still computed; mask with
            ``finished``).
    """

    sequences: torch.Tensor
    uncertainty: dict[str, torch.Tensor] = field(default_factory=dict)


def _check_single_sequence(kwargs: dict) -> None:
    if kwargs.get("num_return_sequences", 1) != 1 or kwargs.get("num_beams", 1) != 1:
        raise ValueError("ensemble generation keeps rows member-major; num_return_sequences and "
                         "num_beams must be 1 (repeat the prompts instead)")


@torch.no_grad()
def mixture_generate(ensemble: EnsembleLoRA, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, max_new_tokens: int = 32,
                     temperature: float = 0.0, seed: int = 0, track_uncertainty: bool = True,
                     **generate_kwargs) -> MixtureOutput:
    """Decode from the ensemble's predictive ``mean_k p_k`` in one batched pass per step (KV cache).

    Args:
        input_ids, attention_mask: ``[B, T]`` left-padded prompts.
        max_new_tokens: tokens to generate.
        temperature: 0 = greedy on the mixture; > 0 = sample from the tempered members' mixture.
        seed: seed of the sampling generator (pure function of the seed, not the global RNG).
        track_uncertainty: record total / aleatoric / epistemic per generated token.
        **generate_kwargs: passed to ``model.generate`` (``eos_token_id``, ``pad_token_id``, ...).

    Returns:
        :class:`MixtureOutput` with ``sequences [B, T + new]`` and per-token uncertainty.
    """
    _check_single_sequence(generate_kwargs)
    K = ensemble.num_members
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    B = input_ids.shape[0]
    processor = MixtureLogitsProcessor(K, temperature=temperature, seed=seed,
                                       track_uncertainty=track_uncertainty)
    rep = EnsembleLoRA.repeat_batch({"input_ids": input_ids, "attention_mask": attention_mask}, K)
    with ensemble.all_members():
        out = ensemble.generate(**rep, max_new_tokens=max_new_tokens, do_sample=False,
                                logits_processor=LogitsProcessorList([processor]), **generate_kwargs)
    sequences = out.sequences if hasattr(out, "sequences") else out
    sequences = sequences.view(K, B, -1)[0]                             # all K copies are equal
    uncertainty = {}
    if processor.steps:
        uncertainty = {key: torch.stack([s[key] for s in processor.steps], dim=1)
                       for key in ("total", "aleatoric", "epistemic", "logp")}
    return MixtureOutput(sequences=sequences, uncertainty=uncertainty)


@torch.no_grad()
def generate_members(ensemble: EnsembleLoRA, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, **generate_kwargs) -> torch.Tensor:
    """Every member answers every prompt, in one batched ``generate`` of the K-repeated batch.

    Returns:
        ``[K, B, T + new]``: row ``[k, b]`` is member k's continuation of prompt b.
    """
    _check_single_sequence(generate_kwargs)
    K = ensemble.num_members
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    B = input_ids.shape[0]
    rep = EnsembleLoRA.repeat_batch({"input_ids": input_ids, "attention_mask": attention_mask}, K)
    with ensemble.all_members():
        out = ensemble.generate(**rep, **generate_kwargs)
    sequences = out.sequences if hasattr(out, "sequences") else out
    return sequences.view(K, B, -1)


def _decode_new(tokenizer, sequences: torch.Tensor, prompt_len: int) -> list[str]:
    return tokenizer.batch_decode(sequences[..., prompt_len:].reshape(-1, sequences.shape[-1] - prompt_len),
                                  skip_special_tokens=True)


def generate_texts(ensemble: EnsembleLoRA, tokenizer, prompts, mode: str = "mixture",
                   max_new_tokens: int = 32, **generate_kwargs) -> list[str] | list[list[str]]:
    """Text completions of ``prompts``.

    Prompts are tokenised as everywhere else (:func:`manyminds.rows.tokenize_prompts`, TRL 1.16's
    rule): strings with the tokenizer's special tokens, conversations through the chat template
    with the generation prompt; left-padded with :func:`manyminds.rows.pad_id_of` (pad, else eos).

    Args:
        prompts: a string, a list of strings, a conversation or a list of conversations (B rows).
        mode: ``"mixture"`` -> one completion per prompt (list of B strings);
            ``"members"`` -> every member's completion (K lists of B strings).
    """
    device = next(ensemble.model.parameters()).device
    ids = tokenize_prompts(tokenizer, prompts)                          # [B] id lists
    check_context(ensemble.model.config, [len(r) for r in ids], max_new_tokens)
    pad = pad_id_of(tokenizer)
    enc = pad_left(ids, pad, device)                                    # [B, T], left-padded
    prompt_len = enc["input_ids"].shape[1]
    generate_kwargs.setdefault("pad_token_id", pad)
    generate_kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    if mode == "mixture":
        out = mixture_generate(ensemble, **enc, max_new_tokens=max_new_tokens, **generate_kwargs)
        return _decode_new(tokenizer, out.sequences, prompt_len)
    if mode == "members":
        generate_kwargs.setdefault("do_sample", False)
        seqs = generate_members(ensemble, **enc, max_new_tokens=max_new_tokens, **generate_kwargs)
        texts = _decode_new(tokenizer, seqs, prompt_len)
        B = len(ids)
        return [texts[k * B:(k + 1) * B] for k in range(ensemble.num_members)]
    raise ValueError(f"mode must be 'mixture' or 'members', got {mode!r}")


def member_majority(ensemble: EnsembleLoRA, tokenizer, prompts,
                    max_new_tokens: int = 32, **generate_kwargs) -> dict[str, list]:
    """Each member answers ``prompts`` (strings or conversations, tokenised as in
    :func:`generate_texts`); the final answers (``manyminds.tasks.extract_answer``) are voted on.

    Returns:
        dict with ``answers`` (K lists of B final answers), ``majority`` (B answers),
        ``agreement`` (B vote shares) and ``texts`` (K lists of B completions).
    """
    from manyminds.tasks import extract_answer

    texts = generate_texts(ensemble, tokenizer, prompts, mode="members",
                           max_new_tokens=max_new_tokens, **generate_kwargs)
    answers = [[extract_answer(t) for t in member] for member in texts]
    votes = [majority_share(column) for column in zip(*answers)]
    return {"answers": answers, "majority": [v[0] for v in votes],
            "agreement": [v[1] for v in votes], "texts": texts}
