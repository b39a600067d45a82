"""Zero-variance rescue as free functions: find the groups of a GRPO batch that carry no signal and
splice re-rolled groups into the batch dict.

A group whose rollouts all got the same reward has advantage 0 on every row (GRPO's
``A = (r - mean_group) / (std_group + eps)``), so it contributes nothing to the update. Population
GRPO can re-roll such a group with fresh minds (dynamic sampling, as in DAPO) and replace it in the
batch. The batch dict is TRL's (``GRPOTrainer._generate_and_score_completions``): prompt tensors are
left-padded ``[B, P]``, completion tensors right-padded ``[B, C]``, per-row vectors ``[B]`` and per-row
sequence values ``[B, 1]``.
"""

from __future__ import annotations

import torch

PROMPT_KEYS = ("prompt_ids", "prompt_mask")
# [B, C] tensors aligned with the completion tokens (right padding)
COMPLETION_KEYS = ("completion_ids", "completion_mask", "old_per_token_logps", "sampling_per_token_logps",
                   "ref_per_token_logps", "tool_mask")
PER_ROW_KEYS = ("advantages", "importance_sampling_ratio", "mind_ids")  # [B], [B, 1] or [B, C]
SCALAR_KEYS = ("num_items_in_batch",)


def zero_signal_groups(advantages: torch.Tensor, num_generations: int, atol: float = 0.0) -> list[int]:
    """Indices of the groups (``num_generations`` consecutive rows) whose advantages are all zero.

    Args:
        advantages: ``[B]`` or ``[B, T]`` advantages (``B`` a multiple of ``num_generations``).
    """
    if advantages.size(0) % num_generations:
        raise ValueError(f"{advantages.size(0)} rows do not split into groups of {num_generations}")
    per_row = advantages.abs().reshape(advantages.size(0), -1).amax(dim=1)  # [B]
    grouped = per_row.view(-1, num_generations).amax(dim=1)                 # [B / G]
    return [int(g) for g in torch.nonzero(grouped <= atol).flatten()]


def _pad_to(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    extra = width - t.size(1)
    if extra <= 0:
        return t
    pad = torch.full((t.size(0), extra, *t.shape[2:]), value, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t] if left else [t, pad], dim=1)


def splice_groups(batch: dict, groups: list[int], new: dict, new_groups: list[int], num_generations: int,
                  pad_token_id: int) -> dict:
    """A copy of ``batch`` whose groups ``groups`` are replaced by groups ``new_groups`` of ``new``.

    Both dicts hold the same keys; prompt tensors are re-padded on the left, completion tensors on
    the right, to the wider of the two. ``num_items_in_batch`` (TRL's count of completion tokens) is
    recounted from the spliced ``completion_mask`` (single process).

    Raises:
        ValueError: on a key this function does not know how to splice, or mismatched group lists.
    """
    if len(groups) != len(new_groups):
        raise ValueError(f"{len(groups)} groups to replace but {len(new_groups)} replacements")
    unknown = set(batch) - set(PROMPT_KEYS + COMPLETION_KEYS + PER_ROW_KEYS + SCALAR_KEYS)
    if unknown or set(batch) != set(new):
        raise ValueError(f"cannot splice batch keys {sorted(unknown or set(batch) ^ set(new))}: rescue supports "
                         f"text-only GRPO batches")
    g = num_generations
    rows = torch.cat([torch.arange(i * g, (i + 1) * g) for i in groups]) if groups else torch.empty(0, dtype=torch.long)
    src = (torch.cat([torch.arange(i * g, (i + 1) * g) for i in new_groups]) if new_groups
           else torch.empty(0, dtype=torch.long))
    out = {}
    for key, value in batch.items():
        if key in SCALAR_KEYS:
            continue
        other = new[key]
        if key in PROMPT_KEYS or key in COMPLETION_KEYS or (value.dim() == 2 and value.size(1) > 1):
            left = key in PROMPT_KEYS
            fill = pad_token_id if key in ("prompt_ids", "completion_ids") else 0
            width = max(value.size(1), other.size(1))
            value, other = _pad_to(value, width, fill, left), _pad_to(other, width, fill, left)
        elif value.shape[1:] != other.shape[1:]:
            raise ValueError(f"cannot splice {key}: shapes {tuple(value.shape)} and {tuple(other.shape)}")
        merged = value.clone()
        merged[rows.to(value.device)] = other[src.to(other.device)].to(merged.dtype)
        out[key] = merged
    if "num_items_in_batch" in batch:
        out["num_items_in_batch"] = out["completion_mask"].sum().to(batch["num_items_in_batch"].dtype)
    return out
