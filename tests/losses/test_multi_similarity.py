"""MultiSimilarityLoss against pytorch-metric-learning and a float64 re-derivation."""

from __future__ import annotations

import pytest
import torch
from _pml import assert_matches_peer, batch_factory, pml_distances, pml_losses, pml_miners
from hypothesis import given
from hypothesis import strategies as st

from metricface.losses import MultiSimilarityLoss
from metricface.miners import MultiSimilarityMiner

_batch = batch_factory(30, 10, 5, torch.float64)


@pytest.mark.parametrize("params", [{}, {"alpha": 1.0, "beta": 10.0, "base": 0.2}])
def test_labels_only_matches_pml(params):
    x, y = _batch()
    assert_matches_peer(
        MultiSimilarityLoss(**params), pml_losses.MultiSimilarityLoss(**params), x, y, tight=True
    )


def test_euclidean_matches_pml_lp_distance():
    x, y = _batch(seed=1)
    ours = MultiSimilarityLoss(base=1.0, distance="euclidean")
    peer = pml_losses.MultiSimilarityLoss(base=1.0, distance=pml_distances.LpDistance())
    assert_matches_peer(ours, peer, x, y)


def test_index_tuples_match_pml_both_directions():
    x, y = _batch(seed=2)
    tuples = [
        MultiSimilarityMiner()(x, y),
        pml_miners.MultiSimilarityMiner()(x, y),
        pml_miners.BatchHardMiner()(x, y),  # triplets become pairs
    ]
    for t in tuples:
        assert_matches_peer(
            MultiSimilarityLoss(), pml_losses.MultiSimilarityLoss(), x, y, indices_tuple=t
        )


def test_ref_emb_matches_pml():
    x, y = _batch(10, seed=3)
    r, ry = _batch(20, seed=4)
    assert_matches_peer(
        MultiSimilarityLoss(), pml_losses.MultiSimilarityLoss(), x, y, ref_emb=r, ref_labels=ry
    )


@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
    beta=st.floats(1.0, 200.0),
)
def test_matches_float64_rederivation(labels, seed, beta):
    """Also the peer, on any batch (including anchors without positives or negatives)."""
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 4, generator=torch.Generator().manual_seed(seed)).double()
    xn = torch.nn.functional.normalize(x, dim=1)
    s = xn @ xn.T
    rows = []
    for a in range(len(labels)):
        pos = [s[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [s[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        lp = torch.log1p(sum(torch.exp(-2.0 * (v - 0.5)) for v in pos)) / 2.0 if pos else 0.0
        ln = torch.log1p(sum(torch.exp(beta * (v - 0.5)) for v in neg)) / beta if neg else 0.0
        rows.append(torch.as_tensor(lp + ln, dtype=torch.float64))
    rows = torch.stack(rows)
    expected = rows.mean()  # a plain mean over anchors, as the peer's default reducer
    xg = x.clone().requires_grad_(True)
    got = MultiSimilarityLoss(beta=beta)(xg, y)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, pml_losses.MultiSimilarityLoss(beta=beta)(x, y))
    got.backward()
    assert torch.isfinite(xg.grad).all()


def test_single_embedding_is_zero_with_graph():
    x = torch.randn(1, 5, requires_grad=True)
    loss = MultiSimilarityLoss()(x, torch.tensor([3]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_large_beta_and_duplicates_stay_finite():
    x = torch.randn(4, 6).repeat(2, 1).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    loss = MultiSimilarityLoss(alpha=50.0, beta=500.0)(x, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_input_errors():
    x, y = _batch(6, 4, 2, dtype=torch.float32)
    clash = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="both positive and negative"):
        MultiSimilarityLoss()(x, y, indices_tuple=clash)
    with pytest.raises(ValueError, match="alpha must be in"):
        MultiSimilarityLoss(alpha=0)
