"""Per-row helpers that the population, the ensemble and the trainers share.

- ids and the prompt-major row plan (defined in :mod:`manyminds.row_plan`, re-exported here):
  :func:`check_row_ids`, :func:`expand_row_ids`; ``k`` rows per prompt, row ``p*k + j`` is prompt
  ``p`` under id ``ids[j]`` (:func:`repeat_prompts`, :func:`grid_ids`, :func:`prompt_grid`,
  :func:`group_rows`);
- prompts: plain text or TRL conversations (lists of ``{"role", "content"}`` messages), normalised by
  :func:`prompt_list` and tokenised once, the way TRL 1.16's GRPOTrainer does, by
  :func:`tokenize_prompts` (generation, evaluation, calibration, the population and mixture
  decoding all use it), left-padded by :func:`pad_left` with :func:`pad_id_of` (the one pad policy);
  a person's plain-text prompt becomes a user turn for a chat model by :func:`user_prompts`;
- tokenised training rows: prompt + completion with a completion mask, tokenised as TRL 1.16's
  SFTTrainer / DPOTrainer do (the chat template applied once to the whole conversation, the
  prompt part found as the common prefix), prompts cut from the left (:func:`encode_completions`,
  :func:`encode_pair`; the trainers, critical alpha and member scoring in transformers and vLLM),
  right-padded by :func:`pad_rows`;
- bounded input: rows over :data:`MAX_FIELD_CHARS` characters are refused when a file is read
  (:func:`check_row_sizes`; per file :func:`check_file_sizes`, i.e. :func:`check_jsonl_sizes`,
  :func:`check_csv_sizes`, :func:`check_parquet_sizes`) and before tokenising; prompts plus
  ``max_new_tokens`` are checked against the model's context before generating
  (:func:`check_context`);
- log-probs of selected tokens ``[N, L]`` from logits ``[N, T, V]`` in blocks, without a float32
  copy of the logits (:func:`selected_log_probs`, :func:`sequence_token_logps`).

Nothing here imports another part of ``manyminds``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from manyminds.row_plan import (
    check_row_ids,
    expand_row_ids,
    grid_ids,
    group_rows,
    prompt_grid,
    repeat_prompts,
)
from manyminds.row_sizes import (
    MAX_FIELD_CHARS,
    check_csv_sizes,
    check_file_sizes,
    check_jsonl_sizes,
    check_parquet_sizes,
    check_prompt_chars,
    check_row_sizes,
)

__all__ = ["LOGPS_BLOCK_ELEMENTS", "MAX_FIELD_CHARS", "check_context", "check_csv_sizes",
           "check_file_sizes", "check_jsonl_sizes", "check_parquet_sizes", "check_row_ids",
           "check_row_sizes", "common_prefix_length", "encode_completions", "encode_pair",
           "expand_row_ids", "grid_ids", "group_rows", "has_chat_template", "is_conversational",
           "logit_blocks", "pad_id_of", "pad_left", "pad_rows", "prompt_grid", "prompt_list",
           "repeat_prompts", "selected_log_probs", "sequence_token_logps", "tokenize_prompts",
           "truncate_prompt_left", "user_message", "user_prompts"]


def truncate_prompt_left(prompt_ids: list[int], completions: list[list[int]], max_length: int | None,
                         bos_token_id: int | None = None) -> tuple[list[int], list[list[int]]]:
    """Fit ``prompt + completion`` into ``max_length`` tokens for every completion of one prompt.

    The prompt is cut from the left, keeping its end next to the completion (and its leading BOS
    token, if it has one and room allows), as TRL's ``truncation_mode="keep_end"`` does for the
    prompt; the completions stay whole. Only when the longest completion alone does not fit is
    the prompt cut to its last token and each completion cut from the right, keeping its start
    (TRL's ``keep_start``). At least one prompt token is kept when the prompt is not empty, so
    the first completion token is still predicted, and at least one completion token survives
    (``max_length >= 2``). All completions share the same truncated prompt (a DPO pair compares
    ``y_w`` and ``y_l`` in the same context).

    Args:
        prompt_ids: token ids of the prompt (may be empty).
        completions: token ids of each completion (each non-empty).
        max_length: the token budget of ``prompt + completion``; ``None`` keeps everything.
        bos_token_id: kept at position 0 if the prompt starts with it.

    Returns:
        ``(prompt_ids, completions)`` with ``len(prompt_ids) + len(c) <= max_length`` for each ``c``.
    """
    if max_length is None:
        return list(prompt_ids), [list(c) for c in completions]
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a prompt token and a completion token), got {max_length}")
    longest = max(len(c) for c in completions)
    room = max(max_length - longest, min(1, len(prompt_ids)))   # prompt tokens kept
    if room < len(prompt_ids):
        keep_bos = bos_token_id is not None and prompt_ids[0] == bos_token_id and room >= 2
        head = list(prompt_ids[:1]) if keep_bos else []
        prompt_ids = head + list(prompt_ids[len(prompt_ids) - (room - len(head)):])
    budget = max_length - len(prompt_ids)
    return list(prompt_ids), [list(c[:budget]) for c in completions]


# ------------------------------------------------------------------------------ prompts and chat
def is_conversational(value) -> bool:
    """True for a TRL conversation: a non-empty list of messages (dicts with ``role`` and ``content``)."""
    return (isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict)
            and "role" in value[0] and "content" in value[0])


def has_chat_template(tokenizer) -> bool:
    """Whether ``tokenizer`` carries a chat template (``apply_chat_template`` can format conversations)."""
    return bool(getattr(tokenizer, "chat_template", None))


def user_message(text: str) -> list[dict]:
    """``text`` as a one-message conversation ``[{"role": "user", "content": text}]``."""
    return [{"role": "user", "content": text}]


def user_prompts(tokenizer, texts: Sequence[str]) -> list:
    """Plain ``texts`` as a person's prompts to this model: one user turn each (:func:`user_message`)
    when ``tokenizer`` has a chat template, else the texts themselves. ``[N] -> [N]``; encode the
    result with :func:`tokenize_prompts`."""
    texts = list(texts)
    return [user_message(t) for t in texts] if has_chat_template(tokenizer) else texts


def prompt_list(prompts) -> list:
    """Prompts as a list of rows, each a string or a conversation, all of one kind.

    Accepts a string, a list of strings, one conversation (a list of messages) or a list of
    conversations; one string / one conversation becomes a list of one.
    """
    if isinstance(prompts, str) or is_conversational(prompts):
        return [prompts]
    if not isinstance(prompts, (bytes, dict)) and hasattr(prompts, "__iter__"):   # also a datasets column
        prompts = list(prompts)
    if isinstance(prompts, list) and prompts and (all(isinstance(p, str) for p in prompts)
                                                 or all(is_conversational(p) for p in prompts)):
        return prompts
    raise ValueError("prompts must all be strings or all be conversations: pass a string, a list of strings, a "
                     "conversation (a list of {'role', 'content'} messages) or a list of conversations")


def pad_id_of(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id (TRL sets ``pad_token = eos_token`` the same way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return pad


def _chat_ids(tokenizer, conversations: list[list[dict]], add_generation_prompt: bool) -> list[list[int]]:
    """``apply_chat_template(..., tokenize=True)`` ids of each conversation: the template renders the
    special tokens itself (BOS included, where it writes one), nothing is added on top."""
    if not has_chat_template(tokenizer):
        raise ValueError("conversational prompts need a tokenizer with a chat template; pass plain-text "
                         "prompts or set tokenizer.chat_template")
    out = tokenizer.apply_chat_template(conversations, add_generation_prompt=add_generation_prompt,
                                        tokenize=True, return_dict=True)
    return [list(ids) for ids in out["input_ids"]]


def check_context(config, prompt_lengths: Sequence[int], max_new_tokens: int | None) -> None:
    """Refuse prompts that do not fit the model's context with the tokens to generate.

    Checks ``max(prompt_lengths) + max_new_tokens <= config.max_position_embeddings`` (GPT-2's
    ``n_positions`` maps to it); a config without it is not checked. Past that length GPT-2-style
    models fail with ``IndexError: index out of range in self`` and rotary models run on positions
    they never saw.

    Args:
        config: the model's ``PretrainedConfig`` (or ``None``: nothing is checked).
        prompt_lengths: ``[B]`` prompt lengths in tokens, without padding.
        max_new_tokens: tokens to generate per row (``None``: 0).
    """
    context = getattr(config, "max_position_embeddings", None)
    if not isinstance(context, int) or not prompt_lengths:
        return
    new = int(max_new_tokens or 0)
    longest = max(range(len(prompt_lengths)), key=lambda i: prompt_lengths[i])
    tokens = int(prompt_lengths[longest])
    if tokens + new > context:
        raise ValueError(f"prompt {longest} has {tokens} tokens; with max_new_tokens={new} that is {tokens + new}, "
                         f"over the model's context of {context} tokens (max_position_embeddings); shorten the "
                         f"prompt or lower max_new_tokens to {max(context - tokens, 0)}")


def tokenize_prompts(tokenizer, prompts, max_chars: int = MAX_FIELD_CHARS) -> list[list[int]]:
    """Token ids of each prompt, unpadded, as TRL 1.16's ``GRPOTrainer._tokenize_prompts`` computes them.

    Plain text: ``tokenizer(text=prompts)["input_ids"]`` (default ``add_special_tokens``: a BOS
    where the tokenizer adds one). Conversational: ``tokenizer.apply_chat_template(prompts,
    add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]``.

    Args:
        prompts: anything :func:`prompt_list` accepts (``[N]`` rows).
        max_chars: a prompt (or message) over this many characters is refused before tokenising.

    Returns:
        ``[N]`` lists of ids.
    """
    prompts = prompt_list(prompts)
    check_prompt_chars(prompts, max_chars)
    if is_conversational(prompts[0]):
        return _chat_ids(tokenizer, prompts, add_generation_prompt=True)
    return [list(ids) for ids in tokenizer(text=prompts)["input_ids"]]


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, both ``[B, T_max]``, left-padded (TRL's ``pad``)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        if len(r):
            ids[b, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[b, width - len(r):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


# ------------------------------------------------------------------------------ training rows
def common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    """Number of leading tokens ``ids`` and ``other`` share (TRL's ``common_prefix_length``)."""
    n = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        n += 1
    return n


def _prompt_and_completion_ids(tokenizer, prompt, completions: list) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and each completion's ids, split the way TRL 1.16's SFT/DPO trainers split them.

    Conversational (``prompt`` and every completion lists of messages): ``p =
    apply_chat_template(prompt, add_generation_prompt=True)``, ``f_k = apply_chat_template(prompt +
    completion_k)`` (both ``tokenize=True``; no EOS is added, the template ends the turn itself).
    Plain text: ``p = tokenizer(text=prompt)``, ``f_k = tokenizer(text=prompt + completion_k + eos)``
    (eos appended unless the completion already ends with it). The prompt part is the first
    ``c = min_k common_prefix(p, f_k)`` tokens and completion ``k`` is ``f_k[c:]``.
    """
    chat = bool(completions) and is_conversational(completions[0])
    if chat:
        ok = (prompt == [] or is_conversational(prompt)) and all(is_conversational(c) for c in completions)
    else:
        ok = isinstance(prompt, str) and bool(completions) and all(isinstance(c, str) for c in completions)
    if not ok:
        raise ValueError("prompt and completions must be all strings or all conversations (lists of "
                         "{'role', 'content'} messages), as in TRL's datasets")
    if chat:
        # an empty prompt (a conversation of one turn) is trained on whole, as TRL's language modelling
        prompt_ids = _chat_ids(tokenizer, [prompt], add_generation_prompt=True)[0] if prompt else []
        full = _chat_ids(tokenizer, [prompt + c for c in completions], add_generation_prompt=False)
    else:
        eos = tokenizer.eos_token
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        texts = [prompt + c + (eos if eos is not None and not c.endswith(eos) else "") for c in completions]
        full = [list(ids) for ids in tokenizer(text=texts)["input_ids"]]
    cut = min(common_prefix_length(prompt_ids, f) for f in full)
    pieces = [f[cut:] for f in full]
    if any(not p for p in pieces):
        raise ValueError("empty completion (and no eos token): nothing to train on")
    return prompt_ids[:cut], pieces


def encode_completions(tokenizer, prompt, completions: list, max_length: int | None) -> list[dict]:
    """``input_ids`` and a 0/1 ``completion_mask`` (1 on the completion tokens) for each completion
    of one prompt, tokenised as TRL 1.16's SFTTrainer and DPOTrainer tokenise a prompt-completion
    row, then truncated by :func:`truncate_prompt_left` (one shared prompt).

    Args:
        prompt: a string, or a conversation (list of ``{"role", "content"}`` messages).
        completions: strings (each gets the tokenizer's eos, as TRL adds it), or conversations
            (assistant turns; the chat template renders the end of turn, nothing else is added).
        max_length: token budget of prompt + completion; ``None`` keeps everything.

    Returns:
        one ``{"input_ids", "completion_mask"}`` per completion, lists of equal length.
    """
    p, cs = _prompt_and_completion_ids(tokenizer, prompt, list(completions))
    p, cs = truncate_prompt_left(p, cs, max_length, tokenizer.bos_token_id)
    return [{"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)} for c in cs]


def encode_pair(tokenizer, prompt, completion, max_length: int | None) -> dict:
    """One ``{"input_ids", "completion_mask"}`` row of :func:`encode_completions` (a string prompt and
    completion, or a conversation and its assistant turn(s)).

    Over ``max_length`` the prompt is cut from the left and the completion kept
    (:func:`truncate_prompt_left`)."""
    return encode_completions(tokenizer, prompt, [completion], max_length)[0]


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad integer lists to ``[N, T_max]``."""
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


LOGPS_BLOCK_ELEMENTS = 1 << 24
"""Default size of one block of :func:`selected_log_probs` in logits (16 Mi elements = 64 MiB in float32)."""


def logit_blocks(rows: int, positions: int, vocab: int, block_elements: int):
    """``(row slice, position slice)`` pairs covering a ``[rows, positions]`` grid in blocks of at
    most ``block_elements`` logits (``vocab`` per position): whole rows when a row fits, else spans
    of one row. Slicing the two leading dims of a ``[rows, positions, vocab]`` view never copies it."""
    span = max(1, block_elements // max(1, vocab))          # positions per block
    if span >= positions:
        step = max(1, span // max(1, positions))            # whole rows per block
        for r in range(0, rows, step):
            yield slice(r, min(rows, r + step)), slice(None)
    else:
        for r in range(rows):
            for t in range(0, positions, span):
                yield slice(r, r + 1), slice(t, min(positions, t + span))


class _SelectedLogProbs(torch.autograd.Function):
    """``logp[n, t] = logits[n, t, index[n, t]] - logsumexp_v logits[n, t, v]`` block by block.

    Forward upcasts one block at a time (float32, or float64 for float64 logits) and keeps only
    the per-position ``logsumexp`` ``[N, L]`` besides the logits themselves; backward recomputes
    the softmax block by block: ``d logp[n, t] / d logits[n, t, v] = 1[v = index[n, t]] - softmax_v``.
    Positions ``t >= L`` of the logits get a zero gradient.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor, block_elements: int) -> torch.Tensor:
        N, L = index.shape
        V = logits.shape[-1]
        compute = torch.promote_types(logits.dtype, torch.float32)
        logps = torch.empty(N, L, dtype=compute, device=logits.device)
        lse = torch.empty(N, L, dtype=compute, device=logits.device)
        for rows, pos in logit_blocks(N, L, V, block_elements):
            x = logits[:, :L][rows, pos].to(compute)                 # [n, l, V], one block
            lse[rows, pos] = torch.logsumexp(x, dim=-1)
            logps[rows, pos] = x.gather(-1, index[rows, pos].unsqueeze(-1)).squeeze(-1) - lse[rows, pos]
        ctx.save_for_backward(logits, index, lse)
        ctx.block_elements = block_elements
        return logps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logps: torch.Tensor):
        logits, index, lse = ctx.saved_tensors
        N, L = index.shape
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)   # [N, T, V]
        grad[:, L:] = 0
        g = grad_logps.to(lse.dtype)
        for rows, pos in logit_blocks(N, L, logits.shape[-1], ctx.block_elements):
            x = logits[:, :L][rows, pos].to(lse.dtype)
            block = torch.exp(x - lse[rows, pos].unsqueeze(-1))          # softmax, [n, l, V]
            block.mul_(-g[rows, pos].unsqueeze(-1))
            block.scatter_add_(-1, index[rows, pos].unsqueeze(-1), g[rows, pos].unsqueeze(-1))
            grad[:, :L][rows, pos] = block.to(grad.dtype)
        return grad, None, None


def selected_log_probs(logits: torch.Tensor, index: torch.Tensor,
                       block_elements: int = LOGPS_BLOCK_ELEMENTS) -> torch.Tensor:
    """``log_softmax(logits)`` at ``index``, without a full-vocabulary copy of the logits.

    ``logp[n, t] = logits[n, t, index[n, t]] - logsumexp_v logits[n, t, v]`` for
    ``t < L = index.shape[1]`` (``logits[:, L:]`` are ignored and get a zero gradient).

    Same technique as TRL's ``selective_log_softmax`` (gather minus logsumexp, one block at a
    time), but always computed in float32 (float64 for float64 logits), also for bf16/fp16
    logits, and with a backward that recomputes the softmax block by block instead of keeping
    an upcast copy for autograd: extra memory is the ``[N, L]`` logsumexp plus a few float32
    blocks of ``block_elements`` logits, forward and backward; the gradient itself is
    ``[N, T, V]`` in the logits' dtype, as for any loss on the logits.

    Args:
        logits: ``[N, T, V]``, any float dtype (a non-contiguous view is fine; it is not copied).
        index: ``[N, L]`` integer ids in ``[0, V)`` with ``L <= T``.
        block_elements: logits per block (default 16 Mi: 64 MiB in float32).

    Returns:
        ``[N, L]`` log-probs in float32 (float64 for float64 logits).
    """
    if logits.dim() != 3 or index.dim() != 2 or index.shape[0] != logits.shape[0] \
            or index.shape[1] > logits.shape[1]:
        raise ValueError(f"need logits [N, T, V] and index [N, L<=T], got {tuple(logits.shape)} "
                         f"and {tuple(index.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}")
    if block_elements < 1:
        raise ValueError(f"block_elements must be >= 1, got {block_elements}")
    return _SelectedLogProbs.apply(logits, index.long(), int(block_elements))


def sequence_token_logps(logits: torch.Tensor, input_ids: torch.Tensor,
                         block_elements: int = LOGPS_BLOCK_ELEMENTS) -> torch.Tensor:
    """Log-prob of each next token: logits ``[N, T, V]``, ids ``[N, T]`` -> ``[N, T-1]``.

    ``logp[n, t] = log_softmax(logits[n, t])[input_ids[n, t + 1]]``, computed in float32 by
    :func:`selected_log_probs` (no float32 copy of all logits; the logits at the last position
    are unused). With ``logits_to_keep=L`` the model returns the last ``L`` positions: pass
    ``input_ids[:, -L:]`` to get the log-probs of the last ``L - 1`` tokens.
    """
    if input_ids.shape != logits.shape[:2]:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} must match the logits' [N, T] "
                         f"{tuple(logits.shape[:2])}")
    return selected_log_probs(logits, input_ids[:, 1:], block_elements)


def completion_logits_to_keep(completion_mask: torch.Tensor) -> int:
    """How many trailing positions of logits the next-token log-probs of the completions need.

    With ``s`` the first position where any row of ``completion_mask [B, T]`` is 1 (at least 1:
    position 0 is never predicted), the logits at positions ``s - 1 .. T - 1`` suffice, i.e.
    ``logits_to_keep = T - s + 1``; the prompt before ``s - 1`` needs no ``lm_head``. Exact for
    any padding side, since rows are cut at the batch's earliest completion token. Returns ``T``
    (keep all) when the mask is all zero.
    """
    T = completion_mask.shape[1]
    predicted = completion_mask[:, 1:].bool().any(0).nonzero()         # positions t + 1 >= 1
    if predicted.numel() == 0:
        return T
    return T - int(predicted[0, 0])
