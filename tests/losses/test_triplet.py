"""TripletMarginLoss against pytorch-metric-learning and a float64 brute-force re-derivation."""

from __future__ import annotations

import math

import pytest
import torch
from _pml import assert_matches_peer, batch_factory, peer_distance, pml_losses, pml_miners
from hypothesis import assume, given
from hypothesis import strategies as st

from metricface.distances import pairwise_matrix
from metricface.losses import TripletMarginLoss
from metricface.losses import triplet as triplet_module
from metricface.miners import BatchHardMiner, TripletMarginMiner

_batch = batch_factory(36, 12, 6, torch.float64)


def _peer(distance="euclidean", **kwargs):
    dist = peer_distance(distance)
    return pml_losses.TripletMarginLoss(distance=dist, **kwargs)


def _brute_force(x, y, margin, swap=False, smooth=False, ref=None, ref_y=None, gap=False):
    """float64 re-derivation over the explicit B x R x R triplet cube (small B only).

    With ``gap=True`` also return how close the nearest hinge argument is to 0: the mean over
    non-zero terms jumps there, so a comparison is only meaningful away from it.
    """
    x = torch.nn.functional.normalize(x.double(), dim=1)
    r = x if ref is None else torch.nn.functional.normalize(ref.double(), dim=1)
    ry = y if ref_y is None else ref_y
    d = (x[:, None, :] - r[None, :, :]).pow(2).sum(-1).sqrt()
    rr = (r[:, None, :] - r[None, :, :]).pow(2).sum(-1).sqrt()
    same = y[:, None] == ry[None, :]
    positive = same.clone()
    if ref is None:
        positive.fill_diagonal_(False)
    valid = positive[:, :, None] & ~same[:, None, :]  # [a, p, n]
    an = d[:, None, :].expand(-1, len(r), -1)
    if swap:
        an = torch.minimum(an, rr[None, :, :])
    v = d[:, :, None] - an + margin
    terms = (torch.nn.functional.softplus(v) if smooth else torch.relu(v))[valid]
    nz = terms[terms > 0]
    value = nz.mean() if nz.numel() else torch.zeros((), dtype=torch.float64)
    if gap:
        return value, (v[valid].abs().min().item() if valid.any() else float("inf"))
    return value


@pytest.fixture(params=["chunked", "sorted"])
def all_triplet_path(request, monkeypatch):
    """Run a test through both all-triplet implementations."""
    threshold = 10**9 if request.param == "chunked" else -1
    monkeypatch.setattr(triplet_module, "SORTED_MIN_POSITIVES_PER_ANCHOR", threshold)
    return request.param


@pytest.mark.usefixtures("all_triplet_path")
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"margin": 0.3}, {"swap": True}, {"smooth_loss": True}, {"swap": True, "margin": 0.5}],
)
def test_labels_only_matches_pml(distance, kwargs):
    x, y = _batch()
    ours = TripletMarginLoss(distance=distance, chunk_elements=400, **kwargs)
    assert_matches_peer(ours, _peer(distance, **kwargs), x, y, tight=True)


def test_same_index_tuples_match_pml_both_directions():
    x, y = _batch(seed=1)
    ours, peer = TripletMarginLoss(margin=0.1), pml_losses.TripletMarginLoss(margin=0.1)
    tuples = [
        pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")(x, y),
        BatchHardMiner()(x, y),
        pml_miners.MultiSimilarityMiner()(x, y),  # pairs: converted to triplets per anchor
    ]
    for t in tuples:
        assert_matches_peer(ours, peer, x, y, indices_tuple=t, tight=True)
    # labels are optional with an indices tuple
    t = TripletMarginMiner(0.2)(x, y)
    torch.testing.assert_close(ours(x, indices_tuple=t), peer(x, y, indices_tuple=t))


