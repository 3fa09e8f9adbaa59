"""Index-tuple helpers and properties every miner must keep."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metricface.miners import (
    BatchAllMiner,
    BatchHardMiner,
    DistanceWeightedMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    SemiHardMiner,
    TripletMarginMiner,
)
from metricface.tuples import check_indices_tuple, entries_by_row, pairs_to_triplets, to_pairs

lmu = pytest.importorskip("pytorch_metric_learning.utils.loss_and_miner_utils")

TRIPLET_MINERS = [
    BatchHardMiner(),
    BatchHardMiner(distance="cosine"),
    BatchAllMiner(0.3, chunk_elements=13),
    SemiHardMiner(0.3, chunk_elements=13),
    DistanceWeightedMiner(),
    TripletMarginMiner(0.2, "hard", max_triplets=9, chunk_elements=13),
    TripletMarginMiner(0.2, "easy", distance="cosine"),
]
PAIR_MINERS = [
    PairMarginMiner(0.5, 1.2),
    MultiSimilarityMiner(),
    MultiSimilarityMiner(0.05, "euclidean"),
]


@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=20),
    seed=st.integers(0, 2**16),
    duplicate=st.booleans(),
)
def test_every_mined_tuple_is_valid(labels, seed, duplicate):
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(seed))
    if duplicate:
        x[-1] = x[0]
    for miner in TRIPLET_MINERS:
        a, p, n = miner(x, y)
        assert a.dtype == p.dtype == n.dtype == torch.long
        assert (y[a] == y[p]).all() and (a != p).all() and (y[a] != y[n]).all()
        assert len(set(zip(a.tolist(), p.tolist(), n.tolist()))) == a.numel()
    for miner in PAIR_MINERS:
        a1, p, a2, n = miner(x, y)
        assert (y[a1] == y[p]).all() and (a1 != p).all() and (y[a2] != y[n]).all()


@given(
    n_pos=st.integers(0, 12),
    n_neg=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_pairs_to_triplets_matches_pml_order(n_pos, n_neg, seed):
    g = torch.Generator().manual_seed(seed)
    a1, p = torch.randint(0, 5, (n_pos,), generator=g), torch.randint(0, 9, (n_pos,), generator=g)
    a2, n = torch.randint(0, 5, (n_neg,), generator=g), torch.randint(0, 9, (n_neg,), generator=g)
    got = pairs_to_triplets(a1, p, a2, n)
    expected = lmu.convert_to_triplets((a1, p, a2, n), labels=None)
    for u, v in zip(got, expected):
        assert u.tolist() == v.tolist()


def test_to_pairs_of_triplets():
    a, p, n = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])
    assert [t.tolist() for t in to_pairs((a, p, n))] == [[0, 1], [2, 3], [0, 1], [4, 5]]


def test_check_indices_tuple_messages():
    t = torch.tensor
    with pytest.raises(TypeError, match=r"indices_tuple\[1\] must be a torch.Tensor"):
        check_indices_tuple((t([0]), [1], t([2])), 3, 3)
    with pytest.raises(TypeError, match="integer dtype"):
        check_indices_tuple((t([0.0]), t([1]), t([2])), 3, 3)
    with pytest.raises(ValueError, match="must be 1-D"):
        check_indices_tuple((t([[0]]), t([1]), t([2])), 3, 3)
    with pytest.raises(ValueError, match=r"reference indices that must be in \[0, 3\), got 3"):
        check_indices_tuple((t([0]), t([1]), t([0]), t([3])), 5, 3)
    ok = check_indices_tuple((t([0], dtype=torch.int32), t([1]), t([2])), 3, 3)
    assert all(u.dtype == torch.long for u in ok)


@given(
    rows=st.integers(0, 6),
    cols=st.integers(0, 6),
    seed=st.integers(0, 2**16),
    density=st.floats(0.0, 1.0),
)
def test_entries_by_row_packs_each_row_to_the_left(rows, cols, seed, density):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    r, c, slot, width = entries_by_row(mask)
    # written from the definition: each row's True columns, in order, at slots 0, 1, ...
    expected = [
        (i, j, k) for i in range(rows) for k, j in enumerate(mask[i].nonzero().flatten().tolist())
    ]
    assert list(zip(r.tolist(), c.tolist(), slot.tolist())) == expected
    assert width == max((int(row.sum()) for row in mask), default=0)
