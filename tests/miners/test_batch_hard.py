"""BatchHardMiner against pytorch-metric-learning and a float64 brute force."""

from __future__ import annotations

import pytest
import torch
from _pml import batch_factory, peer_distance, pml_miners
from hypothesis import given
from hypothesis import strategies as st

from metricface.miners import BatchHardMiner

_batch = batch_factory(40, 8, 6)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_matches_pml(distance):
    x, y = _batch()
    y[0] = 99  # an anchor without a positive is skipped
    peer_dist = peer_distance(distance)
    got = BatchHardMiner(distance=distance)(x, y)
    expected = pml_miners.BatchHardMiner(distance=peer_dist)(x, y)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert 0 not in got[0].tolist()


def test_ref_emb_matches_pml():
    x, y = _batch(10, seed=1)
    r, ry = _batch(30, seed=2)
    got = BatchHardMiner()(x, y, r, ry)
    expected = pml_miners.BatchHardMiner()(x, y, r, ry)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=16),
    seed=st.integers(0, 2**16),
    distance=st.sampled_from(["euclidean", "cosine"]),
)
def test_picks_farthest_positive_and_nearest_negative(labels, seed, distance):
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(seed))
    a, p, n = BatchHardMiner(distance=distance)(x, y)
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    d = torch.cdist(xn, xn) if distance == "euclidean" else -(xn @ xn.T)
    expected_anchors = []
    for i in range(len(labels)):
        pos = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(len(labels)) if labels[j] != labels[i]]
        if pos and neg:
            expected_anchors.append(i)
    assert a.tolist() == expected_anchors
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        assert y[i] == y[j] and i != j and y[k] != y[i]
        pos_d = [d[i, q] for q in range(len(labels)) if q != i and labels[q] == labels[i]]
        neg_d = [d[i, q] for q in range(len(labels)) if labels[q] != labels[i]]
        assert d[i, j] >= max(pos_d) - 1e-6
        assert d[i, k] <= min(neg_d) + 1e-6


def test_max_triplets_caps_anchors():
    x, y = _batch()
    torch.manual_seed(3)
    a, p, n = BatchHardMiner(max_triplets=5)(x, y)
    full = BatchHardMiner()(x, y)
    assert a.numel() == 5
    assert set(zip(a.tolist(), p.tolist(), n.tolist())) <= set(zip(*(t.tolist() for t in full)))
