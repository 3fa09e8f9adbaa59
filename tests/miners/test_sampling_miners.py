"""SemiHardMiner and DistanceWeightedMiner against float64 re-derivations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metricface.distances import pairwise_matrix
from metricface.miners import DistanceWeightedMiner, SemiHardMiner
from metricface.tuples import label_masks


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


# ----------------------------------------------------------------------------- issue 14


def _semihard_by_pairs(dis, pos, neg, margin):
    """The former O(#pairs x R) selection, kept as the reference: for every positive pair,
    the argmin over the negatives with ``d_ap < d_an < d_ap + margin``."""
    a, p = pos.nonzero(as_tuple=True)
    d_ap = dis[a, p].unsqueeze(1)
    d_an = dis[a]
    ok = neg[a] & (d_an > d_ap) & (d_an < d_ap + margin)
    n = torch.where(ok, d_an, torch.full_like(d_an, float("inf"))).argmin(dim=1)
    has = ok.any(dim=1)
    return a[has], p[has], n[has]


@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=24),
    seed=st.integers(0, 2**16),
    margin=st.sampled_from([0.05, 0.3, 1.0, 5.0]),
    chunk=st.sampled_from([1, 7, 1 << 18]),
    distance=st.sampled_from(["euclidean", "cosine"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    grid=st.booleans(),
    with_ref=st.booleans(),
)
def test_semihard_equals_the_per_pair_selection(
    labels, seed, margin, chunk, distance, dtype, grid, with_ref
):
    """Identical triplets, in the same order, as scoring each positive pair against every
    negative: including tied distances (embeddings on a coarse grid, duplicated rows), which
    are resolved to the lowest negative index."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 3, generator=g)
    if grid:  # few distinct directions: many exactly equal distances
        x = torch.randint(-1, 2, (len(labels), 3), generator=g).float()
        x[0] = 1.0
    x = x.to(dtype)
    ref_x, ref_y = (
        (x.flip(0)[:-1], y.flip(0)[:-1]) if with_ref and len(labels) > 1 else (None, None)
    )
    miner = SemiHardMiner(margin, distance=distance, chunk_elements=chunk)
    got = miner(x, y, ref_x, ref_y)
    mat = pairwise_matrix(x, ref_x, distance)
    dis = -mat if distance == "cosine" else mat
    pos, neg = label_masks(y, ref_y)
    expected = _semihard_by_pairs(dis, pos, neg, margin)
    for u, v in zip(got, expected):
        assert torch.equal(u, v)


def test_semihard_ignores_nan_distances():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.3], [0.5, 0.5], [float("nan"), 1.0], [0.2, 1.0]])
    y = torch.tensor([0, 0, 1, 1, 1])
    a, p, n = SemiHardMiner(2.0)(x, y)
    assert 3 not in n.tolist() and 3 not in a.tolist()
    dis = pairwise_matrix(x, None, "euclidean")
    expected = _semihard_by_pairs(dis, *label_masks(y), 2.0)
    assert a.numel() > 0 and all(torch.equal(u, v) for u, v in zip((a, p, n), expected))


def test_semihard_blocks_of_rows_give_the_same_triplets():
    """Rows are mined in blocks of ``chunk_elements``: any block size, the same output."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 8, generator=g), torch.arange(4).repeat_interleave(24)
    small = SemiHardMiner(0.5, chunk_elements=96 * 5)(x, y)
    large = SemiHardMiner(0.5)(x, y)
    for u, v in zip(small, large):
        assert torch.equal(u, v)


def test_distance_weighted_draws_each_positive_pair_independently():
    """One anchor with 41 positives and 4 eligible negatives: each pair gets its own
    draw (not one negative shared by all of the anchor's pairs), from that anchor's weights."""
    x = torch.zeros(45, 4)
    x[:41, 0] = 1.0
    x[41:, 1], x[41:, 0] = 1.0, torch.tensor([0.1, -0.1, 0.2, -0.2]).cos()
    y = torch.tensor([0] * 41 + [1] * 4)
    torch.manual_seed(0)
    a, _p, n = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=2.0)(x[:1], y[:1], x, y)
    assert a.numel() == 41 and set(n.tolist()) <= {41, 42, 43, 44}  # x[0] is in the reference
    assert len(set(n.tolist())) > 1


def test_semihard_on_device_equals_the_per_pair_selection(device):
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 5, (64,), generator=g)
    x = torch.randint(-1, 2, (64, 3), generator=g).float()  # ties
    x[:, 0] += 0.5
    got = SemiHardMiner(0.4, chunk_elements=300)(x.to(device), y.to(device))
    dis = pairwise_matrix(x, None, "euclidean")
    expected = _semihard_by_pairs(dis, *label_masks(y), 0.4)
    for u, v in zip(got, expected):
        assert u.device.type == device.type and torch.equal(u.cpu(), v)
