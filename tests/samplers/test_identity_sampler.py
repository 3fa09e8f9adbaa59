"""IdentityBatchSampler: P x K structure, coverage, balance, determinism and DDP sharding."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from distributed_harness import run_distributed
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from metricface.samplers import IdentityBatchSampler


def _labels(counts, seed=0, offset=0):
    """Shuffled labels where identity ``c`` (label ``3 * c + offset``) has ``counts[c]`` images."""
    labels = np.repeat(3 * np.arange(len(counts)) + offset, counts)
    return np.random.default_rng(seed).permutation(labels)


def _make(labels, P, K, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return IdentityBatchSampler(labels, P, K, **kwargs)


def _expected_batches(counts, P, K, R, drop_last):
    """Total batches over all ranks, re-derived from the documented rule."""
    groups = [-(-n // K) for n in counts]
    total = sum(groups)
    if drop_last:
        return total // (P * R) * R
    needed = max(-(-total // P), max(groups))
    return -(-needed // R) * R


def _check_structure(labels, batches, P, K):
    for batch in batches:
        lab = labels[batch].reshape(P, K)
        assert (lab == lab[:, :1]).all(), "an identity's K images must be consecutive"
        assert len(set(lab[:, 0].tolist())) == P, "identities in a batch must be distinct"


@given(
    counts=st.lists(st.integers(1, 12), min_size=1, max_size=25),
    P=st.integers(1, 6),
    K=st.integers(1, 5),
    R=st.integers(1, 4),
    drop_last=st.booleans(),
    min_images=st.integers(1, 3),
    epoch=st.integers(0, 5),
)
def test_batches_are_p_by_k_cover_the_data_and_shard_evenly(
    counts, P, K, R, drop_last, min_images, epoch
):
    labels = _labels(counts)
    eligible = [n for n in counts if n >= min_images]
    expected = _expected_batches(eligible, P, K, R, drop_last) if eligible else 0
    if len(eligible) < P or expected == 0:
        with pytest.raises(ValueError):
            _make(labels, P, K, num_replicas=R, rank=0, drop_last=drop_last, min_images=min_images)
        return
    shards = [
        _make(labels, P, K, num_replicas=R, rank=r, drop_last=drop_last, min_images=min_images)
        for r in range(R)
    ]
    out = [s.epoch_batches(epoch) for s in shards]
    assert {len(s) for s in shards} == {expected // R}
    for b in out:
        assert b.shape == (expected // R, P * K)
        _check_structure(labels, b, P, K)
    used = Counter(np.concatenate(out).ravel().tolist())
    eligible_ids = {3 * c for c, n in enumerate(counts) if n >= min_images}
    eligible_images = {i for i in range(len(labels)) if labels[i] in eligible_ids}
    assert set(used) <= eligible_images
    if not drop_last:
        assert set(used) == eligible_images, "every eligible image is visited"
    # an identity's images are used equally often (+-1): K-groups are filled cyclically
    for c in eligible_ids:
        uses = [used.get(i, 0) for i in np.flatnonzero(labels == c)]
        assert max(uses) - min(uses) <= 1


@given(
    groups=st.lists(st.integers(1, 6), min_size=1, max_size=30),
    P=st.integers(1, 5),
    K=st.integers(1, 4),
    R=st.integers(1, 4),
)
def test_exactly_divisible_data_is_split_into_disjoint_shards(groups, P, K, R):
    # identities with whole K-groups whose total fills every rank's batches: no padding at all,
    # so the ranks' shards must partition the images exactly
    groups = groups + [1] * (-sum(groups) % (P * R))
    assume(len(groups) >= P and max(groups) <= sum(groups) // P)
    labels = _labels([g * K for g in groups], seed=1)
    shards = [
        _make(labels, P, K, num_replicas=R, rank=r, min_images=1).epoch_batches(2) for r in range(R)
    ]
    flat = np.concatenate([s.ravel() for s in shards])
    assert sorted(flat.tolist()) == list(range(len(labels)))
    assert len({s.shape for s in shards}) == 1


def test_same_seed_and_epoch_give_the_same_batches_and_epochs_differ():
    labels = _labels([5, 7, 3, 9, 4, 6, 2, 8], seed=3)
    a = _make(labels, 3, 2, seed=11, num_replicas=1, rank=0)
    b = _make(labels.tolist(), 3, 2, seed=11, num_replicas=1, rank=0)
    c = _make(torch.as_tensor(labels), 3, 2, seed=11, num_replicas=1, rank=0)
    np.testing.assert_array_equal(a.epoch_batches(4), b.epoch_batches(4))
    np.testing.assert_array_equal(a.epoch_batches(4), c.epoch_batches(4))
    assert not np.array_equal(a.epoch_batches(4), a.epoch_batches(5))
    other_seed = _make(labels, 3, 2, seed=12, num_replicas=1, rank=0)
    assert not np.array_equal(a.epoch_batches(4), other_seed.epoch_batches(4))


def test_iteration_follows_set_epoch():
    labels = _labels([4] * 10)
    sampler = _make(labels, 4, 2, num_replicas=1, rank=0)
    first = list(sampler)
    assert first == list(sampler), "without set_epoch an epoch repeats"
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    assert len(second) == len(sampler)
    assert all(isinstance(i, int) for batch in second for i in batch)
    assert second == sampler.epoch_batches(1).tolist()


def test_identities_meet_many_different_identities():
    # 200 identities x 20 images, P=8, K=4: each identity fills 5 batches per epoch. Laying the
    # groups out without mixing would pair an identity with the same few neighbours; the
    # random row permutations make its 5 batches hold ~35 distinct other identities.
    labels = _labels([20] * 200)
    batches = _make(labels, 8, 4, num_replicas=1, rank=0).epoch_batches(0)
    met = [set() for _ in range(200)]
    for batch in batches:
        ids = set((labels[batch] // 3).tolist())
        for c in ids:
            met[c] |= ids - {c}
    assert np.mean([len(m) for m in met]) > 28


def test_small_identities_are_padded_with_their_own_images():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
    batches = _make(labels, 2, 5, num_replicas=1, rank=0).epoch_batches(0)
    for batch in batches:
        for group in batch.reshape(2, 5):
            ident = labels[group[0]]
            own = np.flatnonzero(labels == ident)
            assert set(group.tolist()) == set(own.tolist())  # each of its images, none else
            uses = Counter(group.tolist()).values()
            assert max(uses) - min(uses) <= 1


def test_a_dominant_identity_gets_one_group_per_batch():
    # identity 0 has 40 groups of K=2, the rest 5 in total: the epoch needs 40 batches and
    # fills them with repeated groups of the small identities rather than skipping images
    labels = _labels([80, 2, 2, 2, 2, 2])
    with pytest.warns(UserWarning, match="identity 0 forms 40 groups .* 35 of its 80 groups"):
        sampler = IdentityBatchSampler(labels, 2, 2, num_replicas=1, rank=0)
    batches = sampler.epoch_batches(0)
    assert len(sampler) == 40
    _check_structure(labels, batches, 2, 2)
    assert set(batches.ravel().tolist()) == set(range(len(labels)))
    capped = IdentityBatchSampler(labels, 2, 2, num_replicas=1, rank=0, drop_last=True)
    assert len(capped) == 22  # 45 groups // 2; identity 0 is left with 22 groups
    _check_structure(labels, capped.epoch_batches(0), 2, 2)


def test_single_image_identities_are_excluded_with_a_warning_or_kept():
    labels = np.array([0, 0, 1, 2, 2, 3])
    with pytest.warns(UserWarning, match=r"leaves out 2 of 4 identities \(2 images\)"):
        sampler = IdentityBatchSampler(labels, 2, 2)
    np.testing.assert_array_equal(sampler.identities, [0, 2])
    assert set(sampler.epoch_batches(0).ravel().tolist()) == {0, 1, 3, 4}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = IdentityBatchSampler(labels, 4, 2, min_images=1)
    assert set(kept.epoch_batches(0).ravel().tolist()) == set(range(6))


def test_replicas_default_to_a_single_process():
    sampler = _make(_labels([4] * 6), 2, 2)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)
    assert sampler.batch_size == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"identities_per_batch": 5},
            ValueError,
            r"identities_per_batch must be at most .* \(4\), got 5",
        ),
        (
            {"images_per_identity": 0},
            ValueError,
            r"images_per_identity must be in \[1, inf\), got 0",
        ),
        ({"images_per_identity": 2.0}, TypeError, "images_per_identity must be an int"),
        (
            {"num_replicas": 2, "rank": 2},
            ValueError,
            r"rank must be in \[0, num_replicas=2\), got 2",
        ),
        ({"num_replicas": 2, "rank": -1}, ValueError, "rank must be in"),
        ({"num_replicas": 0, "rank": 0}, ValueError, "num_replicas must be in"),
        ({"seed": -1}, ValueError, "seed must be in"),
        ({"min_images": 0}, ValueError, "min_images must be in"),
        ({"drop_last": 1}, TypeError, "drop_last must be a bool, got int"),
        ({"labels": np.zeros((4, 2), dtype=int)}, ValueError, r"labels must have shape \(N,\)"),
        ({"labels": np.zeros(8)}, TypeError, "labels must have an integer dtype, got float64"),
        ({"labels": torch.zeros(8)}, TypeError, "labels must have an integer dtype"),
        ({"labels": "aabb"}, TypeError, "labels must be a 1-D sequence"),
        (
            {
                "labels": [0, 0, 1, 1, 2, 2, 3, 3],
                "drop_last": True,
                "identities_per_batch": 4,
                "images_per_identity": 2,
                "num_replicas": 2,
                "rank": 0,
            },
            ValueError,
            "drop_last=True leaves no batch",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    args = {"labels": _labels([3, 3, 3, 3]), "identities_per_batch": 2, "images_per_identity": 2}
    args.update(kwargs)
    labels = args.pop("labels")
    with pytest.raises(error, match=match):
        IdentityBatchSampler(
            labels, args.pop("identities_per_batch"), args.pop("images_per_identity"), **args
        )


def test_set_epoch_rejects_negative():
    with pytest.raises(ValueError, match="epoch must be in"):
        _make(_labels([2, 2]), 2, 2).set_epoch(-1)


def test_dataloader_with_batch_sampler_yields_p_by_k_batches():
    labels = _labels([6, 5, 4, 7, 3, 2], seed=5, offset=-7)  # negative labels are fine
    images = torch.arange(len(labels), dtype=torch.float32).unsqueeze(1)
    dataset = TensorDataset(images, torch.as_tensor(labels))
    sampler = _make(labels, 3, 2, num_replicas=1, rank=0)
    seen = set()
    for epoch in range(2):
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0)
        batches = list(loader)
        assert len(batches) == len(loader) == len(sampler)
        for x, y in batches:
            assert x.shape == (6, 1)
            lab = y.view(3, 2)
            assert (lab == lab[:, :1]).all() and lab[:, 0].unique().numel() == 3
            assert torch.equal(y, torch.as_tensor(labels)[x[:, 0].long()])
            seen |= set(x[:, 0].long().tolist())
    assert seen == set(range(len(labels)))


LABELS_DDP = _labels([7, 3, 5, 9, 2, 4, 6, 8, 3, 5], seed=9)


def _ddp_worker(rank, world_size, labels):
    sampler = IdentityBatchSampler(labels, 3, 2, seed=4)  # layout taken from torch.distributed
    sampler.set_epoch(1)
    images = torch.arange(len(labels)).unsqueeze(1)
    loader = DataLoader(TensorDataset(images), batch_sampler=sampler)
    return {
        "batches": [b[0][:, 0] for b in loader],
        "rank": torch.tensor([sampler.rank, sampler.num_replicas]),
    }


@pytest.mark.slow
@pytest.mark.distributed
def test_two_gloo_ranks_get_disjoint_batches_of_equal_count():
    results = run_distributed(_ddp_worker, world_size=2, args=(LABELS_DDP,))
    assert [r["rank"].tolist() for r in results] == [[0, 2], [1, 2]]
    mine = [[b.tolist() for b in r["batches"]] for r in results]
    assert len(mine[0]) == len(mine[1]) > 0
    single = _make(LABELS_DDP, 3, 2, seed=4, num_replicas=2, rank=0)
    single.set_epoch(1)
    assert mine[0] == list(single)
    # the two ranks' batches are different slices of one epoch ...
    assert not {tuple(b) for b in mine[0]} & {tuple(b) for b in mine[1]}
    # ... that together visit every image
    assert {i for b in mine[0] + mine[1] for i in b} == set(range(len(LABELS_DDP)))


def test_repr_shows_the_configuration_and_this_ranks_share():
    s = IdentityBatchSampler(np.arange(40) % 10, 4, 2, num_replicas=2, rank=1, seed=3)
    s.set_epoch(5)
    assert repr(s) == (
        "IdentityBatchSampler(identities_per_batch=4, images_per_identity=2, identities=10, "
        f"batches={len(s)}, rank=1/2, drop_last=False, seed=3, epoch=5)"
    )
