"""ContrastiveLoss against pytorch-metric-learning, torch.nn.CosineEmbeddingLoss and float64."""

from __future__ import annotations

import pytest
import torch
from _pml import assert_matches_peer, batch_factory, peer_distance, pml_losses, pml_miners
from hypothesis import given
from hypothesis import strategies as st

from metricface.losses import ContrastiveLoss
from metricface.miners import PairMarginMiner, TripletMarginMiner

_batch = batch_factory(30, 10, 5, torch.float64)


CASES = [
    ({}, {}),
    ({"pos_margin": 0.1, "neg_margin": 1.3}, {"pos_margin": 0.1, "neg_margin": 1.3}),
    (
        {"distance": "cosine"},
        {"pos_margin": 1, "neg_margin": 0, "distance": "cosine"},
    ),
    (
        {"pos_margin": 0.8, "neg_margin": 0.2, "distance": "cosine"},
        {"pos_margin": 0.8, "neg_margin": 0.2, "distance": "cosine"},
    ),
]


def _peer(distance="euclidean", **kwargs):
    dist = peer_distance(distance)
    return pml_losses.ContrastiveLoss(distance=dist, **kwargs)


@pytest.mark.parametrize(("ours_kw", "peer_kw"), CASES)
def test_labels_only_matches_pml(ours_kw, peer_kw):
    x, y = _batch()
    assert_matches_peer(ContrastiveLoss(**ours_kw), _peer(**peer_kw), x, y, tight=True)


def test_index_tuples_match_pml_both_directions():
    x, y = _batch(seed=1)
    ours, peer = ContrastiveLoss(0.3, 0.9), pml_losses.ContrastiveLoss(0.3, 0.9)
    tuples = [
        pml_miners.PairMarginMiner(0.5, 0.9)(x, y),
        PairMarginMiner(0.5, 0.9)(x, y),
        TripletMarginMiner(0.3)(x, y),  # triplets become (a, p, a, n)
        pml_miners.MultiSimilarityMiner()(x, y),
    ]
    for t in tuples:
        assert_matches_peer(ours, peer, x, y, indices_tuple=t, tight=True)


def test_ref_emb_matches_pml():
    x, y = _batch(12, seed=2)
    r, ry = _batch(25, seed=3)
    assert_matches_peer(
        ContrastiveLoss(), pml_losses.ContrastiveLoss(), x, y, ref_emb=r, ref_labels=ry
    )