@pytest.mark.usefixtures("all_triplet_path")
def test_ref_emb_matches_pml():
    x, y = _batch(20, seed=2)
    r, ry = _batch(30, seed=3)
    ours, peer = TripletMarginLoss(margin=0.2), pml_losses.TripletMarginLoss(margin=0.2)
    lo = assert_matches_peer(ours, peer, x, y, ref_emb=r, ref_labels=ry)
    ref = _brute_force(x, y, 0.2, ref=r, ref_y=ry)
    torch.testing.assert_close(lo, ref)


def test_swap_with_ref_uses_reference_distances():
    x, y = _batch(8, 6, 3, seed=4)
    r, ry = _batch(10, 6, 3, seed=5)
    loss = TripletMarginLoss(margin=0.3, swap=True, chunk_elements=4)(
        x, y, ref_emb=r, ref_labels=ry
    )
    torch.testing.assert_close(loss, _brute_force(x, y, 0.3, swap=True, ref=r, ref_y=ry))


@given(
    labels=st.lists(st.integers(0, 3), min_size=2, max_size=14),
    seed=st.integers(0, 2**16),
    margin=st.floats(0.0, 1.0),
    duplicate=st.booleans(),
    smooth=st.booleans(),
    sorted_path=st.booleans(),
)
def test_matches_brute_force(labels, seed, margin, duplicate, smooth, sorted_path):
    threshold = -1 if sorted_path else 10**9
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 5, generator=torch.Generator().manual_seed(seed))
    if duplicate:
        x[-1] = x[0]
    xd = x.double().requires_grad_(True)
    saved = triplet_module.SORTED_MIN_POSITIVES_PER_ANCHOR
    triplet_module.SORTED_MIN_POSITIVES_PER_ANCHOR = threshold
    try:
        loss = TripletMarginLoss(margin=margin, smooth_loss=smooth)(xd, y)
    finally:
        triplet_module.SORTED_MIN_POSITIVES_PER_ANCHOR = saved
    expected, gap = _brute_force(x, y, margin, smooth=smooth, gap=True)
    # a hinge argument within rounding of 0 may count as a non-zero term on one side only
    assume(smooth or gap > 1e-9)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(xd.grad).all()


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("mined", [False, True])
def test_second_order_gradients_match_brute_force(swap, mined):
    # a gradient penalty differentiates the gradient again: the softplus curvature must be kept
    x, y = _batch(9, 5, 3, seed=11)
    same = y[:, None] == y[None, :]
    a, p, n = ((same & ~torch.eye(9, dtype=torch.bool))[:, :, None] & ~same[:, None, :]).nonzero(
        as_tuple=True
    )
    if mined:  # a subset, in the index-tuple form
        a, p, n = a[::3], p[::3], n[::3]
    xd = x.double().requires_grad_(True)
    loss_fn = TripletMarginLoss(0.2, swap=swap, smooth_loss=True, chunk_elements=7)
    loss = loss_fn(xd, y, indices_tuple=(a, p, n)) if mined else loss_fn(xd, y)
    (g,) = torch.autograd.grad(loss, xd, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), xd)

    # float64 re-derivation on the explicit triplets (no distance of a sample to itself)
    xr = x.double().requires_grad_(True)
    u = torch.nn.functional.normalize(xr, dim=1)

    def dist(i, j):
        return (u[i] - u[j]).norm(dim=1)

    an = torch.minimum(dist(a, n), dist(p, n)) if swap else dist(a, n)
    ref = torch.nn.functional.softplus(dist(a, p) - an + 0.2).mean()
    (rg,) = torch.autograd.grad(ref, xr, create_graph=True)
    (rgg,) = torch.autograd.grad(rg.square().sum(), xr)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(g, rg)
    torch.testing.assert_close(gg, rgg)


