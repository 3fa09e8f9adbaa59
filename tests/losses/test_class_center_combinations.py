"""Every margin with every option that scales the class-center loss, against the references.

Each combination of a margin (AdaFace included), a way to score the classes (dense, chunked,
sampled, sharded over 2 gloo ranks) and ``sub_centers`` in {1, 3} computes the loss and its
gradients with respect to the embeddings and the centers, and compares them with

* a float64 re-derivation from the papers' formulas (``acos``, dense ``(B, C)`` logits,
  sub-centers max-pooled, sampled classes only),
* pytorch-metric-learning where it has the loss (ArcFace, sub-center ArcFace, CosFace,
  NormSoftmax),

with the tolerances of the dense cross-checks (``test_margin_losses.py``), and checks that
centers equal or opposite to the embeddings, duplicates and zero rows give finite losses and
gradients in half precision. All sharded combinations run in one spawned process group.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _margin_reference import _adaface, _arc_easy, _combined, _sphere, reference_loss
from distributed_harness import run_distributed

from metricface.losses import (
    AdaFaceLoss,
    ArcFaceMargin,
    CombinedMargin,
    CosFaceMargin,
    MarginSoftmaxLoss,
    NoMargin,
    PartialFCLoss,
    SphereFaceMargin,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

B, D, C = 24, 32, 40
SIZES = (10, 14)  # the ranks' local batches
CHUNK = 7  # 40 classes: 6 chunks, the last one partial
RATE = 0.5
SAVED = Path(__file__).parents[1] / "data" / "class_center_state_dicts_f0290da.pt"
MOMENTUM = 0.5  # AdaFaceLoss: the running statistics move half way to the batch's


def _arcface(m):
    return lambda t, n: torch.where(
        t + m <= math.pi, torch.cos(t + m), torch.cos(t) - m * math.sin(m)
    )


def _adaface_running(t, norms):
    """AdaFaceLoss in training mode: statistics half way from (20, 100) to the batch's."""
    z = norms.clamp(1e-3, 100)
    mean = (1 - MOMENTUM) * 20 + MOMENTUM * z.mean()
    std = (1 - MOMENTUM) * 100 + MOMENTUM * z.std()
    return _adaface(0.4, 0.333, 1e-3, mean, std)(t, norms)


# name -> (margin, scale, float64 target logit as a function of (theta, norms))
MARGINS = {
    "none": (NoMargin(), 20.0, lambda t, _n: torch.cos(t)),
    "cosface": (CosFaceMargin(0.35), 64.0, lambda t, _n: torch.cos(t) - 0.35),
    "arcface": (ArcFaceMargin(0.5), 64.0, _arcface(0.5)),
    "arcface-easy": (ArcFaceMargin(0.5, easy_margin=True), 64.0, _arc_easy(0.5)),
    "sphereface": (SphereFaceMargin(1.35), 64.0, _sphere(1.35)),
    "combined": (CombinedMargin(1.0, 0.3, 0.2), 64.0, _combined(1.0, 0.3, 0.2)),
    "adaface": (None, 64.0, _adaface_running),
}
MODES = {
    "dense": {},
    "chunked": {"chunk_size": CHUNK},
    "sampled": {"sample_rate": RATE},
    "sharded": {},  # + process_group, in the spawned ranks
    "sharded-sampled-chunked": {"sample_rate": RATE, "chunk_size": 3},
}
LOCAL_MODES = ["dense", "chunked", "sampled"]
SHARDED_MODES = ["sharded", "sharded-sampled-chunked"]


def _make(name: str, k: int, mode: str, dtype: torch.dtype, group=None):
    margin, scale, _ = MARGINS[name]
    options = dict(MODES[mode], sub_centers=k, process_group=group)
    if name == "adaface":
        loss_fn = AdaFaceLoss(C, D, 0.4, 0.333, scale, momentum=MOMENTUM, **options)
    else:
        loss_fn = MarginSoftmaxLoss(C, D, margin, scale, **options)
    loss_fn = loss_fn.to(dtype)
    loss_fn.load_full_weight(_problem(k)[1].to(dtype))
    return loss_fn


