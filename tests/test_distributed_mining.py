"""Mining + loss on the all-gathered batch equals one process on the concatenated batch."""

from __future__ import annotations

import pytest
import torch
from distributed_harness import run_distributed

from metricface.losses import (
    ContrastiveLoss,
    DistributedLossWrapper,
    MultiSimilarityLoss,
    TripletMarginLoss,
)
from metricface.miners import BatchHardMiner, MultiSimilarityMiner, TripletMarginMiner

SIZES = (6, 10)  # ranks hold different batch sizes


def _cases():
    return [
        (TripletMarginLoss(margin=0.2), BatchHardMiner()),
        (TripletMarginLoss(margin=0.1, swap=True), TripletMarginMiner(0.3, "semihard")),
        (TripletMarginLoss(margin=0.2), None),  # every triplet of the global batch
        (MultiSimilarityLoss(), MultiSimilarityMiner()),
        (ContrastiveLoss(), None),
    ]


def _global_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SIZES), 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (sum(SIZES),), generator=g)
    return x, y


def _worker(rank: int, world_size: int):
    x, y = _global_batch()
    start = sum(SIZES[:rank])
    out = []
    for loss, miner in _cases():
        local = x[start : start + SIZES[rank]].clone().requires_grad_(True)
        wrapped = DistributedLossWrapper(loss, miner)
        value = wrapped(local, y[start : start + SIZES[rank]])
        # DistributedDataParallel averages gradients over ranks; do the same here
        (value / world_size).backward()
        out.append({"loss": value.detach(), "grad": local.grad})
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_wrapper_matches_single_process_on_concatenated_batch():
    results = run_distributed(_worker, world_size=2)
    x, y = _global_batch()
    for i, (loss, miner) in enumerate(_cases()):
        ref_x = x.clone().requires_grad_(True)
        indices = None if miner is None else miner(ref_x, y)
        expected = loss(ref_x, y, indices_tuple=indices)
        expected.backward()
        assert expected.item() > 0
        for rank, per_rank in enumerate(results):
            start = sum(SIZES[:rank])
            torch.testing.assert_close(per_rank[i]["loss"], expected.detach())
            torch.testing.assert_close(per_rank[i]["grad"], ref_x.grad[start : start + SIZES[rank]])


def test_wrapper_without_process_group_is_the_plain_loss():
    x, y = _global_batch()
    wrapped = DistributedLossWrapper(TripletMarginLoss(), BatchHardMiner())
    torch.testing.assert_close(
        wrapped(x, y), TripletMarginLoss()(x, y, indices_tuple=BatchHardMiner()(x, y))
    )
    with pytest.raises(TypeError, match=r"loss must be a torch\.nn\.Module"):
        DistributedLossWrapper(lambda emb, labels: emb)
    with pytest.raises(ValueError, match="labels must have one entry per embedding"):
        wrapped(x, y[:3])


def _low_precision_worker(rank: int, world_size: int):
    x, y = _global_batch()
    start = sum(SIZES[:rank])
    out = {}
    for dtype in (torch.float16, torch.bfloat16):
        local = x[start : start + SIZES[rank]].to(dtype).requires_grad_(True)
        value = DistributedLossWrapper(TripletMarginLoss(margin=0.2), BatchHardMiner())(
            local, y[start : start + SIZES[rank]]
        )
        (value / world_size).backward()
        out[str(dtype)] = (value.detach(), local.grad)
    # embeddings that need no gradient (e.g. a validation loss): the same value, no graph
    value = DistributedLossWrapper(ContrastiveLoss())(
        x[start : start + SIZES[rank]], y[start : start + SIZES[rank]]
    )
    out["no_grad"] = (value, torch.tensor(value.requires_grad))
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_wrapper_on_half_precision_and_gradient_free_embeddings():
    results = run_distributed(_low_precision_worker, world_size=2)
    x, y = _global_batch()
    for dtype in (torch.float16, torch.bfloat16):
        ref_x = x.to(dtype).requires_grad_(True)
        expected = TripletMarginLoss(margin=0.2)(ref_x, y, BatchHardMiner()(ref_x, y))
        expected.backward()
        for rank, out in enumerate(results):
            value, grad = out[str(dtype)]
            start = sum(SIZES[:rank])
            assert value.dtype == grad.dtype == dtype
            torch.testing.assert_close(value, expected.detach())
            torch.testing.assert_close(grad, ref_x.grad[start : start + SIZES[rank]])
    for out in results:
        value, requires_grad = out["no_grad"]
        torch.testing.assert_close(value, ContrastiveLoss()(x, y))
        assert not requires_grad
