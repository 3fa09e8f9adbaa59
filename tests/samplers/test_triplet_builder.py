"""DistortedTripletDataset: identities, distortion of the positive only, reproducibility."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from torch.utils.data import DataLoader, TensorDataset

from metricface.samplers import DistortedTripletDataset


def _dataset(labels):
    x = torch.arange(len(labels), dtype=torch.float32).unsqueeze(1)
    return TensorDataset(x, torch.as_tensor(labels))


def _noise(x):
    return x + 1000 + torch.rand(1)  # a recognisable, random distortion


@given(
    counts=st.lists(st.integers(1, 6), min_size=2, max_size=10),
    positive=st.sampled_from(["any", "same", "other"]),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 5),
)
def test_triplets_have_the_right_identities(counts, positive, seed, epoch):
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    ds = DistortedTripletDataset(
        _dataset(labels), _noise, labels=labels, positive=positive, seed=seed
    )
    ds.set_epoch(epoch)
    assert len(ds) == len(labels)
    for index in range(len(labels)):
        a, p, n = ds.triplet_indices(index)
        assert a == index
        assert labels[p] == labels[a] and labels[n] != labels[a]
        if positive == "same" or counts[labels[a]] == 1:
            assert p == a
        elif positive == "other":
            assert p != a


def test_items_hold_clean_anchor_distorted_positive_and_negative():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    ds = DistortedTripletDataset(_dataset(labels), _noise, labels=labels, return_labels=True)
    for index in range(len(labels)):
        anchor, positive, negative, anchor_label, negative_label = ds[index]
        a, p, n = ds.triplet_indices(index)
        assert anchor.item() == a and negative.item() == n
        assert 1000 + p <= positive.item() < 1001 + p  # distort applied to image p only
        assert anchor_label == labels[a] and negative_label == labels[n] != anchor_label


def test_items_are_reproducible_and_change_with_the_epoch():
    labels = np.repeat(np.arange(6), 5)
    ds = DistortedTripletDataset(_dataset(labels), _noise, labels=labels, seed=3)
    first = [ds[i] for i in range(len(ds))]
    torch.manual_seed(123)  # the global generator does not matter
    again = [ds[i] for i in range(len(ds))]
    assert all(torch.equal(x, y) for f, g in zip(first, again) for x, y in zip(f, g))
    state = torch.get_rng_state()
    ds[0]
    assert torch.equal(state, torch.get_rng_state()), "the global generator is left untouched"
    ds.set_epoch(1)
    later = [ds.triplet_indices(i) for i in range(len(ds))]
    assert later != [ds.triplet_indices(i, epoch=0) for i in range(len(ds))]


def test_dataloader_workers_and_dataset_targets():
    labels = np.repeat(np.arange(5), 4)
    base = _dataset(labels)
    base.targets = labels.tolist()  # as torchvision's ImageFolder provides
    ds = DistortedTripletDataset(base, _noise, seed=1)
    single = [torch.cat(part) for part in zip(*DataLoader(ds, batch_size=6))]
    multi = [torch.cat(part) for part in zip(*DataLoader(ds, batch_size=6, num_workers=2))]
    for x, y in zip(single, multi):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_negatives_are_uniform_over_other_identities_images():
    labels = np.array([0] * 3 + [1] * 2 + [2] * 6)
    ds = DistortedTripletDataset(_dataset(labels), _noise, labels=labels)
    got = Counter(ds.triplet_indices(0, epoch=e)[2] for e in range(2000))
    assert set(got) == set(range(3, 11))
    assert stats.chisquare([got[k] for k in range(3, 11)]).pvalue > 1e-4
    positives = Counter(ds.triplet_indices(0, epoch=e)[1] for e in range(1500))
    assert set(positives) == {0, 1, 2}  # "any" includes the anchor itself
    assert stats.chisquare([positives[k] for k in range(3)]).pvalue > 1e-4


def test_bad_arguments_raise_clear_errors():
    labels = np.array([0, 0, 1, 1])
    base = _dataset(labels)
    with pytest.raises(TypeError, match="distort must be callable, got int"):
        DistortedTripletDataset(base, 3, labels=labels)
    with pytest.raises(ValueError, match="positive must be one of"):
        DistortedTripletDataset(base, _noise, labels=labels, positive="clean")
    with pytest.raises(ValueError, match="no `targets` attribute"):
        DistortedTripletDataset(base, _noise)
    with pytest.raises(ValueError, match=r"one entry per dataset item \(4\), got 3"):
        DistortedTripletDataset(base, _noise, labels=[0, 0, 1])
    with pytest.raises(ValueError, match="at least 2 identities"):
        DistortedTripletDataset(base, _noise, labels=[5, 5, 5, 5])
    ds = DistortedTripletDataset(base, _noise, labels=[1, 1, 0, 0])
    with pytest.raises(ValueError, match="has label 0 but labels"):
        ds[0]
    ds = DistortedTripletDataset(base, _noise, labels=labels)
    with pytest.raises(IndexError, match=r"index must be in \[-4, 4\), got 4"):
        ds[4]
    with pytest.raises(TypeError, match="index must be an int"):
        ds[1.0]
    assert ds.triplet_indices(-1)[0] == 3
