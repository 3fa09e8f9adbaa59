"""TripletMarginMiner and BatchAllMiner against pytorch-metric-learning."""

from __future__ import annotations

import pytest
import torch
from _pml import batch_factory, peer_distance, pml_losses, pml_miners

from metricface.losses import TripletMarginLoss
from metricface.miners import BatchAllMiner, TripletMarginMiner

_batch = batch_factory(40, 8, 6)


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk_elements", [1 << 22, 100])
def test_same_triplets_in_same_order_as_pml(kind, distance, chunk_elements):
    x, y = _batch()
    margin = 0.2 if distance == "euclidean" else 0.1
    ours = TripletMarginMiner(margin, kind, distance=distance, chunk_elements=chunk_elements)
    peer = pml_miners.TripletMarginMiner(
        margin, type_of_triplets=kind, distance=peer_distance(distance)
    )
    got, expected = ours(x, y), peer(x, y)
    assert len(got) == 3 and got[0].numel() > 0
    for g, e in zip(got, expected):
        assert g.dtype == torch.long
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_ref_emb_matches_pml():
    x, y = _batch(15, seed=1)
    r, ry = _batch(30, seed=2)
    for kind in ("all", "semihard"):
        got = TripletMarginMiner(0.2, kind)(x, y, r, ry)
        expected = pml_miners.TripletMarginMiner(0.2, type_of_triplets=kind)(x, y, r, ry)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_ours_feed_pml_loss_and_pml_feed_ours():
    x, y = _batch(seed=3)
    ours_t = TripletMarginMiner(0.2, "semihard")(x, y)
    peer_t = pml_miners.TripletMarginMiner(0.2, type_of_triplets="semihard")(x, y)
    peer_loss, our_loss = pml_losses.TripletMarginLoss(0.2), TripletMarginLoss(0.2)
    torch.testing.assert_close(peer_loss(x, y, ours_t), peer_loss(x, y, peer_t))
    torch.testing.assert_close(our_loss(x, y, peer_t), peer_loss(x, y, peer_t))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_batch_all_is_the_nonzero_loss_triplets(distance):
    x, y = _batch(seed=4)
    x = x.double()
    triplets = BatchAllMiner(margin=0.3, distance=distance, chunk_elements=64)(x, y)
    loss = TripletMarginLoss(margin=0.3, distance=distance)
    # every mined triplet has a non-zero loss, and averaging over them is the full loss
    no_reduction = []
    sign = -1 if distance == "cosine" else 1
    xn = torch.nn.functional.normalize(x, dim=1)
    mat = xn @ xn.T if distance == "cosine" else torch.cdist(xn, xn)
    a, p, n = triplets
    no_reduction = sign * (mat[a, p] - mat[a, n]) + 0.3
    assert (no_reduction > 0).all()
    torch.testing.assert_close(loss(x, y, triplets), loss(x, y))
    all_triplets = TripletMarginMiner(1e9, "all", distance=distance)(x, y)
    assert all_triplets[0].numel() > triplets[0].numel()  # the others have zero loss


def test_max_triplets_is_a_seeded_uniform_subset():
    x, y = _batch(seed=5)
    full = TripletMarginMiner(0.5)(x, y)
    full_set = set(zip(*(t.tolist() for t in full)))
    miner = TripletMarginMiner(0.5, max_triplets=50, chunk_elements=80)
    torch.manual_seed(0)
    first = miner(x, y)
    torch.manual_seed(0)
    again = miner(x, y)
    assert first[0].numel() == 50
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    sub = list(zip(*(t.tolist() for t in first)))
    assert set(sub) <= full_set and len(set(sub)) == 50
    assert sub == sorted(sub)  # kept in enumeration order


def test_max_triplets_keeps_each_triplet_with_equal_probability():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([0, 0, 1, 1, 2])  # 4 positive pairs x 3 negatives = 12 triplets
    full = list(zip(*(t.tolist() for t in TripletMarginMiner(10.0)(x, y))))
    assert len(full) == 12
    miner = TripletMarginMiner(10.0, max_triplets=4, chunk_elements=5)  # one pair per chunk
    counts = dict.fromkeys(full, 0)
    torch.manual_seed(7)
    draws = 600
    for _ in range(draws):
        for t in zip(*(u.tolist() for u in miner(x, y))):
            counts[t] += 1
    # each count is Binomial(600, 1/3): mean 200, sd 11.5; allow 5 sd
    assert all(abs(c - 200) < 58 for c in counts.values()), counts


def test_no_triplets_returns_empty_long_tensors():
    x = torch.randn(4, 3)
    for labels in ([0, 1, 2, 3], [0, 0, 0, 0]):
        out = TripletMarginMiner(0.2, max_triplets=3)(x, torch.tensor(labels))
        assert all(t.dtype == torch.long and t.numel() == 0 for t in out)


def test_input_errors():
    with pytest.raises(ValueError, match="type_of_triplets must be one of"):
        TripletMarginMiner(type_of_triplets="hardest")
    with pytest.raises(ValueError, match="max_triplets must be in"):
        TripletMarginMiner(max_triplets=0)
    with pytest.raises(TypeError, match="max_triplets must be an int"):
        BatchAllMiner(max_triplets=2.5)
    x, y = _batch(6)
    with pytest.raises(ValueError, match="labels must have one entry per embedding"):
        TripletMarginMiner()(x, y[:2])
    with pytest.raises(ValueError, match="ref_labels is required"):
        TripletMarginMiner()(x, y, ref_emb=x)
    with pytest.raises(ValueError, match="embeddings must have shape"):
        TripletMarginMiner()(x[0], y)
    with pytest.raises(ValueError, match="ref_emb must be on the same device as embeddings"):
        TripletMarginMiner()(x, y, ref_emb=x.to("meta"), ref_labels=y)
