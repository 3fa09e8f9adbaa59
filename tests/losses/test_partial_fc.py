"""PartialFCLoss: sampling, sharding over gloo ranks, checkpoints, against dense references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from distributed_harness import run_distributed
from hypothesis import given
from hypothesis import strategies as st

from metricface.losses import (
    AdaFaceMargin,
    ArcFaceLoss,
    ArcFaceMargin,
    CosFaceLoss,
    CosFaceMargin,
    PartialFCLoss,
    shard_range,
)

SCALE = 32.0


def arcface_safe(cos: torch.Tensor, m: float = 0.5) -> torch.Tensor:
    """cos(theta + m) by the angle-sum identity, NaN-free at cos = +-1."""
    sine = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
    return cos * math.cos(m) - sine * math.sin(m)


def dense_reference(x, w, y, margin=arcface_safe, scale=SCALE):
    """Dense float64 margin softmax cross entropy, written with plain autograd."""
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    target = cos.gather(1, y[:, None]).squeeze(1).clamp(-1.0, 1.0)
    logits = cos.scatter(1, y[:, None], margin(target)[:, None]) * scale
    return F.cross_entropy(logits, y)


def _reference_grads_with(x, w, y, margin, scale):
    x = x.detach().double().requires_grad_(True)
    w = w.detach().double().requires_grad_(True)
    loss = dense_reference(x, w, y, margin, scale)
    loss.backward()
    return loss.detach(), x.grad, w.grad


def _reference_grads(x, w, y):
    return _reference_grads_with(x, w, y, arcface_safe, SCALE)


# --------------------------------------------------------------------------- shard layout
@given(st.integers(1, 200), st.integers(1, 9))
def test_shard_range_is_tensor_split(num_classes, world_size):
    parts = torch.tensor_split(torch.arange(num_classes), world_size)
    for rank, part in enumerate(parts):
        start, stop = shard_range(num_classes, world_size, rank)
        assert list(range(start, stop)) == part.tolist()


def test_shard_range_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank must be in"):
        shard_range(10, 2, 2)


# --------------------------------------------------------------------------- single process
def _module(c=40, d=8, **kw):
    torch.manual_seed(0)
    kw.setdefault("margin", arcface_safe)
    kw.setdefault("scale", SCALE)
    return PartialFCLoss(c, d, dtype=torch.float64, **kw)


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_full_rate_equals_dense(chunk_size):
    loss_fn = _module(chunk_size=chunk_size)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 40, (10,), generator=g)
    loss = loss_fn(x, y)
    loss.backward()
    ref_loss, ref_gx, ref_gw = _reference_grads(x, loss_fn.weight, y)
    torch.testing.assert_close(loss.detach(), ref_loss)
    torch.testing.assert_close(x.grad, ref_gx)
    torch.testing.assert_close(loss_fn.weight.grad, ref_gw)
    assert loss_fn.last_sampled is None


def test_default_margin_is_arcface_half_radian():
    loss_fn = PartialFCLoss(10, 4, sample_rate=0.5, chunk_size=3)
    assert loss_fn.margin == ArcFaceMargin(0.5)
    assert repr(loss_fn) == (
        "PartialFCLoss(num_classes=10, embedding_dim=4, margin=ArcFaceMargin(margin=0.5, "
        "easy_margin=False), scale=64.0, sample_rate=0.5, chunk_size=3)"
    )


@pytest.mark.parametrize(
    "dense_cls, margin", [(ArcFaceLoss, ArcFaceMargin(0.5)), (CosFaceLoss, CosFaceMargin(0.35))]
)
@pytest.mark.parametrize("chunk_size", [None, 16])
def test_full_rate_equals_library_dense_loss(dense_cls, margin, chunk_size):
    torch.manual_seed(2)
    dense = dense_cls(100, 16).double()
    ours = PartialFCLoss(100, 16, margin, chunk_size=chunk_size, dtype=torch.float64)
    ours.load_full_state_dict(dense.state_dict())
    x = torch.randn(12, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 100, (12,))
    results = []
    for loss_fn in (ours, dense):
        x.grad = None
        loss = loss_fn(x, y)
        loss.backward()
        results.append((loss.detach(), x.grad.clone(), loss_fn.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_sampling_scores_positives_plus_random_negatives(chunk_size):
    loss_fn = _module(c=100, sample_rate=0.2, chunk_size=chunk_size)
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([3, 3, 50, 99, 0, 50])
    loss = loss_fn(x, y)
    loss.backward()
    index = loss_fn.last_sampled
    assert index.numel() == 20 and index.unique().numel() == 20
    assert torch.equal(index, index.sort().values)
    assert set(y.tolist()) <= set(index.tolist())
    # the loss is the dense loss over the sampled centers, labels remapped
    remapped = torch.searchsorted(index, y)
    assert torch.equal(index[remapped], y)
    ref_loss, ref_gx, ref_gw = _reference_grads(x, loss_fn.weight[index], remapped)
    torch.testing.assert_close(loss.detach(), ref_loss)
    torch.testing.assert_close(x.grad, ref_gx)
    torch.testing.assert_close(loss_fn.weight.grad[index], ref_gw)
    # rows that were not sampled get exactly zero gradient
    unsampled = torch.ones(100, dtype=torch.bool)
    unsampled[index] = False
    assert torch.count_nonzero(loss_fn.weight.grad[unsampled]) == 0


@given(
    num_classes=st.integers(1, 60),
    rate=st.floats(0.01, 1.0),
    labels=st.lists(st.integers(0, 59), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
)
def test_sampling_invariants(num_classes, rate, labels, seed, dtype):
    y = torch.tensor([v % num_classes for v in labels])
    loss_fn = PartialFCLoss(num_classes, 3, sample_rate=rate, chunk_size=7)
    torch.manual_seed(seed)
    x = torch.randn(len(y), 3).to(dtype).requires_grad_(True)
    loss = loss_fn(x, y)
    loss.backward()
    assert loss.dtype == dtype and torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss_fn.weight.grad).all()
    if dtype == torch.float16:  # a row of tiny norm: its gradient divisor is floored, not 1e-12
        tiny = torch.full((1, 3), 1e-4, dtype=dtype, requires_grad=True)
        PartialFCLoss(num_classes, 3, sample_rate=rate, chunk_size=7)(tiny, y[:1]).backward()
        assert torch.isfinite(tiny.grad).all()
    positives = set(y.tolist())
    if rate == 1.0:
        assert loss_fn.last_sampled is None
        return
    index = loss_fn.last_sampled.tolist()
    assert index == sorted(set(index)) and positives <= set(index)
    assert len(index) == max(int(rate * num_classes), len(positives))
    assert all(0 <= i < num_classes for i in index)


def test_on_device_with_sampling_and_chunks(device):
    torch.manual_seed(3)
    loss_fn = PartialFCLoss(500, 16, sample_rate=0.3, chunk_size=64, device=device)
    assert loss_fn.weight.device.type == device.type
    x = torch.randn(24, 16, device=device, requires_grad=True)
    y = torch.randint(0, 500, (24,), device=device)
    loss = loss_fn(x, y)
    loss.backward()
    index = loss_fn.last_sampled.cpu()
    assert index.numel() == 150 and set(y.tolist()) <= set(index.tolist())
    remapped = torch.searchsorted(index, y.cpu())
    ref_loss, ref_gx, ref_gw = _reference_grads_with(
        x.cpu(), loss_fn.weight.cpu()[index], remapped, ArcFaceMargin(0.5), 64.0
    )
    torch.testing.assert_close(loss.detach().cpu().double(), ref_loss, rtol=1e-5, atol=0)
    tol = 1e-5 * ref_gx.abs().max().item()
    torch.testing.assert_close(x.grad.cpu().double(), ref_gx, rtol=1e-5, atol=tol)
    tol = 1e-5 * ref_gw.abs().max().item()
    torch.testing.assert_close(
        loss_fn.weight.grad.cpu()[index].double(), ref_gw, rtol=1e-5, atol=tol
    )


def test_sampling_keeps_all_positives_beyond_the_rate():
    loss_fn = _module(c=20, sample_rate=0.1)
    y = torch.arange(5)  # 5 positives > int(0.1 * 20) = 2
    loss_fn(torch.randn(5, 8, dtype=torch.float64), y)
    assert loss_fn.last_sampled.tolist() == [0, 1, 2, 3, 4]


def test_sampling_is_deterministic_given_the_rng():
    loss_fn = _module(c=1000, sample_rate=0.05)
    x = torch.randn(4, 8, dtype=torch.float64)
    y = torch.tensor([1, 2, 3, 4])
    torch.manual_seed(123)
    first = loss_fn(x, y)
    idx = loss_fn.last_sampled
    torch.manual_seed(123)
    again = loss_fn(x, y)
    assert torch.equal(idx, loss_fn.last_sampled) and torch.equal(first, again)
    loss_fn(x, y)
    assert not torch.equal(idx, loss_fn.last_sampled)


def test_weight_init_is_reproducible_and_small():
    torch.manual_seed(5)
    a = PartialFCLoss(50, 4, margin=arcface_safe).weight
    torch.manual_seed(5)
    b = PartialFCLoss(50, 4, margin=arcface_safe).weight
    assert torch.equal(a, b)
    assert 0.005 < a.std().item() < 0.02


def test_full_state_dict_round_trip_single_process():
    src, dst = _module(c=12, d=3), _module(c=12, d=3)
    with torch.no_grad():
        dst.weight.zero_()
    state = src.full_state_dict()
    assert state["weight"].shape == (12, 3) and state["weight"].device.type == "cpu"
    dst.load_full_state_dict(state)
    assert torch.equal(dst.weight, src.weight)
    with pytest.raises(ValueError, match=r"weight must have shape \(12, 3\)"):
        dst.load_full_weight(torch.zeros(11, 3))


def test_autocast_and_half_embeddings_stay_float32():
    loss_fn = PartialFCLoss(30, 8, margin=arcface_safe, scale=SCALE)
    x = torch.randn(5, 8)
    y = torch.randint(0, 30, (5,))
    plain = loss_fn(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = loss_fn(x, y)
    torch.testing.assert_close(cast, plain, rtol=0, atol=0)
    half = loss_fn(x.half(), y)
    ref = dense_reference(x.half().double(), loss_fn.weight.double(), y)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), ref.detach(), rtol=1e-3, atol=0)


def test_float_margin_is_arcface_like_arcface_loss():
    # the same convention as ArcFaceLoss(margin=...): a float is ArcFace's margin in radians
    assert PartialFCLoss(10, 4, margin=0.3).margin == ArcFaceMargin(0.3)
    assert PartialFCLoss(10, 4, 0.3).margin == ArcFaceLoss(10, 4, 0.3).margin
    assert PartialFCLoss(10, 4).margin == ArcFaceLoss(10, 4).margin == ArcFaceMargin(0.5)
    with pytest.raises(ValueError, match=r"in radians.*math\.radians\(28\.6\)"):
        PartialFCLoss(10, 4, margin=28.6)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_adaface_margin_uses_the_batch_norm_statistics(chunk_size, rate):
    # AdaFace is an ordinary margin here too: with the statistics of the batch's norms
    margin = AdaFaceMargin(0.4, 0.333)
    loss_fn = _module(c=12, d=5, margin=margin, chunk_size=chunk_size, sample_rate=rate)
    g = torch.Generator().manual_seed(14)
    x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    x = (x * torch.linspace(1.0, 30.0, 9, dtype=torch.float64)[:, None]).requires_grad_(True)
    y = torch.randint(0, 12, (9,), generator=g)
    loss = loss_fn(x, y)
    loss.backward()
    index = loss_fn.last_sampled
    w, labels = loss_fn.weight, y
    if index is not None:
        w, labels = w[index], torch.searchsorted(index, y)
    norms = x.detach().norm(dim=1)
    ref_loss, ref_gx, _ = _reference_grads_with(x, w, labels, lambda c: margin(c, norms), SCALE)
    torch.testing.assert_close(loss.detach(), ref_loss)
    torch.testing.assert_close(x.grad, ref_gx)


def test_rejects_bad_input():
    loss_fn = PartialFCLoss(10, 4, margin=arcface_safe)
    x = torch.randn(3, 4)
    with pytest.raises(
        ValueError, match=r"labels must be in \[0, num_classes=10\), got a label 10"
    ):
        loss_fn(x, torch.tensor([0, 10, 1]))
    with pytest.raises(
        ValueError, match=r"labels must be in \[0, num_classes=10\), got a label -1"
    ):
        loss_fn(x, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match=r"embeddings must have shape \(batch, 4\), got shape"):
        loss_fn(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels must have one entry per embedding"):
        loss_fn(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="sample_rate must be in"):
        PartialFCLoss(10, 4, margin=arcface_safe, sample_rate=0.0)
    with pytest.raises(ValueError, match="sample_rate must be in"):
        PartialFCLoss(10, 4, margin=arcface_safe, sample_rate=1.5)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        PartialFCLoss(10.0, 4, margin=arcface_safe)
    with pytest.raises(TypeError, match="margin must be callable"):
        PartialFCLoss(10, 4, margin="arcface")
    with pytest.raises(TypeError, match="margin must be a real number, got bool"):
        PartialFCLoss(10, 4, margin=True)
    with pytest.raises(ValueError, match=r"same device as the class centers \(weight\) \(cpu\)"):
        PartialFCLoss(10, 4)(torch.zeros(3, 4, device="meta"), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="chunk_size must be in"):
        PartialFCLoss(10, 4, margin=arcface_safe, chunk_size=0)


# --------------------------------------------------------------------------- distributed
SIZES = (3, 5)  # uneven batches per rank
NUM_CLASSES, DIM = 7, 4  # uneven class split: 4 + 3


def _global_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SIZES), DIM, generator=g, dtype=torch.float64)
    w = torch.randn(NUM_CLASSES, DIM, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 6, 0, 0, 4, 5, 6, 5])  # shard 0 has one positive class
    return x, w, y


def _sharded_worker(rank: int, world_size: int):
    x, w, y = _global_problem()
    start = sum(SIZES[:rank])
    local_x = x[start : start + SIZES[rank]].clone().requires_grad_(True)
    local_y = y[start : start + SIZES[rank]]
    out = {}
    for chunk in (None, 2):
        loss_fn = PartialFCLoss(
            NUM_CLASSES, DIM, margin=arcface_safe, scale=SCALE, chunk_size=chunk,
            dtype=torch.float64,
        )  # fmt: skip
        loss_fn.load_full_weight(w)
        local_x.grad = None
        loss = loss_fn(local_x, local_y)
        loss.backward()
        out[f"loss{chunk}"] = loss.detach()
        out[f"gx{chunk}"] = local_x.grad.clone()
        out[f"gw{chunk}"] = loss_fn.weight.grad.clone()
    out["range"] = torch.tensor([loss_fn.class_start, loss_fn.class_stop])
    # checkpoint helpers: gather everywhere, gather to rank 1 only
    out["full"] = loss_fn.gather_weight()
    to_one = loss_fn.full_state_dict(dst=1)
    out["full_on_1"] = torch.zeros(0) if to_one is None else to_one["weight"]
    # any per-center tensor (an optimizer moment, here with extra trailing dimensions and
    # integer entries): gathered to rank 0 in class order, and local_shard gives the rows back
    moment = torch.arange(NUM_CLASSES * DIM * 2).view(NUM_CLASSES, DIM, 2)
    gathered = loss_fn.gather_shard(loss_fn.local_shard(moment), dst=0)
    out["moment_on_0"] = torch.zeros(0) if gathered is None else gathered
    # class-center sampling per shard: 50% of each shard plus that shard's positives
    torch.manual_seed(rank)
    sampled = PartialFCLoss(
        NUM_CLASSES, DIM, margin=arcface_safe, scale=SCALE, sample_rate=0.5, dtype=torch.float64
    )
    sampled.load_full_weight(w)
    local_x.grad = None
    loss = sampled(local_x, local_y)
    loss.backward()
    out["s_loss"] = loss.detach()
    out["s_gx"] = local_x.grad.clone()
    out["s_gw"] = sampled.weight.grad.clone()
    out["s_index"] = sampled.last_sampled + sampled.class_start
    # more ranks than classes: rank 1 holds no class at all
    tiny = PartialFCLoss(1, DIM, margin=arcface_safe, scale=SCALE, dtype=torch.float64)
    tiny.load_full_weight(w[:1])
    local_x.grad = None
    loss = tiny(local_x, torch.zeros(SIZES[rank], dtype=torch.long))
    loss.backward()
    out["t_loss"], out["t_gx"], out["t_gw"] = loss.detach(), local_x.grad.clone(), tiny.weight.grad
    out["t_full"] = tiny.gather_weight()
    # the documented DDP recipe: backbone in DDP, head outside; DDP averages the backbone's
    # gradients, so they are 1 / world_size of the global loss's gradient
    backbone = _backbone()
    ddp = torch.nn.parallel.DistributedDataParallel(backbone)
    head = PartialFCLoss(NUM_CLASSES, DIM, margin=arcface_safe, scale=SCALE, dtype=torch.float64)
    head.load_full_weight(w)
    head(ddp(_inputs()[start : start + SIZES[rank]]), local_y).backward()
    out["ddp_grad"] = backbone.weight.grad.clone()
    out["ddp_head_grad"] = head.weight.grad.clone()
    # the documented fix: scale the gradient entering the backbone by world_size, which gives
    # one process's gradient exactly (for any optimizer, weight decay included)
    backbone = _backbone()
    ddp = torch.nn.parallel.DistributedDataParallel(backbone)
    head = PartialFCLoss(NUM_CLASSES, DIM, margin=arcface_safe, scale=SCALE, dtype=torch.float64)
    head.load_full_weight(w)
    emb = ddp(_inputs()[start : start + SIZES[rank]])
    emb.register_hook(lambda grad: grad * world_size)
    head(emb, local_y).backward()
    out["ddp_hook_grad"] = backbone.weight.grad.clone()
    out["ddp_hook_head_grad"] = head.weight.grad.clone()
    return out


def _backbone() -> torch.nn.Linear:
    torch.manual_seed(7)
    return torch.nn.Linear(3, DIM, dtype=torch.float64)


def _inputs() -> torch.Tensor:
    return torch.randn(
        sum(SIZES), 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64
    )


@pytest.mark.distributed
def test_sharded_equals_single_process_dense():
    results = run_distributed(_sharded_worker, world_size=2)
    x, w, y = _global_problem()
    ref_loss, ref_gx, ref_gw = _reference_grads(x, w, y)
    for rank, out in enumerate(results):
        start, stop = shard_range(NUM_CLASSES, 2, rank)
        assert out["range"].tolist() == [start, stop]
        b0 = sum(SIZES[:rank])
        for chunk in (None, 2):
            torch.testing.assert_close(out[f"loss{chunk}"], ref_loss)
            torch.testing.assert_close(out[f"gx{chunk}"], ref_gx[b0 : b0 + SIZES[rank]])
            torch.testing.assert_close(out[f"gw{chunk}"], ref_gw[start:stop])
        assert torch.equal(out["full"], w)
    assert results[0]["full_on_1"].numel() == 0 and torch.equal(results[1]["full_on_1"], w)
    moment = torch.arange(NUM_CLASSES * DIM * 2).view(NUM_CLASSES, DIM, 2)
    assert torch.equal(results[0]["moment_on_0"], moment)
    assert results[1]["moment_on_0"].numel() == 0

    # sampling: every positive of each shard is scored, plus int(0.5 * shard) in total
    index = torch.cat([out["s_index"] for out in results])
    assert set(y.tolist()) <= set(index.tolist())
    assert len(results[0]["s_index"]) == 2  # class 0 and one random negative
    assert results[1]["s_index"].tolist() == [4, 5, 6]  # three positives > int(0.5 * 3)
    remapped = torch.searchsorted(index, y)
    s_loss, s_gx, s_gw = _reference_grads(x, w[index], remapped)
    full_gw = torch.zeros_like(w)
    full_gw[index] = s_gw
    for rank, out in enumerate(results):
        start, stop = shard_range(NUM_CLASSES, 2, rank)
        b0 = sum(SIZES[:rank])
        torch.testing.assert_close(out["s_loss"], s_loss)
        torch.testing.assert_close(out["s_gx"], s_gx[b0 : b0 + SIZES[rank]])
        torch.testing.assert_close(out["s_gw"], full_gw[start:stop], rtol=1e-7, atol=0)

    backbone = _backbone()
    w_ref = w.clone().requires_grad_(True)
    dense_reference(backbone(_inputs()), w_ref, y).backward()
    for rank, out in enumerate(results):
        start, stop = shard_range(NUM_CLASSES, 2, rank)
        torch.testing.assert_close(out["ddp_grad"], backbone.weight.grad / 2)
        torch.testing.assert_close(out["ddp_head_grad"], w_ref.grad[start:stop])
        torch.testing.assert_close(out["ddp_hook_grad"], backbone.weight.grad)
        torch.testing.assert_close(out["ddp_hook_head_grad"], w_ref.grad[start:stop])

    t_loss, t_gx, t_gw = _reference_grads(x, w[:1], torch.zeros_like(y))
    assert results[1]["t_gw"].shape == (0, DIM)
    torch.testing.assert_close(results[0]["t_gw"], t_gw)
    for rank, out in enumerate(results):
        b0 = sum(SIZES[:rank])
        torch.testing.assert_close(out["t_loss"], t_loss)
        torch.testing.assert_close(out["t_gx"], t_gx[b0 : b0 + SIZES[rank]])
        assert torch.equal(out["t_full"], w[:1])


def test_gather_rejects_a_destination_outside_the_ranks():
    loss_fn = PartialFCLoss(12, 3, margin=arcface_safe)
    for dst in (1, -1):  # silently returning None everywhere would drop the head from a save
        with pytest.raises(ValueError, match=r"dst must be in \[0, 0\]"):
            loss_fn.full_state_dict(dst=dst)
    with pytest.raises(TypeError, match="dst must be an int"):
        loss_fn.gather_weight(dst=0.0)
    assert loss_fn.gather_weight(dst=0).shape == (12, 3)


def test_shard_helpers_name_a_tensor_of_the_wrong_layout():
    loss_fn = PartialFCLoss(12, 3, margin=arcface_safe, sub_centers=2)
    with pytest.raises(ValueError, match=r"shard must have 24 rows .* got shape \(12, 3\)"):
        loss_fn.gather_shard(torch.zeros(12, 3))
    with pytest.raises(ValueError, match=r"full must have 24 rows .* got shape \(\)"):
        loss_fn.local_shard(torch.tensor(1.0))
    with pytest.raises(TypeError, match="shard must be a torch.Tensor, got list"):
        loss_fn.gather_shard([0.0] * 24)
    momentum = torch.randn(24, 3)
    assert torch.equal(loss_fn.local_shard(loss_fn.gather_shard(momentum)), momentum)


@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 8),
    rate=st.sampled_from([1.0, 0.5]),
    chunk_size=st.sampled_from([None, 3]),
    factors=st.lists(st.floats(1e-3, 1e3), min_size=8, max_size=8),
    data=st.data(),
)
def test_invariant_to_embedding_norm_and_batch_permutation(
    seed, batch, rate, chunk_size, factors, data
):
    loss_fn = _module(c=13, d=5, sample_rate=rate, chunk_size=chunk_size)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 13, (batch,), generator=g)
    perm = torch.tensor(data.draw(st.permutations(range(batch))), dtype=torch.long)
    scale = torch.tensor(factors[:batch], dtype=torch.float64)[:, None]

    def run(inputs, labels):
        inputs = inputs.clone().requires_grad_(True)
        loss_fn.weight.grad = None
        torch.manual_seed(seed)  # the same negatives: sampling depends on the label set only
        loss = loss_fn(inputs, labels)
        loss.backward()
        return loss.detach(), inputs.grad, loss_fn.weight.grad.clone(), loss_fn.last_sampled

    loss, gx, gw, index = run(x, y)
    for inputs, labels, back in ((x * scale, y, None), (x[perm], y[perm], perm)):
        other, ogx, ogw, oindex = run(inputs, labels)
        torch.testing.assert_close(other, loss)
        torch.testing.assert_close(ogw, gw)
        assert (index is None and oindex is None) or torch.equal(index, oindex)
        if back is None:  # d loss / d (a x) = (d loss / d x) / a
            torch.testing.assert_close(ogx * scale, gx)
        else:
            torch.testing.assert_close(ogx, gx[back])
