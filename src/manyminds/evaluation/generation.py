"""One generation routine for every evaluation condition, with prompts tokenised as TRL does.

TRL 1.16's ``GRPOTrainer._tokenize_prompts`` encodes a plain-text prompt with
``processing_class(text=prompts)`` (the tokenizer's default special tokens, so a BOS is added
where the tokenizer adds one) and a conversational prompt (a list of ``{"role", "content"}``
messages) with ``apply_chat_template(..., add_generation_prompt=True, tokenize=True)``; then
``_generate_single_turn`` left-pads the id lists with the pad id. :func:`tokenize_prompts`
does exactly that, so a model is evaluated on the token ids it was trained on; it lives in
:mod:`manyminds.rows` (with :func:`is_conversational`, :func:`pad_left`, :func:`pad_id_of`), the
one copy that :class:`~manyminds.population.Population` and the decisions use too.

Sampling never touches the global RNG: each call runs in ``torch.random.fork_rng`` and seeds
the fork with its own ``seed``, so two calls with the same arguments draw the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from manyminds.rows import check_context, is_conversational, pad_id_of, pad_left, tokenize_prompts

__all__ = ["check_context", "decode_new", "generate_completions", "is_conversational", "pad_id_of", "pad_left", "sampling_kwargs",
           "tokenize_prompts"]


def decode_new(tokenizer, sequences: torch.Tensor, prompt_len: int) -> list[str]:
    """Decoded new tokens of each row ``[N, T_prompt + T_new]`` (special tokens dropped, as TRL)."""
    return tokenizer.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)


def sampling_kwargs(temperature: float) -> dict:
    """``generate`` arguments: greedy for ``temperature == 0``, else pure sampling at ``temperature``
    (``top_k=0``, ``top_p=1``: the model's own generation config does not truncate the distribution)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0}


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: Sequence, *, max_new_tokens: int = 48,
                         temperature: float = 0.0, seed: int = 0, batch_size: int = 64,
                         population=None, mind_ids: Sequence[int] | None = None,
                         progress: Callable[[int], None] | None = None) -> list[str]:
    """One completion per prompt row (new text only), ``batch_size`` rows per ``generate`` call.

    Args:
        model: a causal LM (also a ``PeftModel``); put in eval mode for the call, restored after.
        tokenizer: its tokenizer; prompts are encoded by :func:`tokenize_prompts`.
        prompts: ``[N]`` rows (repeat a prompt to draw from it several times).
        temperature: 0 = greedy; > 0 = sampling in a forked RNG seeded with ``seed``.
        population: a :class:`~manyminds.population.Population` of ``model``; with ``mind_ids``
            (``[N]``, one id per row, ``-1`` = the mean model) row ``b`` runs mind ``mind_ids[b]``.
        progress: called with the number of rows finished after each batch.

    Warns :class:`~manyminds.population.MindCollapseWarning` when most minds' completions are
    degenerate repetition (:func:`~manyminds.population.collapse.warn_if_collapsed`).

    Returns:
        ``[N]`` completion strings.
    """
    prompts = list(prompts)
    if population is not None and (mind_ids is None or len(mind_ids) != len(prompts)):
        raise ValueError(f"a population needs one mind id per row: {len(prompts)} rows, "
                         f"{None if mind_ids is None else len(mind_ids)} ids")
    device = next(model.parameters()).device
    ids = tokenize_prompts(tokenizer, prompts)
    check_context(getattr(model, "config", None), [len(r) for r in ids], max_new_tokens)
    pad = pad_id_of(tokenizer)
    kwargs = {"max_new_tokens": max_new_tokens, "pad_token_id": pad, "eos_token_id": tokenizer.eos_token_id,
              **sampling_kwargs(temperature)}
    texts: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                enc = pad_left(ids[start:start + batch_size], pad, device)  # [b, T]
                if population is not None:
                    with population.minds(list(mind_ids[start:start + batch_size])):
                        out = model.generate(**enc, **kwargs)
                else:
                    out = model.generate(**enc, **kwargs)
                texts += decode_new(tokenizer, out, enc["input_ids"].shape[1])
                if progress is not None:
                    progress(enc["input_ids"].shape[0])
    finally:
        model.train(was_training)
    if population is not None:  # as Population.generate: warn when most minds' answers are repetition
        from manyminds.population.collapse import warn_if_collapsed

        warn_if_collapsed(texts, list(mind_ids))
    return texts