@pytest.mark.usefixtures("all_triplet_path")
@pytest.mark.parametrize("kwargs", [{}, {"swap": True}, {"smooth_loss": True}])
@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3], [5]])
def test_no_valid_triplet_is_zero_with_graph(kwargs, labels):
    x = torch.randn(len(labels), 8, requires_grad=True)
    loss = TripletMarginLoss(**kwargs)(x, torch.tensor(labels))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    empty = tuple(torch.empty(0, dtype=torch.long) for _ in range(3))
    assert TripletMarginLoss(**kwargs)(x, indices_tuple=empty).item() == 0.0


@pytest.mark.usefixtures("all_triplet_path")
def test_all_triplets_satisfied_is_zero_with_graph():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]], requires_grad=True)
    loss = TripletMarginLoss(margin=0.05)(x, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.usefixtures("all_triplet_path")
@pytest.mark.parametrize("kwargs", [{}, {"swap": True}, {"smooth_loss": True}])
def test_duplicated_embeddings_give_finite_gradients(kwargs):
    x = torch.randn(4, 8).repeat(3, 1).requires_grad_(True)  # every row appears three times
    y = torch.tensor([0, 0, 1, 1]).repeat(3)
    loss = TripletMarginLoss(**kwargs)(x, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    x, y = _batch(24, 16, 4, dtype=torch.float32)
    ref = TripletMarginLoss(margin=0.2)(x.to(dtype).float(), y)
    xh = x.to(dtype).requires_grad_(True)
    loss = TripletMarginLoss(margin=0.2)(xh, y)
    assert loss.dtype == dtype
    loss.backward()
    assert torch.isfinite(xh.grad.float()).all()
    torch.testing.assert_close(loss.float(), ref, rtol=1e-2, atol=1e-2)


def test_input_errors():
    x, y = _batch(6, 4, 2, dtype=torch.float32)
    loss = TripletMarginLoss()
    with pytest.raises(ValueError, match="labels or indices_tuple"):
        loss(x)
    with pytest.raises(ValueError, match="labels must have one entry per embedding"):
        loss(x, y[:3])
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        loss(x, y.float())
    with pytest.raises(ValueError, match=r"indices_tuple\[2\] holds reference indices"):
        loss(x, y, indices_tuple=(torch.tensor([0]), torch.tensor([1]), torch.tensor([6])))
    with pytest.raises(ValueError, match="equal lengths"):
        loss(x, y, indices_tuple=(torch.tensor([0]), torch.tensor([1]), torch.tensor([2, 3])))
    with pytest.raises(ValueError, match="ref_labels is required"):
        loss(x, y, ref_emb=x)
    with pytest.raises(ValueError, match="embedding dimension"):
        loss(x, y, ref_emb=torch.randn(3, 5), ref_labels=y[:3])
    with pytest.raises(ValueError, match="margin must be finite"):
        TripletMarginLoss(margin=float("nan"))
    with pytest.raises(ValueError, match="distance must be one of"):
        TripletMarginLoss(distance="manhattan")
    with pytest.raises(TypeError, match="swap must be a bool"):
        TripletMarginLoss(swap=1)


def _on_the_hinge_batch(dtype):
    """Three identities whose anchor-negative cosines put triplets on and off the hinge.

    Identity 0 at (1, 0), 1 at (0.8, 0.6) and 2 at (0.6, 0.8), 20 copies each: with cosine
    similarity and margin 0.2, ``s_an - s_ap + m`` is ``0.8 - 1 + 0.2`` (the hinge, rounded to
    a tiny positive or zero), ``0.96 - 1 + 0.2 = 0.16`` or negative.
    """
    points = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]], dtype=torch.float64)
    x = points.repeat_interleave(20, dim=0).to(dtype)
    return x, torch.arange(3).repeat_interleave(20)


