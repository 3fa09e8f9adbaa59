"""PairMarginMiner and MultiSimilarityMiner: the same pair sets as pytorch-metric-learning."""

from __future__ import annotations

import pytest
import torch
from _pml import batch_factory, peer_distance, pml_losses, pml_miners

from metricface.losses import ContrastiveLoss, MultiSimilarityLoss
from metricface.miners import MultiSimilarityMiner, PairMarginMiner

_batch = batch_factory(40, 8, 6)


def _pair_sets(t):
    a1, p, a2, n = (u.tolist() for u in t)
    return set(zip(a1, p)), set(zip(a2, n)), len(a1), len(a2)


@pytest.mark.parametrize(
    ("distance", "pos_margin", "neg_margin"), [("euclidean", 1.0, 1.2), ("cosine", 0.3, 0.1)]
)
def test_pair_margin_matches_pml(distance, pos_margin, neg_margin):
    x, y = _batch()
    got = PairMarginMiner(pos_margin, neg_margin, distance=distance)(x, y)
    expected = pml_miners.PairMarginMiner(pos_margin, neg_margin, distance=peer_distance(distance))(
        x, y
    )
    assert _pair_sets(got) == _pair_sets(expected)
    assert _pair_sets(got)[2] > 0 and _pair_sets(got)[3] > 0


@pytest.mark.parametrize(("distance", "epsilon"), [("cosine", 0.1), ("euclidean", 0.05)])
def test_multi_similarity_matches_pml(distance, epsilon):
    x, y = _batch(seed=1)
    got = MultiSimilarityMiner(epsilon, distance=distance)(x, y)
    expected = pml_miners.MultiSimilarityMiner(epsilon, distance=peer_distance(distance))(x, y)
    assert _pair_sets(got) == _pair_sets(expected)
    assert _pair_sets(got)[2] > 0


def test_ref_emb_matches_pml():
    x, y = _batch(12, seed=2)
    r, ry = _batch(30, seed=3)
    for ours, peer in [
        (MultiSimilarityMiner(), pml_miners.MultiSimilarityMiner()),
        (PairMarginMiner(0.9, 1.3), pml_miners.PairMarginMiner(0.9, 1.3)),
    ]:
        assert _pair_sets(ours(x, y, r, ry)) == _pair_sets(peer(x, y, r, ry))


def test_pairs_feed_both_libraries_losses():
    x, y = _batch(seed=4)
    x = x.double()
    ours = MultiSimilarityMiner()(x, y)
    peer = pml_miners.MultiSimilarityMiner()(x, y)
    torch.testing.assert_close(
        pml_losses.MultiSimilarityLoss()(x, y, ours), pml_losses.MultiSimilarityLoss()(x, y, peer)
    )
    torch.testing.assert_close(
        MultiSimilarityLoss()(x, y, peer), pml_losses.MultiSimilarityLoss()(x, y, peer)
    )
    pairs = PairMarginMiner(1.0, 1.3)(x, y)
    torch.testing.assert_close(
        ContrastiveLoss()(x, y, pairs), pml_losses.ContrastiveLoss()(x, y, pairs)
    )


def test_no_pairs_returns_empty():
    x = torch.randn(3, 4)
    out = MultiSimilarityMiner()(x, torch.tensor([0, 1, 2]))
    assert all(t.numel() == 0 and t.dtype == torch.long for t in out)
    a1, _p, a2, _n = PairMarginMiner(0.0, 0.0)(x, torch.tensor([0, 0, 1]))
    assert a2.numel() == 0 and a1.numel() == 2


def test_input_errors():
    with pytest.raises(ValueError, match="epsilon must be in"):
        MultiSimilarityMiner(epsilon=-1)
    with pytest.raises(ValueError, match="distance must be one of"):
        PairMarginMiner(distance="l1")
