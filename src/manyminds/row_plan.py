"""Row ids and the prompt-major row plan, shared by the population, the ensemble, evaluation and vLLM.

- ids: one integer id per batch row (``-1`` = the unchanged model), checked by
  :func:`check_row_ids` and expanded to ``generate``'s ``n * B`` rows by :func:`expand_row_ids`
  (mind ids of a :class:`~manyminds.population.Population`, member ids of an
  :class:`~manyminds.ensemble.EnsembleLoRA`);
- the prompt-major row plan: ``k`` rows per prompt, prompt ``p``'s rows are ``p*k .. p*k+k-1`` and
  row ``p*k + j`` runs id ``ids[j]`` (:func:`repeat_prompts`, :func:`grid_ids`, both at once
  :func:`prompt_grid`; flat outputs back to ``[P][k]`` by :func:`group_rows`).

:mod:`manyminds.rows` re-exports every name; import them from there. Nothing here imports another
part of ``manyminds``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

__all__ = ["check_row_ids", "expand_row_ids", "grid_ids", "group_rows", "prompt_grid", "repeat_prompts"]


def check_row_ids(ids, what: str = "mind") -> torch.Tensor:
    """Validate per-row ids -> a CPU ``LongTensor [B]``.

    Accepts a list/tuple of ints or an integer tensor ``[B]``; ``-1`` is the unperturbed model.
    ``what`` names the ids in errors (``"mind"``; the ensemble passes ``"member"``).
    """
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise TypeError(f"{what} ids must be integers, got a {ids.dtype} tensor")
        if ids.dim() != 1:
            raise ValueError(f"{what} ids must be one id per batch row (a 1-D tensor), got shape {tuple(ids.shape)}")
        out = ids.detach().to("cpu", torch.long)
    elif isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
        for i in ids:
            scalar_tensor = isinstance(i, torch.Tensor) and i.dim() == 0 and not i.dtype.is_floating_point
            if isinstance(i, bool) or not (isinstance(i, numbers.Integral) or scalar_tensor):
                raise TypeError(f"{what} ids must be integers, got {i!r}")
        out = torch.tensor([int(i) for i in ids], dtype=torch.long)
    else:
        raise TypeError(f"{what} ids must be a list of ints or a LongTensor [B], got {type(ids).__name__}")
    if out.numel() == 0:
        raise ValueError(f"{what} ids are empty; pass one id per batch row")
    if bool((out < -1).any()):
        raise ValueError(f"{what} ids must be >= 0, or -1 for the unperturbed model; got {int(out.min())}")
    return out


def expand_row_ids(ids: torch.Tensor, batch_size: int, what: str = "mind",
                   context: str = "the minds() context") -> torch.Tensor:
    """Ids for a batch of ``batch_size`` rows: ``ids`` itself, or each id repeated ``n`` times in a
    row (``repeat_interleave``) when ``batch_size == n * len(ids)``, the way ``generate`` expands
    rows for ``num_return_sequences`` and beams. Any other size raises ``ValueError`` naming
    ``context`` (the routing context that holds the ids) and ``what`` they are."""
    n_ids = ids.shape[0]
    if batch_size == n_ids:
        return ids
    if batch_size % n_ids == 0:
        return ids.repeat_interleave(batch_size // n_ids, dim=0)
    raise ValueError(f"{context} has {n_ids} {what} ids but the model got a batch of {batch_size} "
                     f"rows; pass one id per row (rows may only expand to a multiple n * {n_ids}, "
                     "as with num_return_sequences)")


def _check_rows_per_prompt(k) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k={k!r}: pass a positive number of rows per prompt")


def repeat_prompts(prompts, k: int):
    """Each prompt ``k`` times in a row, prompt-major: ``[P] -> [P * k]``, row ``p * k + j`` is prompt ``p``.

    A list (or any sequence) gives a list; a tensor ``[P, ...]`` gives ``[P * k, ...]``
    (``repeat_interleave`` on dim 0, as ``generate`` expands ``num_return_sequences``).
    """
    _check_rows_per_prompt(k)
    if isinstance(prompts, torch.Tensor):
        return prompts.repeat_interleave(int(k), dim=0)
    return [p for p in prompts for _ in range(k)]


def grid_ids(ids, num_prompts: int) -> list[int]:
    """The id of each row of the prompt-major plan: ``ids`` once per prompt, ``[k] -> [P * k]``.

    Row ``p * k + j`` runs ``ids[j]``; an int ``k`` means ids ``0 .. k-1`` (every prompt answered by
    minds, or members, ``0 .. k-1``): ``grid_ids(3, 2) == [0, 1, 2, 0, 1, 2]``.
    """
    if isinstance(ids, numbers.Integral) and not isinstance(ids, bool):
        if ids < 1:
            raise ValueError(f"{ids} ids per prompt: pass a positive number or a list of ids")
        ids = range(int(ids))
    ids = [int(i) for i in ids]
    if not ids:
        raise ValueError("no ids: pass a positive number of minds (or members) or a non-empty list of ids")
    return ids * int(num_prompts)


def prompt_grid(prompts, ids) -> tuple[list, list[int]]:
    """Every prompt x every id, prompt-major: ``(rows [P * k], row ids [P * k])`` with row
    ``p * k + j`` = (``prompts[p]``, ``ids[j]``) (:func:`repeat_prompts`, :func:`grid_ids`; an int
    ``k`` means ids ``0 .. k-1``). Regroup the rows' outputs with :func:`group_rows`."""
    ids = grid_ids(ids, 1)  # [k]
    prompts = list(prompts)
    return repeat_prompts(prompts, len(ids)), ids * len(prompts)


def group_rows(flat: Sequence, k: int) -> list:
    """Consecutive blocks of ``k``: ``[P * k] -> [P][k]``, ``out[p] = flat[p*k : p*k + k]``, the
    inverse of the prompt-major plan (:func:`prompt_grid`). ``len(flat)`` must be a multiple of ``k``."""
    _check_rows_per_prompt(k)
    if len(flat) % k:
        raise ValueError(f"{len(flat)} rows do not split into groups of {k}; pass k rows per prompt "
                         f"(prompt-major: prompt p's rows are p*k .. p*k+k-1)")
    return [flat[i:i + k] for i in range(0, len(flat), k)]