@pytest.mark.usefixtures("all_triplet_path")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_triplets_on_the_hinge_count_as_the_index_tuple_path_and_pml_count_them(distance, dtype):
    # issue 14, defect 2: with more than 16 positives per anchor the labels-only path tested
    # d_an < d_ap + m; a triplet exactly on the hinge then counted differently from the same
    # triplet given as an index tuple (and from pytorch-metric-learning)
    x, y = _on_the_hinge_batch(dtype)
    same = y[:, None] == y[None, :]
    positive = same & ~torch.eye(len(y), dtype=torch.bool)
    a, p, n = (positive[:, :, None] & ~same[:, None, :]).nonzero(as_tuple=True)
    loss_fn = TripletMarginLoss(margin=0.2, distance=distance)
    labels_only = loss_fn(x, y)
    as_tuples = loss_fn(x, y, indices_tuple=(a, p, n))
    peer = _peer(distance, margin=0.2)(x, y)
    # summation order only: a triplet counted on one side alone moves the mean by over 1 %
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(labels_only, as_tuples, rtol=rtol, atol=0)
    torch.testing.assert_close(labels_only, peer, rtol=1e-6, atol=0)


@given(
    levels=st.lists(st.integers(0, 8), min_size=4, max_size=40),
    n_classes=st.integers(2, 4),
    margin_entries=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    distance=st.sampled_from(["cosine", "euclidean"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_sorted_and_chunked_paths_agree_on_ties(levels, n_classes, margin_entries, distance, dtype):
    # points on a circle at multiples of a fixed angle: many exactly tied distances; the
    # margin is a difference of two of them, so triplets fall on the hinge up to rounding
    angles = torch.tensor(levels, dtype=torch.float64) * 0.3
    x = torch.stack([angles.cos(), angles.sin()], dim=1).to(dtype)
    y = torch.arange(len(levels)) % n_classes
    mat = pairwise_matrix(x, None, distance).flatten()
    i, j = (k % mat.numel() for k in margin_entries)
    margin = abs(float(mat[i]) - float(mat[j]))
    same = y[:, None] == y[None, :]
    positive = same & ~torch.eye(len(y), dtype=torch.bool)
    tuples = (positive[:, :, None] & ~same[:, None, :]).nonzero(as_tuple=True)
    saved = triplet_module.SORTED_MIN_POSITIVES_PER_ANCHOR
    triplet_module.SORTED_MIN_POSITIVES_PER_ANCHOR = -1
    try:
        sorted_loss = TripletMarginLoss(margin=margin, distance=distance)(x, y)
    finally:
        triplet_module.SORTED_MIN_POSITIVES_PER_ANCHOR = saved
    chunked = TripletMarginLoss(margin=margin, distance=distance)(x, y, indices_tuple=tuples)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(sorted_loss, chunked, rtol=tol, atol=1e-30)


def test_sorted_path_settles_many_negatives_within_rounding_of_the_hinge():
    # cosine, margin 0.5: the positives' similarity 0.5 puts the hinge of anchor e0 at
    # similarity 0, where 100 negatives lie within float32 rounding of it (k * 1e-10); the
    # sorted path must count exactly the triplets the index-tuple path counts
    rows = [[1.0, 0, 0, 0]] + [[0.5, 0, math.sqrt(0.75), 0]] * 20
    rows += [[k * 1e-10, math.sqrt(1 - (k * 1e-10) ** 2), 0, 0] for k in range(1, 101)]
    rows += [[0, 0, 0, 1.0], [0, 0, 0, -1.0], [0, 0, 0, 1.0]]  # one real violation elsewhere
    x = torch.tensor(rows, dtype=torch.float64).float()
    y = torch.tensor([0] * 21 + [1] * 100 + [2, 2, 3])
    same = y[:, None] == y[None, :]
    positive = same & ~torch.eye(len(y), dtype=torch.bool)
    tuples = (positive[:, :, None] & ~same[:, None, :]).nonzero(as_tuple=True)
    loss_fn = TripletMarginLoss(margin=0.5, distance="cosine")
    labels_only = loss_fn(x, y)
    torch.testing.assert_close(labels_only, loss_fn(x, y, indices_tuple=tuples), rtol=1e-6, atol=0)
    torch.testing.assert_close(labels_only, _peer("cosine", margin=0.5)(x, y), rtol=1e-6, atol=0)
