"""Which mind generates which rollout.

A generation call ``t`` (counted from 0 over the whole run, the same count on every process)
produces ``n`` rollouts on each of ``W`` processes. Process ``p`` holds the global rows
``p*n .. p*n + n - 1`` of that call (TRL gathers rewards in process order, and groups of
``num_generations`` rows are contiguous in that global order). Row ``r`` of call ``t`` gets:

- ``"fresh"``: ``id = t*W*n + r``, a mind never used before in the run (unique over steps and
  processes, so no two rollouts ever share a mind);
- ``"pool"``: ``id = (t*W*n + r) mod M``, cycling over a fixed pool of ``M`` minds. With
  ``M >= num_generations`` the rollouts of one group get different minds, and the shift by
  ``t*W*n`` pairs minds with different prompts from call to call.

Both are pure functions of ``(t, p, W, n)``: no RNG, nothing to synchronize between processes,
and resuming needs only ``t`` (see ``PopulationGRPOTrainer``).
"""

from __future__ import annotations

import torch


def assign_minds(mode: str, call: int, rows: int, process_index: int = 0, num_processes: int = 1,
                 pool_size: int | None = None) -> torch.LongTensor:
    """Mind ids of the local rollouts of generation call ``call``.

    Args:
        mode: ``"fresh"`` or ``"pool"``.
        call: index ``t >= 0`` of the generation call in the run.
        rows: local rollouts ``n`` on this process (every process has the same ``n``).
        process_index, num_processes: ``p`` and ``W``.
        pool_size: ``M`` (``"pool"`` only).

    Returns:
        LongTensor ``[n]`` of mind ids (all ``>= 0``; ``-1``, the mean model, is never assigned).
    """
    if call < 0 or rows < 0 or not 0 <= process_index < num_processes:
        raise ValueError(f"bad assignment arguments: call={call}, rows={rows}, process "
                         f"{process_index} of {num_processes}")
    start = call * num_processes * rows + process_index * rows
    ids = torch.arange(start, start + rows, dtype=torch.long)
    if mode == "fresh":
        return ids
    if mode == "pool":
        if not pool_size or pool_size < 1:
            raise ValueError(f"pool assignment needs pool_size >= 1, got {pool_size}")
        return ids % pool_size
    raise ValueError(f"unknown mind assignment {mode!r}; choose 'fresh' or 'pool'")