@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
    pos_margin=st.floats(0.0, 0.5),
    neg_margin=st.floats(0.5, 2.0),
)
def test_matches_float64_rederivation(labels, seed, pos_margin, neg_margin):
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 4, generator=torch.Generator().manual_seed(seed))
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    d = (xn[:, None] - xn[None]).pow(2).sum(-1).sqrt()
    same = y[:, None] == y[None]
    eye = torch.eye(len(labels), dtype=torch.bool)
    pos = (d - pos_margin).clamp(min=0)[same & ~eye]
    neg = (neg_margin - d).clamp(min=0)[~same]
    expected = sum(t[t > 0].mean() if (t > 0).any() else 0.0 for t in (pos, neg))
    got = ContrastiveLoss(pos_margin, neg_margin)(x.double(), y)
    torch.testing.assert_close(got, torch.as_tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("margin", [0.0, 0.3, -0.2])
def test_forward_pairs_is_cosine_embedding_loss(margin):
    g = torch.Generator().manual_seed(4)
    x1, x2 = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    x2[:3] = x1[:3]  # identical pairs: cos = 1
    target = torch.randint(0, 2, (40,), generator=g) * 2 - 1
    a1, a2 = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    b1, b2 = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    ours = ContrastiveLoss(1.0, margin, distance="cosine").forward_pairs(
        a1, a2, target, reduction="mean"
    )
    peer = torch.nn.CosineEmbeddingLoss(margin=margin)(b1, b2, target)
    torch.testing.assert_close(ours, peer)
    (ours + 0).backward()
    peer.backward()
    torch.testing.assert_close(a1.grad, b1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a2.grad, b2.grad, rtol=1e-4, atol=1e-6)
    per_pair = ContrastiveLoss(1.0, margin, distance="cosine").forward_pairs(
        x1, x2, target, reduction="none"
    )
    peer_none = torch.nn.CosineEmbeddingLoss(margin=margin, reduction="none")(x1, x2, target)
    torch.testing.assert_close(per_pair, peer_none)


def test_forward_pairs_default_equals_forward_on_explicit_pairs():
    x1, _ = _batch(10, seed=5)
    x2, _ = _batch(10, seed=6)
    target = torch.tensor([1, -1] * 5)
    loss = ContrastiveLoss(0.2, 1.1)
    got = loss.forward_pairs(x1, x2, target)
    both = torch.cat([x1, x2])
    i = torch.arange(10)
    g, imp = target == 1, target == -1
    tup = (i[g], i[g] + 10, i[imp], i[imp] + 10)
    torch.testing.assert_close(got, loss(both, indices_tuple=tup))
    torch.testing.assert_close(
        loss.forward_pairs(x1, x2, target, reduction="sum"),
        loss.forward_pairs(x1, x2, target, reduction="none").sum(),
    )


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [7]])
def test_no_pair_is_zero_with_graph(labels):
    x = torch.randn(len(labels), 6, requires_grad=True)
    # no positive pair, and negatives beyond the margin: nothing contributes
    loss = ContrastiveLoss(neg_margin=0.0)(x, torch.tensor(labels))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_duplicated_embeddings_give_finite_gradients(distance):
    x = torch.randn(3, 8).repeat(2, 1).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = ContrastiveLoss(distance=distance)(x, y)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    a, b = torch.randn(4, 8).requires_grad_(True), None
    b = a.detach().clone().requires_grad_(True)
    pair = ContrastiveLoss(distance=distance).forward_pairs(a, b, torch.tensor([1, 1, -1, -1]))
    pair.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_input_errors():
    x, y = _batch(6, 4, 2, dtype=torch.float32)
    loss = ContrastiveLoss()
    with pytest.raises(ValueError, match="indices_tuple must be a tuple"):
        loss(x, y, indices_tuple=(torch.tensor([0]), torch.tensor([1])))
    with pytest.raises(ValueError, match=r"indices_tuple\[0\] holds anchor indices"):
        loss(x, y, indices_tuple=(torch.tensor([-1]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match=r"target must contain only 1 .* got \[0\].*2 \* same - 1"):
        loss.forward_pairs(x, x, torch.tensor([1, 0, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match="x1 and x2 must have the same shape"):
        loss.forward_pairs(x, x[:3], torch.ones(6))
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss.forward_pairs(x, x, torch.ones(6), reduction="max")
    with pytest.raises(TypeError, match="embeddings must have a floating-point dtype"):
        loss(y, y)
    with pytest.raises(TypeError, match="pos_margin must be a real number"):
        ContrastiveLoss(pos_margin="0")
    with pytest.raises(ValueError, match=r"ref_emb must be on the same device as embeddings"):
        loss(x, y, ref_emb=x.to("meta"), ref_labels=y)
    with pytest.raises(ValueError, match=r"x2 must be on the same device as x1"):
        loss.forward_pairs(x, x.to("meta"), torch.ones(6))


def _all_losses():
    from metricface.losses import MultiSimilarityLoss, TripletMarginLoss

    return [
        ContrastiveLoss(),
        ContrastiveLoss(distance="cosine"),
        TripletMarginLoss(),
        TripletMarginLoss(swap=True, smooth_loss=True),
        MultiSimilarityLoss(),
    ]


@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=10),
    seed=st.integers(0, 2**16),
    duplicates=st.integers(0, 3),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
)
def test_every_loss_is_finite_with_finite_gradients(labels, seed, duplicates, dtype):
    """Any batch, including duplicated embeddings (distance 0) and half precision."""
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(seed))
    for i in range(min(duplicates, len(labels) - 1)):
        x[i + 1] = x[0]
    has_pos = any(labels.count(v) > 1 for v in set(labels))
    for loss_fn in _all_losses():
        xg = x.to(dtype, copy=True).requires_grad_(True)
        loss = loss_fn(xg, y)
        assert loss.dtype == dtype and torch.isfinite(loss.float())
        loss.backward()
        assert torch.isfinite(xg.grad.float()).all()
        if not has_pos and type(loss_fn).__name__ == "TripletMarginLoss":
            assert loss.item() == 0.0 and loss.requires_grad
            assert not xg.grad.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_duplicated_positive_pairs_are_zero_terms_in_large_batches(dtype):
    # issue 14, defect 3: from 26 rows, the distance of two copies was 3.5e-4 to 6.9e-4, not 0,
    # so each duplicated positive pair counted as a non-zero term
    x = torch.randn(20, 512, generator=torch.Generator().manual_seed(0), dtype=dtype)
    emb = x.repeat_interleave(2, dim=0).requires_grad_(True)  # 40 rows, each identity twice
    labels = torch.arange(20).repeat_interleave(2)
    loss = ContrastiveLoss(pos_margin=0.0, neg_margin=0.0)(emb, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb.grad))
