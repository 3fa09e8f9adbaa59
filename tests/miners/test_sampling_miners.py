"""SemiHardMiner and DistanceWeightedMiner against float64 re-derivations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metricface.miners import DistanceWeightedMiner, SemiHardMiner


def _dist(x):
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    return torch.cdist(xn, xn)


@given(
    labels=st.lists(st.integers(0, 3), min_size=2, max_size=16),
    seed=st.integers(0, 2**16),
    margin=st.floats(0.05, 1.0),
    chunk=st.sampled_from([1, 7, 1 << 20]),
)
def test_semihard_is_facenet_selection(labels, seed, margin, chunk):
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 4, generator=torch.Generator().manual_seed(seed))
    got = list(zip(*(t.tolist() for t in SemiHardMiner(margin, chunk_elements=chunk)(x, y))))
    d = _dist(x)
    expected = []
    for a in range(len(labels)):
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            cands = [
                (d[a, n].item(), n)
                for n in range(len(labels))
                if labels[n] != labels[a] and d[a, p] < d[a, n] < d[a, p] + margin
            ]
            if cands:
                expected.append((a, p, min(cands)[1]))
    # ties between float32 and float64 orderings are not expected with continuous data
    assert got == expected


def test_semihard_drops_pairs_without_semihard_negative():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05]])
    y = torch.tensor([0, 0, 1])  # the negative is closer than the positive: hard, not semi-hard
    a, _p, _n = SemiHardMiner(0.2)(x, y)
    assert a.numel() == 0


def test_distance_weighted_samples_valid_triplets_reproducibly():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g)
    miner = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    torch.manual_seed(1)
    a, p, n = miner(x, y)
    torch.manual_seed(1)
    again = miner(x, y)
    assert all(torch.equal(u, v) for u, v in zip((a, p, n), again))
    d = _dist(x)
    assert (y[a] == y[p]).all() and (a != p).all() and (y[a] != y[n]).all()
    assert (d[a, n] < 1.4).all()


def test_distance_weighted_follows_inverse_density():
    # one anchor, one positive, three negatives at known distances
    dim = 8
    angles = torch.tensor([0.0, 0.3, 1.0, 1.3, 1.6])  # chord = 2 sin(angle / 2)
    x = torch.zeros(5, dim)
    x[:, 0], x[:, 1] = torch.cos(angles), torch.sin(angles)
    y = torch.tensor([0, 0, 1, 1, 1])
    miner = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    torch.manual_seed(2)
    hits = torch.zeros(5)
    anchors = x[:1].repeat(200, 1)  # 200 copies of sample 0, each with 2 positives in x
    for _ in range(10):
        _a, _p, n = miner(anchors, torch.zeros(200, dtype=torch.long), x, y)
        hits.index_add_(0, n, torch.ones_like(n, dtype=torch.float))
    chord = [2 * math.sin(t / 2) for t in angles.tolist()]
    w = [
        0.0
        if s >= 1.4
        else max(s, 0.5) ** (2 - dim) * (1 - max(s, 0.5) ** 2 / 4) ** (-(dim - 3) / 2)
        for s in chord[2:]
    ]
    probs = torch.tensor(w) / sum(w)
    observed = hits[2:] / hits.sum()
    assert hits[:2].sum() == 0
    torch.testing.assert_close(observed, probs.float(), rtol=0, atol=0.02)


def test_distance_weighted_skips_anchors_without_eligible_negative():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1])  # the only negative is at distance ~2 > nonzero_loss_cutoff
    a, _p, _n = DistanceWeightedMiner()(x, y)
    assert a.numel() == 0


def test_distance_weighted_input_errors():
    with pytest.raises(ValueError, match="cutoff must be in"):
        DistanceWeightedMiner(cutoff=0.0)
    with pytest.raises(ValueError, match="nonzero_loss_cutoff must be in"):
        DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=0.4)
    with pytest.raises(ValueError, match="margin must be in"):
        SemiHardMiner(margin=0.0)
