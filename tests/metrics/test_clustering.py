"""Clustering metrics against brute force and scikit-learn; k-means against scikit-learn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from metricface.metrics import (
    cluster_accuracy,
    kmeans,
    kmeans_cluster_accuracy,
    normalized_mutual_info,
)


def brute_force_accuracy(y_true, y_pred):
    """Best accuracy over every one-to-one map of clusters to classes (by enumeration)."""
    classes, clusters = sorted(set(y_true)), sorted(set(y_pred))
    size = max(len(classes), len(clusters))
    padded_classes = classes + [None] * (size - len(classes))
    best = 0
    for perm in itertools.permutations(padded_classes):
        mapping = dict(zip(clusters, perm))
        best = max(best, sum(mapping[p] == t for t, p in zip(y_true, y_pred)))
    return best / len(y_true)


labelings = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
        st.lists(st.integers(-1, 3), min_size=n, max_size=n),
    )
)


@given(labelings)
def test_cluster_accuracy_matches_brute_force(pair):
    y_true, y_pred = pair
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(brute_force_accuracy(y_true, y_pred))


@given(labelings, st.permutations([10, 20, 30, 40, 50]))
def test_cluster_accuracy_invariant_to_renaming_clusters(pair, names):
    y_true, y_pred = pair
    renamed = [names[p + 1] for p in y_pred]
    assert cluster_accuracy(y_true, renamed) == cluster_accuracy(y_true, y_pred)


@given(labelings, st.sampled_from(["arithmetic", "geometric", "min", "max"]))
def test_nmi_matches_sklearn(pair, method):
    y_true, y_pred = pair
    expected = normalized_mutual_info_score(y_true, y_pred, average_method=method)
    got = normalized_mutual_info(np.array(y_true), torch.tensor(y_pred), average_method=method)
    assert got == pytest.approx(expected, abs=1e-12)


def test_partition_scores_accept_strings_and_check_inputs():
    assert cluster_accuracy(["a", "a", "b"], [1, 1, 0]) == 1.0
    assert normalized_mutual_info(["a", "a", "b"], [1, 1, 0]) == pytest.approx(1.0)
    with pytest.raises(
        ValueError, match=r"labels_pred must have the same length as labels_true \(3\), got 2"
    ):
        cluster_accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="labels_true must be non-empty"):
        cluster_accuracy([], [])
    with pytest.raises(TypeError, match="labels_true must hold integer"):
        normalized_mutual_info([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="labels_pred must be 1-d"):
        cluster_accuracy([0, 1], [[0, 1]])
    with pytest.raises(ValueError, match="average_method must be"):
        normalized_mutual_info([0, 1], [0, 1], average_method="mean")


def blobs(n_per, centers, spread, seed):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.as_tensor(centers, dtype=torch.float32)
    x = centers.repeat_interleave(n_per, 0) + spread * torch.randn(
        n_per * len(centers), centers.shape[1], generator=gen
    )
    return x, torch.arange(len(centers)).repeat_interleave(n_per)


@given(st.integers(0, 2**31 - 1), st.integers(2, 6))
def test_kmeans_matches_sklearn_on_separated_blobs(seed, k):
    gen = torch.Generator().manual_seed(seed)
    centers = 20.0 * torch.randn(k, 5, generator=gen)
    x, y = blobs(15, centers, 0.5, seed)
    ours = kmeans(x, k, seed=seed)
    ref = KMeans(n_clusters=k, n_init=3, random_state=seed % 1000).fit(x.numpy())
    assert adjusted_rand_score(ref.labels_, ours.labels.numpy()) == 1.0
    assert adjusted_rand_score(y.numpy(), ours.labels.numpy()) == 1.0
    # same partition, so the same float64 inertia
    direct = float((x.double() - ours.centers.double()[ours.labels]).square().sum())
    assert ours.inertia == pytest.approx(direct, rel=1e-6)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-3)


def test_kmeans_is_a_lloyd_fixed_point_and_deterministic():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 4, generator=gen, dtype=torch.float64)  # no cluster structure
    state = torch.random.get_rng_state()
    res = kmeans(x, 7, seed=11, tol=0.0, max_iter=1000, n_init=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    again = kmeans(x, 7, seed=11, tol=0.0, max_iter=1000, n_init=2)
    assert torch.equal(res.labels, again.labels) and torch.equal(res.centers, again.centers)
    # each point sits with its nearest center, each center is the mean of its points
    d = ((x[:, None, :] - res.centers[None]) ** 2).sum(-1)
    assert torch.equal(d.argmin(1), res.labels)
    for c in range(7):
        torch.testing.assert_close(res.centers[c], x[res.labels == c].mean(0))
    assert res.inertia == pytest.approx(float(d.min(1).values.sum()))
    assert res.centers.dtype == torch.float64


def test_kmeans_inside_an_autocast_region_equals_outside():
    # bfloat16 products in the expanded distances would assign points to a farther center
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 32, generator=gen)
    ref = kmeans(x, 10, max_iter=50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = kmeans(x, 10, max_iter=50)
    assert torch.equal(res.labels, ref.labels)
    assert res.inertia == ref.inertia


def test_kmeans_distance_blocks_stay_within_budget(monkeypatch):
    # Clustering N faces into thousands of identities must not build (rows x K) blocks of
    # 65536 rows whatever K is: every intermediate tensor stays within the entry budget.
    from torch.utils._python_dispatch import TorchDispatchMode

    import metricface.metrics.clustering as clustering

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(600, 8, generator=gen)
    ref = kmeans(x, 150, max_iter=5)

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] == 150:
                Largest.numel = max(Largest.numel, out.numel())
            return out

    monkeypatch.setattr(clustering, "_BLOCK_ENTRIES", 150 * 64)
    with Largest():
        res = kmeans(x, 150, max_iter=5)
    assert 0 < Largest.numel <= 150 * 64
    assert torch.equal(res.labels, ref.labels) and res.inertia == ref.inertia


def test_kmeans_handles_duplicates_and_k_equal_n():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    res = kmeans(x, 3)
    assert res.inertia == 0.0
    assert len(set(res.labels.tolist())) == 2  # duplicates share a point; no crash, no NaN
    assert torch.isfinite(res.centers).all()
    assert kmeans(x[:2], 1).labels.tolist() == [0, 0]


def test_kmeans_on_device_matches_cpu(device):
    x, _ = blobs(20, 10.0 * torch.eye(4), 0.3, seed=0)
    cpu = kmeans(x, 4, seed=5)
    out = kmeans(x.to(device), 4, seed=5)
    assert out.labels.device.type == device.type
    assert adjusted_rand_score(cpu.labels.numpy(), out.labels.cpu().numpy()) == 1.0


def test_kmeans_cluster_accuracy_on_blobs():
    # blobs in different directions: separable after L2 normalisation
    x, y = blobs(25, 10.0 * torch.eye(5), 0.5, seed=1)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    scores = kmeans_cluster_accuracy(x[perm], y[perm] + 100, seed=0)
    assert scores.accuracy == 1.0 and scores.nmi == pytest.approx(1.0)
    assert scores.labels_pred.shape == (125,)
    # fewer clusters than identities: at most 3 of 5 identities can be matched
    assert kmeans_cluster_accuracy(x, y, 3).accuracy <= 0.6 + 1e-12


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: kmeans(torch.randn(3, 2), 4),
            ValueError,
            r"at most the number of points \(3\), got 4",
        ),
        (lambda: kmeans(torch.randn(3, 2), 0), ValueError, "n_clusters must be in"),
        (
            lambda: kmeans(torch.tensor([[float("nan"), 0.0]]), 1),
            ValueError,
            "x must contain only finite",
        ),
        (lambda: kmeans(torch.empty(0, 2), 1), ValueError, "x must be non-empty"),
        (lambda: kmeans(torch.randn(3, 2), 2, n_init=0), ValueError, "n_init must be in"),
        (
            lambda: kmeans_cluster_accuracy(torch.randn(3, 2), [0, 1]),
            ValueError,
            r"one entry per embedding \(3\), got 2",
        ),
    ],
)
def test_kmeans_validation(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_kmeans_unknown_or_missing_device_is_a_clear_error(monkeypatch):
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"device must be a device such as .*got 'bogus'"):
        kmeans(x, 2, device="bogus")
    with pytest.raises(TypeError, match=r"device must be a torch.device, a string"):
        kmeans(x, 2, device=1.5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda' needs CUDA, which is not available"):
        kmeans(x, 2, device="cuda")
    with pytest.raises(ValueError, match=r"device=device\(type='cuda', index=0\) needs CUDA"):
        kmeans_cluster_accuracy(x, torch.arange(10) % 2, device=torch.device("cuda:0"))
