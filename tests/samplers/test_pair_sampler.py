"""PairSampler and PairDataset: pair labels, pos_prob, partner distributions, sharding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from torch.utils.data import DataLoader, TensorDataset

from metricface.samplers import PairDataset, PairSampler


def _labels(counts, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)) * 2, counts))


@given(
    counts=st.lists(st.integers(1, 8), min_size=2, max_size=12).filter(lambda c: max(c) >= 2),
    pos_prob=st.floats(0.0, 1.0),
    num_pairs=st.integers(1, 60),
    R=st.integers(1, 4),
    drop_last=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_pairs_are_labelled_correctly_and_shards_split_one_epoch(
    counts, pos_prob, num_pairs, R, drop_last, epoch
):
    labels = _labels(counts)
    per_rank = num_pairs // R if drop_last else -(-num_pairs // R)
    kwargs = {"num_pairs": num_pairs, "seed": 3, "drop_last": drop_last}
    if per_rank == 0:
        with pytest.raises(ValueError, match="num_pairs must be at least num_replicas"):
            PairSampler(labels, pos_prob, num_replicas=R, rank=0, **kwargs)
        return
    shards = [PairSampler(labels, pos_prob, num_replicas=R, rank=r, **kwargs) for r in range(R)]
    out = [s.epoch_pairs(epoch) for s in shards]
    assert all(len(s) == per_rank and p.shape == (per_rank, 3) for s, p in zip(shards, out))
    for pairs in out:
        i, j, same = pairs.T
        np.testing.assert_array_equal(same, (labels[i] == labels[j]).astype(np.int64))
        assert (i[same == 1] != j[same == 1]).all(), "a genuine pair joins two different images"
        assert ((0 <= pairs[:, :2]) & (pairs[:, :2] < len(labels))).all()
    # rank r holds pairs r, r + R, ... of the one global epoch every rank draws
    whole = PairSampler(labels, pos_prob, num_pairs=per_rank * R, seed=3, num_replicas=1, rank=0)
    merged = np.empty((per_rank * R, 3), dtype=np.int64)
    for r, pairs in enumerate(out):
        merged[r::R] = pairs
    np.testing.assert_array_equal(merged, whole.epoch_pairs(epoch))


@pytest.mark.parametrize("pos_prob", [0.05, 0.5, 0.8])
def test_genuine_fraction_follows_pos_prob(pos_prob):
    labels = _labels([1, 3, 5, 2, 8, 4, 1, 6] * 25, seed=1)
    sampler = PairSampler(labels, pos_prob, num_pairs=20_000, seed=7, num_replicas=1, rank=0)
    genuine = int(sampler.epoch_pairs(0)[:, 2].sum())
    assert stats.binomtest(genuine, 20_000, pos_prob).pvalue > 1e-4


@pytest.mark.parametrize("pos_prob", [0.0, 1.0])
def test_extreme_pos_prob_gives_only_one_kind(pos_prob):
    labels = _labels([3, 1, 4, 2])
    pairs = PairSampler(labels, pos_prob, num_pairs=200, num_replicas=1, rank=0).epoch_pairs(0)
    assert (pairs[:, 2] == int(pos_prob)).all()


def test_partners_are_uniform_over_the_allowed_images():
    # identity 0 has images {a, b, c, d}: a genuine partner of a is uniform over {b, c, d};
    # an impostor partner of any image of identity 0 is uniform over the 12 other images
    labels = np.array([0] * 4 + [1] * 2 + [2] * 10)
    pairs = PairSampler(labels, 0.5, num_pairs=40_000, seed=2, num_replicas=1, rank=0).epoch_pairs(
        0
    )
    genuine = pairs[(pairs[:, 2] == 1) & (pairs[:, 0] == 0)]
    got = Counter(genuine[:, 1].tolist())
    assert set(got) == {1, 2, 3}
    assert stats.chisquare([got[k] for k in (1, 2, 3)]).pvalue > 1e-4
    impostor = pairs[(pairs[:, 2] == 0) & (labels[pairs[:, 0]] == 0)]
    got = Counter(impostor[:, 1].tolist())
    assert set(got) == set(range(4, 16))
    assert stats.chisquare([got[k] for k in range(4, 16)]).pvalue > 1e-4


def test_every_image_is_an_anchor_about_equally_often():
    labels = _labels([3, 1, 4, 2, 5, 1, 2], seed=4)
    n = len(labels)
    pairs = PairSampler(labels, 0.5, num_pairs=10 * n, num_replicas=1, rank=0).epoch_pairs(1)
    uses = np.bincount(pairs[:, 0], minlength=n)
    singles = np.isin(labels, [2, 10])  # identities with one image anchor impostor pairs only
    assert uses[~singles].min() >= 8 and uses.max() - uses[~singles].min() <= 2
    assert uses[singles].min() >= 4


def test_same_seed_and_epoch_reproduce_and_epochs_differ():
    labels = _labels([3, 4, 5, 6])
    a = PairSampler(labels, 0.5, seed=1, num_replicas=1, rank=0)
    b = PairSampler(torch.as_tensor(labels), 0.5, seed=1, num_replicas=1, rank=0)
    np.testing.assert_array_equal(a.epoch_pairs(2), b.epoch_pairs(2))
    assert not np.array_equal(a.epoch_pairs(2), a.epoch_pairs(3))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and list(a) == [tuple(p) for p in a.epoch_pairs(1).tolist()]


@pytest.mark.parametrize(
    ("labels", "kwargs", "error", "match"),
    [
        ([0, 0, 1], {"pos_prob": 1.5}, ValueError, r"pos_prob must be in \[0, 1\], got 1.5"),
        ([0, 0, 1], {"pos_prob": "0.5"}, TypeError, "pos_prob must be a real number"),
        ([0, 1, 2], {"pos_prob": 0.5}, ValueError, "needs an identity with at least 2 images"),
        ([0, 1, 2], {"pos_prob": 0.0}, None, None),
        ([4, 4, 4], {"pos_prob": 0.5}, ValueError, "needs at least 2 identities"),
        ([4, 4, 4], {"pos_prob": 1.0}, None, None),
        ([0, 0, 1], {"num_pairs": 0}, ValueError, "num_pairs must be in"),
        (
            [0, 0, 1],
            {"num_pairs": 1, "num_replicas": 2, "rank": 1, "drop_last": True},
            ValueError,
            "num_pairs must be at least num_replicas=2",
        ),
        ([0, 0, 1], {"num_replicas": 2, "rank": 5}, ValueError, "rank must be in"),
        ([[0, 0], [1, 1]], {}, ValueError, r"labels must have shape \(N,\)"),
        ([0.0, 1.0], {}, TypeError, "labels must have an integer dtype"),
    ],
)
def test_bad_arguments_raise_clear_errors(labels, kwargs, error, match):
    if error is None:
        assert len(PairSampler(labels, **kwargs)) == 3
        return
    with pytest.raises(error, match=match):
        PairSampler(labels, **kwargs)


def _dataset(labels):
    x = torch.arange(len(labels), dtype=torch.float32).unsqueeze(1) * 10
    return TensorDataset(x, torch.as_tensor(labels))


def test_pair_dataset_in_a_dataloader_gives_images_and_targets():
    labels = _labels([3, 4, 2, 5], seed=2)
    sampler = PairSampler(labels, 0.5, seed=5)
    loader = DataLoader(PairDataset(_dataset(labels)), sampler=sampler, batch_size=4)
    assert len(loader) == -(-len(labels) // 4)
    expected = sampler.epoch_pairs(0)
    got = [torch.cat(parts) for parts in zip(*loader)]
    x1, x2, same = got
    assert x1.shape == x2.shape == (len(labels), 1) and same.dtype == torch.int64
    np.testing.assert_array_equal(x1[:, 0].numpy() / 10, expected[:, 0])
    np.testing.assert_array_equal(x2[:, 0].numpy() / 10, expected[:, 1])
    np.testing.assert_array_equal(same.numpy(), expected[:, 2])


def test_pair_dataset_catches_labels_that_do_not_match_the_dataset():
    labels = _labels([3, 4, 2, 5], seed=2)
    dataset = PairDataset(_dataset(labels))
    i, j = 0, int(np.flatnonzero(labels != labels[0])[0])
    with pytest.raises(ValueError, match=rf"disagrees with the dataset's labels {labels[0]} and"):
        dataset[(i, j, 1)]
    assert PairDataset(_dataset(labels), check_labels=False)[(i, j, 1)][2] == 1
    with pytest.raises(TypeError, match=r"indexed by \(i, j, same\) triples"):
        dataset[3]
    with pytest.raises(TypeError, match="dataset must support indexing"):
        PairDataset(42)


def test_repr_shows_the_configuration():
    s = PairSampler(np.arange(40) % 10, num_pairs=100, pos_prob=0.25, num_replicas=2, rank=0)
    assert repr(s) == (
        "PairSampler(pairs=50, pos_prob=0.25, rank=0/2, drop_last=False, seed=0, epoch=0)"
    )