def _problem(k: int):
    """Embeddings (B, D) of varied norms, unit-scale centers (C * k, D), labels, float64."""
    g = torch.Generator().manual_seed(7 + k)
    x = torch.randn(B, D, generator=g, dtype=torch.float64) * (
        1 + 10 * torch.rand(B, 1, generator=g)
    )
    w = torch.randn(C * k, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    y[:3] = torch.tensor([0, C - 1, C - 1])  # the first and the last (partial) chunk
    return x, w, y


def _rows(classes: torch.Tensor, k: int) -> torch.Tensor:
    return (classes[:, None] * k + torch.arange(k)).reshape(-1)


def _references(name, k, x, w, y, sampled, dtype=torch.float64):
    """Float64 reference and, where it has the loss, pytorch-metric-learning's (in ``dtype``):
    each ``(loss, grad_x, grad_w)`` in float64, ``grad_w`` zero outside the sampled classes."""
    _, scale, target_fn = MARGINS[name]
    classes = torch.arange(C) if sampled is None else sampled
    rows, labels = _rows(classes, k), torch.searchsorted(classes, y)
    out = {}
    peers = {
        ("arcface", 1): lambda c: pml_losses.ArcFaceLoss(c, D, margin=math.degrees(0.5), scale=64),
        ("arcface", 3): lambda c: pml_losses.SubCenterArcFaceLoss(
            num_classes=c, embedding_size=D, margin=math.degrees(0.5), scale=64, sub_centers=3
        ),
        ("cosface", 1): lambda c: pml_losses.CosFaceLoss(c, D, margin=0.35, scale=64),
        ("none", 1): lambda c: pml_losses.NormalizedSoftmaxLoss(c, D, temperature=0.05),
    }
    for ref in ("float64", "pml"):
        cast = torch.float64 if ref == "float64" else dtype
        xr = x.detach().to(cast).requires_grad_(True)
        wr = w[rows].detach().to(cast).requires_grad_(True)
        if ref == "float64":
            loss = reference_loss(xr, wr, labels, target_fn, scale, k)
            param = wr
        elif (name, k) in peers:
            peer = peers[name, k](len(classes)).to(dtype)
            with torch.no_grad():
                peer.W.copy_(wr.t())
            loss, param = peer(xr, labels), peer.W
        else:
            continue
        gx, gw = torch.autograd.grad(loss, [xr, param])
        full_gw = torch.zeros_like(w)
        full_gw[rows] = (gw if ref == "float64" else gw.t()).double()
        out[ref] = (loss.detach().double(), gx.double(), full_gw)
    return out


TOLERANCES = {  # those of the dense cross-checks
    ("float64", torch.float64): ({"rtol": 1e-11, "atol": 1e-13},) * 2,
    ("pml", torch.float64): ({"rtol": 1e-11, "atol": 0}, {"rtol": 1e-10, "atol": 1e-14}),
    ("float64", torch.float32): ({"rtol": 1e-4, "atol": 1e-5},) * 2,
    ("pml", torch.float32): ({"rtol": 1e-5, "atol": 1e-6}, {"rtol": 1e-4, "atol": 1e-6}),
}


def _compare(ours, refs, dtype, sampled_rows=None):
    loss, gx, gw = ours
    assert loss.dtype == gx.dtype == gw.dtype == dtype
    for ref, (r_loss, r_gx, r_gw) in refs.items():
        ltol, gtol = TOLERANCES[ref, dtype]
        torch.testing.assert_close(loss.double(), r_loss, **ltol)
        torch.testing.assert_close(gx.double(), r_gx, **gtol)
        torch.testing.assert_close(gw.double(), r_gw, **gtol)
    if sampled_rows is not None:  # rows of classes not sampled: exactly zero
        unsampled = torch.ones(len(gw), dtype=torch.bool)
        unsampled[sampled_rows] = False
        assert torch.count_nonzero(gw[unsampled]) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("k", [1, 3], ids=["k1", "k3"])
@pytest.mark.parametrize("mode", LOCAL_MODES)
@pytest.mark.parametrize("name", list(MARGINS))
def test_matches_references(name, mode, k, dtype):
    x, w, y = _problem(k)
    torch.manual_seed(3)
    loss_fn = _make(name, k, mode, dtype)
    xs = x.to(dtype).requires_grad_(True)
    loss = loss_fn(xs, y)
    gx, gw = torch.autograd.grad(loss, [xs, loss_fn.weight])
    sampled = loss_fn.last_sampled
    if mode == "sampled":
        assert sampled is not None and set(y.tolist()) <= set(sampled.tolist())
        assert len(sampled) == int(RATE * C)
    refs = _references(name, k, xs.detach().double(), w.to(dtype).double(), y, sampled, dtype)
    rows = None if sampled is None else _rows(sampled, k)
    _compare((loss.detach(), gx, gw), refs, dtype, rows)
    if name == "adaface":  # the running statistics moved half way to the batch's
        norms = xs.detach().double().norm(dim=1).clamp(1e-3, 100)
        expected = torch.stack([10 + norms.mean() / 2, 50 + norms.std() / 2])
        got = torch.stack([loss_fn.running_mean, loss_fn.running_std]).double()
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def _extremes(loss_fn, dtype):
    """Rows at (cos = 1), opposite to (cos = -1) and repeating class centers, and zero rows."""
    k = loss_fn.sub_centers
    full = loss_fn.gather_weight().double()
    labels = torch.tensor([0, 3, 3, C - 1, 2, 2, 5, 0])
    centers = full[labels * k] * 50
    x = torch.cat([centers[:3], -centers[3:6], torch.zeros(2, D, dtype=torch.float64)])
    return torch.cat([x, x]).to(dtype), torch.cat([labels, labels])


def _finite_step(loss_fn, x, labels):
    x = x.detach().clone().requires_grad_(True)
    loss = loss_fn(x, labels)
    gx, gw = torch.autograd.grad(loss, [x, loss_fn.weight])
    return torch.isfinite(loss).all() & torch.isfinite(gx).all() & torch.isfinite(gw).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k", [1, 3], ids=["k1", "k3"])
@pytest.mark.parametrize("mode", LOCAL_MODES)
@pytest.mark.parametrize("name", list(MARGINS))
def test_finite_at_centers_opposites_duplicates_and_zero_rows(name, mode, k, dtype):
    loss_fn = _make(name, k, mode, dtype)
    x, labels = _extremes(loss_fn, dtype)
    assert _finite_step(loss_fn, x, labels)


# ----------------------------------------------------------------------------- sharded


def _sharded_worker(rank: int, world_size: int) -> dict:
    group = dist.group.WORLD
    start = sum(SIZES[:rank])
    out: dict = {}
    # a shard saved before the pipeline was unified (test_state_dict_compat.py) loads on its rank
    saved = torch.load(SAVED, weights_only=True)
    head = PartialFCLoss(7, 4)
    head.load_state_dict(saved["partial_fc_sharded"]["states"][rank], strict=True)
    local = slice(rank * 3, rank * 3 + 3)
    out["saved_loss"] = head(saved["x"][local], saved["y"][local]).detach()
    for name in MARGINS:
        for k in (1, 3):
            x, _, y = _problem(k)
            for mode in SHARDED_MODES:
                torch.manual_seed(100 + rank)  # each rank draws its own negatives
                loss_fn = _make(name, k, mode, torch.float64, group)
                xs = x[start : start + SIZES[rank]].clone().requires_grad_(True)
                loss = loss_fn(xs, y[start : start + SIZES[rank]])
                gx, gw = torch.autograd.grad(loss, [xs, loss_fn.weight])
                sampled = loss_fn.last_sampled
                out[f"{name}/{k}/{mode}"] = {
                    "loss": loss.detach(),
                    "gx": gx,
                    "gw": gw,
                    "sampled": torch.zeros(0, dtype=torch.long)
                    if sampled is None
                    else sampled + loss_fn.class_start,
                    "stats": torch.stack([loss_fn.running_mean, loss_fn.running_std])
                    if name == "adaface"
                    else torch.zeros(0),
                }
            for dtype in (torch.float16, torch.float32):
                loss_fn = _make(name, k, "sharded-sampled-chunked", dtype, group)
                xe, labels = _extremes(loss_fn, dtype)
                local = slice(rank * 8, rank * 8 + 8)  # each rank brings half of the rows
                out[f"{name}/{k}/finite/{dtype}"] = _finite_step(loss_fn, xe[local], labels[local])
    return out


@pytest.mark.distributed
def test_sharded_matches_references():
    results = run_distributed(_sharded_worker, world_size=2)
    saved_loss = torch.load(SAVED, weights_only=True)["partial_fc_sharded"]["loss"]
    for out in results:
        torch.testing.assert_close(out["saved_loss"], saved_loss, rtol=1e-6, atol=0)
    for name in MARGINS:
        for k in (1, 3):
            x, w, y = _problem(k)
            for mode in SHARDED_MODES:
                key = f"{name}/{k}/{mode}"
                sampled = torch.cat([out[key]["sampled"] for out in results])
                sampled = None if mode == "sharded" else sampled
                refs = _references(name, k, x, w, y, sampled)
                # the ranks' shards in rank order are the single-process weight
                gw = torch.cat([out[key]["gw"] for out in results])
                gx = torch.cat([out[key]["gx"] for out in results])
                for out in results:  # every rank returns the loss of the global batch
                    ours = (out[key]["loss"], gx, gw)
                    rows = None if sampled is None else _rows(sampled, k)
                    _compare(ours, refs, torch.float64, rows)
                if name == "adaface":  # statistics of the global batch, the same on each rank
                    torch.testing.assert_close(results[0][key]["stats"], results[1][key]["stats"])
            for dtype in (torch.float16, torch.float32):
                for out in results:
                    assert out[f"{name}/{k}/finite/{dtype}"], (name, k, dtype)
