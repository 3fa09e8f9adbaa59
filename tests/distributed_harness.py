"""Run a function on several ``torch.distributed`` ranks (gloo on CPU) from a test.

Usage::

    def _worker(rank, world_size, x):      # module-level, so spawned processes can import it
        ...
        return {"loss": loss.detach()}     # tensors / lists / dicts of tensors

    results = run_distributed(_worker, world_size=2, args=(x,))   # one entry per rank

Exceptions raised on any rank fail the test with the rank's traceback.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable, world_size: int, folder: str, backend: str, args: tuple):
    torch.set_num_threads(1)
    dist.init_process_group(
        backend, init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size
    )
    try:
        out = fn(rank, world_size, *args)
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: Sequence[Any] = (),
    backend: str = "gloo",
) -> list[Any]:
    """Spawn ``world_size`` processes running ``fn(rank, world_size, *args)``; return results."""
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(
            _entry,
            args=(fn, world_size, folder, backend, tuple(args)),
            nprocs=world_size,
            join=True,
        )
        return [
            torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=True)
            for r in range(world_size)
        ]
