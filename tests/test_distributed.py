"""all_gather_with_grad against one process holding the concatenated batch."""

from __future__ import annotations

import pytest
import torch
from distributed_harness import run_distributed

from metricface.distributed import all_gather_with_grad, get_rank, get_world_size

SIZES = (3, 5)  # ranks hold different batch sizes


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SIZES), 4, generator=g, dtype=torch.float64)
    w = torch.randn(sum(SIZES), 4, generator=g, dtype=torch.float64)
    return x, w


def _loss(full: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # a loss that couples rows, like a pair loss over the global batch
    return (full @ full.T).tanh().sum() + (full * w).pow(2).sum()


def _worker(rank: int, world_size: int):
    x, w = _global_batch()
    start = sum(SIZES[:rank])
    local = x[start : start + SIZES[rank]].clone().requires_grad_(True)
    full = all_gather_with_grad(local)
    # each rank computes the loss on the gathered batch and divides by the world size, as
    # DistributedDataParallel's gradient averaging would
    (_loss(full, w) / world_size).backward()
    return {"full": full.detach(), "grad": local.grad, "rank": get_rank(), "ws": get_world_size()}


@pytest.mark.distributed
def test_all_gather_with_grad_matches_single_process():
    results = run_distributed(_worker, world_size=2)
    x, w = _global_batch()
    ref = x.clone().requires_grad_(True)
    _loss(ref, w).backward()
    for rank, out in enumerate(results):
        assert out["rank"] == rank and out["ws"] == 2
        torch.testing.assert_close(out["full"], x, rtol=0, atol=0)
        start = sum(SIZES[:rank])
        torch.testing.assert_close(out["grad"], ref.grad[start : start + SIZES[rank]])


def test_all_gather_without_process_group_is_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x
    assert get_rank() == 0 and get_world_size() == 1


def test_all_gather_rejects_non_tensor():
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        all_gather_with_grad([1, 2])
    with pytest.raises(ValueError, match="x must have a batch dimension"):
        all_gather_with_grad(torch.tensor(1.0))


def _mismatch_worker(rank: int, world_size: int):
    messages = []
    # another embedding size on rank 1; then another dtype (NCCL would hang or mix bytes)
    for x in (
        torch.zeros(2 + rank, 4 + 2 * rank),
        torch.zeros(3, 4, dtype=(torch.float32, torch.float16)[rank]),
    ):
        try:
            all_gather_with_grad(x)
        except ValueError as exc:
            messages.append(str(exc))
    # the process group is still usable afterwards
    full = all_gather_with_grad(torch.full((rank + 1, 2), float(rank)))
    return {"messages": messages, "full": full}


@pytest.mark.distributed
def test_all_gather_names_a_shape_or_dtype_that_differs_between_ranks():
    results = run_distributed(_mismatch_worker, world_size=2)
    for out in results:  # every rank raises, none waits for the others
        assert out["messages"] == [
            "x must have the same dtype and shape after the batch dimension on every rank, "
            "got float32 (B, 4) on rank 0 and float32 (B, 6) on rank 1",
            "x must have the same dtype and shape after the batch dimension on every rank, "
            "got float32 (B, 4) on rank 0 and float16 (B, 4) on rank 1",
        ]
        torch.testing.assert_close(out["full"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
