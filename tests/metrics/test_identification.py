"""Closed- and open-set identification against brute-force float64 re-derivations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metricface.metrics import (
    cmc_curve,
    cmc_curve_from_scores,
    open_set_identification,
    open_set_identification_from_scores,
    top_k_accuracy,
)


def brute_force_summary(scores, probe_labels, gallery_labels):
    """Per probe: genuine identity score, its rank (ties against it), best identity score."""
    scores = np.asarray(scores, dtype=np.float64)
    ids = sorted(set(gallery_labels))
    out = []
    for row, label in zip(scores, probe_labels):
        best = {i: max(s for s, g in zip(row, gallery_labels) if g == i) for i in ids}
        top = max(best.values())
        if label in best:
            genuine = best[label]
            rank = 1 + sum(1 for i, s in best.items() if i != label and s >= genuine)
            out.append((genuine, rank, top))
        else:
            out.append((None, None, top))
    return out, len(ids)


@st.composite
def score_problem(draw, all_enrolled=True):
    n_ids = draw(st.integers(1, 5))
    n_gallery = draw(st.integers(n_ids, 12))
    gallery_labels = list(range(n_ids)) + draw(
        st.lists(st.integers(0, n_ids - 1), min_size=n_gallery - n_ids, max_size=n_gallery - n_ids)
    )
    gallery_labels = draw(st.permutations(gallery_labels))
    n_probes = draw(st.integers(1, 8))
    lo = 0 if all_enrolled else -2
    probe_labels = draw(st.lists(st.integers(lo, n_ids - 1), min_size=n_probes, max_size=n_probes))
    scores = draw(
        st.lists(
            st.lists(st.integers(-3, 3), min_size=n_gallery, max_size=n_gallery),
            min_size=n_probes,
            max_size=n_probes,
        )
    )
    return np.array(scores, dtype=np.float64), probe_labels, list(gallery_labels)


@given(score_problem())
def test_cmc_from_scores_matches_brute_force(problem):
    scores, probe_labels, gallery_labels = problem
    summary, n_ids = brute_force_summary(scores, probe_labels, gallery_labels)
    cmc = cmc_curve_from_scores(scores, np.array(probe_labels), np.array(gallery_labels))
    expected = [np.mean([r <= rank for _, r, _ in summary]) for rank in range(1, n_ids + 1)]
    np.testing.assert_allclose(cmc, expected, rtol=0, atol=1e-12)
    assert np.all(np.diff(cmc) >= 0)
    assert cmc[-1] == 1.0


@st.composite
def embedding_problem(draw, all_enrolled=True):
    dim = draw(st.integers(1, 3))
    _, probe_labels, gallery_labels = draw(score_problem(all_enrolled))
    vec = st.lists(st.integers(-2, 2), min_size=dim, max_size=dim)
    g = draw(st.lists(vec, min_size=len(gallery_labels), max_size=len(gallery_labels)))
    p = draw(st.lists(vec, min_size=len(probe_labels), max_size=len(probe_labels)))
    chunk = draw(st.integers(1, len(gallery_labels) + 1))
    return (torch.tensor(p, dtype=torch.float64), torch.tensor(probe_labels),
            torch.tensor(g, dtype=torch.float64), torch.tensor(gallery_labels), chunk)  # fmt: skip


@given(embedding_problem())
def test_chunked_embeddings_path_equals_score_matrix_path(problem):
    # integer embeddings with metric="dot" give exact scores and many exact ties
    p, pl, g, gl, chunk = problem
    cmc = cmc_curve(p, pl, g, gl, metric="dot", chunk_size=chunk)
    np.testing.assert_array_equal(cmc, cmc_curve_from_scores(p @ g.T, pl, gl))
    n_ids = len(set(gl.tolist()))
    for k in (1, n_ids):
        acc = top_k_accuracy(p, pl, g, gl, k, metric="dot", chunk_size=chunk)
        assert acc == cmc[k - 1]


@given(st.integers(0, 2**31 - 1))
def test_top1_equals_argmax_of_full_score_matrix(seed):
    gen = torch.Generator().manual_seed(seed)
    gallery_labels = torch.randint(0, 6, (30,), generator=gen)
    gallery_labels[:6] = torch.arange(6)
    probe_labels = torch.randint(0, 6, (25,), generator=gen)
    p, g = torch.randn(25, 8, generator=gen), torch.randn(30, 8, generator=gen)
    full = (
        torch.nn.functional.normalize(p.double(), dim=1)
        @ torch.nn.functional.normalize(g.double(), dim=1).T
    )
    expected = (gallery_labels[full.argmax(1)] == probe_labels).double().mean().item()
    assert top_k_accuracy(p, probe_labels, g, gallery_labels, 1, chunk_size=7) == expected


def test_ties_count_against_the_genuine_identity():
    scores = np.array([[0.5, 0.5, 0.1]])
    cmc = cmc_curve_from_scores(scores, np.array([0]), np.array([0, 1, 2]))
    np.testing.assert_array_equal(cmc, [0.0, 1.0, 1.0])
    # a collapsed model (all embeddings equal) has rank = number of identities, not 1
    emb = torch.ones(4, 3)
    cmc = cmc_curve(emb, torch.tensor([0, 1, 2, 3]), emb, torch.tensor([0, 1, 2, 3]))
    np.testing.assert_array_equal(cmc, [0.0, 0.0, 0.0, 1.0])


def test_identity_scored_by_its_best_gallery_row():
    # identity 1 has one weak and one strong row; identity 0 a single medium row
    scores = np.array([[0.6, 0.2, 0.9], [0.6, 0.2, 0.9]])
    gl = np.array([0, 1, 1])
    np.testing.assert_array_equal(cmc_curve_from_scores(scores, np.array([1, 0]), gl), [0.5, 1])


def test_euclidean_metric_ranks_by_distance():
    gallery = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    probes = torch.tensor([[1.0, 0.0], [9.0, 0.0]])
    labels = torch.tensor([0, 1])
    assert top_k_accuracy(probes, labels, gallery, labels, metric="euclidean") == 1.0
    assert top_k_accuracy(probes, labels.flip(0), gallery, labels, metric="euclidean") == 0.0


def test_max_rank_truncates():
    scores = np.eye(4)
    labels = np.arange(4)
    np.testing.assert_array_equal(cmc_curve_from_scores(scores, labels, labels, max_rank=2), [1, 1])


# ------------------------------------------------------------------------------------ open set


def open_set_reference(summary, mated, rank, target):
    """Best DIR over every threshold whose FPIR is within target, by direct counting."""
    non = [top for (g, r, top), m in zip(summary, mated) if not m]
    known = [(g, r) for (g, r, top), m in zip(summary, mated) if m]
    cands = {-math.inf} | {s for s in non} | {np.nextafter(s, math.inf) for s in non}
    cands |= {g for g, _ in known}
    best = -1.0
    for t in cands:
        fpir = sum(s >= t for s in non) / len(non)
        if fpir <= target + 1e-12:
            best = max(best, sum(r <= rank and g >= t for g, r in known) / len(known))
    return best


@given(score_problem(all_enrolled=False), st.integers(1, 5), st.floats(0, 1))
def test_open_set_matches_brute_force(problem, rank, target):
    scores, probe_labels, gallery_labels = problem
    summary, n_ids = brute_force_summary(scores, probe_labels, gallery_labels)
    mated = [lab in set(gallery_labels) for lab in probe_labels]
    if all(mated) or not any(mated):
        with pytest.raises(ValueError, match="needs both mated probes"):
            open_set_identification_from_scores(scores, probe_labels, gallery_labels, fpir=0.5)
        return
    rank = min(rank, n_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = open_set_identification_from_scores(
            scores, np.array(probe_labels), np.array(gallery_labels), fpir=target, rank=rank
        )
    assert res.dir[0] == pytest.approx(open_set_reference(summary, mated, rank, target))
    assert res.fpir[0] <= target + 1e-12
    # DIR(T, R) <= CMC(R) over the mated probes
    cmc_r = np.mean([r <= rank for (g, r, t), m in zip(summary, mated) if m])
    assert np.all(res.curve_dir <= cmc_r + 1e-12)
    assert res.curve_dir[-1] == pytest.approx(cmc_r)
    # thresholds decrease along the curve; FPIR and DIR can only grow
    assert np.all(np.diff(res.curve_thresholds) < 0)
    assert np.all(np.diff(res.curve_fpir) >= 0) and np.all(np.diff(res.curve_dir) >= 0)
    # each curve point reproduces by direct counting
    non = np.array([t for (g, r, t), m in zip(summary, mated) if not m])
    for t, f in zip(res.curve_thresholds, res.curve_fpir):
        assert f == np.mean(non >= t)


def test_open_set_threshold_example():
    # 4 mated probes (identity 0..3) and 4 non-mated probes (label -1)
    g = torch.eye(4)
    mated = torch.eye(4) * torch.tensor([[0.9], [0.8], [0.7], [0.6]]) + 0.1 * torch.roll(
        torch.eye(4), 1, 1
    )
    non = torch.tensor([[0.75, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0.3, 0], [0, 0, 0, 0.2]])
    probes = torch.cat([mated, non])
    labels = torch.tensor([0, 1, 2, 3, -1, -1, -1, -1])
    res = open_set_identification(
        probes, labels, g, torch.arange(4), fpir=[0.0, 0.25, 0.5], metric="dot"
    )
    # FPIR <= 0: threshold just above 0.75 -> genuine 0.9 and 0.8 pass;
    # FPIR <= 0.25: just above 0.5 (the second-best non-mated score) -> all four pass
    np.testing.assert_allclose(res.dir, [0.5, 1.0, 1.0])
    np.testing.assert_allclose(res.fpir, [0.0, 0.25, 0.5])
    assert res.thresholds[0] > 0.75 and res.thresholds[0] == pytest.approx(0.75)


def test_explicit_unknown_mask_overrides_labels():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    labels = np.array([0, 1, 0])  # third probe's label collides with an enrolled identity
    unknown = np.array([False, False, True])
    res = open_set_identification_from_scores(
        scores, labels, np.array([0, 1]), fpir=0.0, unknown=unknown
    )
    assert res.dir[0] == 1.0 and res.fpir[0] == 0.0
    assert res.thresholds[0] == np.nextafter(0.7, 1.0)


def test_fpir_target_below_resolution_warns():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    with pytest.warns(UserWarning, match="below the resolution of 1 non-mated"):
        open_set_identification_from_scores(scores, np.array([0, 1, 5]), np.array([0, 1]), fpir=0.5)


def test_fpir_one_accepts_everything():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    res = open_set_identification_from_scores(
        scores, np.array([0, 0, 5]), np.array([0, 1]), fpir=1.0
    )
    assert res.thresholds[0] == -math.inf and res.dir[0] == 0.5 and res.fpir[0] == 1.0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: cmc_curve_from_scores(np.eye(2), [0, 7], [0, 1]), ValueError, "1 probe"),
        (
            lambda: cmc_curve_from_scores(np.eye(2), [0, 1], [0, 1], max_rank=3),
            ValueError,
            "at most the number of gallery identities",
        ),
        (
            lambda: cmc_curve_from_scores(np.eye(2), [0.0, 1.0], [0, 1]),
            TypeError,
            "probe_labels must have an integer dtype",
        ),
        (
            lambda: cmc_curve_from_scores(np.eye(2), [0, 1, 1], [0, 1]),
            ValueError,
            "probe_labels must have one entry",
        ),
        (
            lambda: cmc_curve_from_scores(np.eye(2), [0, 1], [0]),
            ValueError,
            "gallery_labels must have one entry",
        ),
        (
            lambda: cmc_curve_from_scores(np.full((2, 2), np.nan), [0, 1], [0, 1]),
            ValueError,
            "scores must contain only finite",
        ),
        (
            lambda: cmc_curve_from_scores(np.ones(2), [0, 1], [0, 1]),
            ValueError,
            "scores must be a non-empty matrix",
        ),
        (
            lambda: cmc_curve(torch.ones(2, 3), [0, 1], torch.ones(2, 4), [0, 1]),
            ValueError,
            "same embedding dimension",
        ),
        (
            lambda: top_k_accuracy(torch.ones(2, 3), [0, 1], torch.ones(2, 3), [0, 1], k=3),
            ValueError,
            "k must be at most",
        ),
        (
            lambda: open_set_identification_from_scores(np.eye(2), [0, 1], [0, 1]),
            ValueError,
            "needs both mated",
        ),
        (
            lambda: open_set_identification_from_scores(np.eye(2), [0, 5], [0, 1], fpir=1.5),
            ValueError,
            r"fpir targets must be in \[0, 1\]",
        ),
        (
            lambda: open_set_identification_from_scores(np.eye(2), [0, 5], [0, 1], unknown=[1, 0]),
            ValueError,
            "unknown must be a boolean mask",
        ),
        (
            lambda: open_set_identification_from_scores(
                np.eye(2), [0, 5], [0, 1], unknown=np.array([True, False])
            ),
            ValueError,
            "not a gallery label",
        ),
        (
            lambda: open_set_identification_from_scores(np.eye(2), [0, 5], [0, 1], rank=0),
            ValueError,
            "rank must be in",
        ),
    ],
)
def test_validation(call, error, match):
    with pytest.raises(error, match=match):
        call()


@given(embedding_problem(all_enrolled=False), st.floats(0, 1))
def test_open_set_embeddings_path_equals_score_matrix_path(problem, target):
    p, pl, g, gl, chunk = problem
    mated = torch.isin(pl, gl)
    if mated.all() or not mated.any():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = open_set_identification(p, pl, g, gl, fpir=target, metric="dot", chunk_size=chunk)
        b = open_set_identification_from_scores(p @ g.T, pl.numpy(), gl.numpy(), fpir=target)
    for field in ("dir", "thresholds", "fpir", "curve_fpir", "curve_dir", "curve_thresholds"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_identification_on_device_matches_cpu(device):
    gen = torch.Generator().manual_seed(4)
    g, gl = torch.randn(40, 16, generator=gen), torch.arange(40) % 8
    p, pl = torch.randn(30, 16, generator=gen), torch.randint(-1, 8, (30,), generator=gen)
    known = pl >= 0
    cpu = cmc_curve(p[known], pl[known], g, gl, chunk_size=9)
    dev = cmc_curve(p[known].to(device), pl[known], g.to(device), gl, chunk_size=9)
    np.testing.assert_array_equal(cpu, dev)
    a = open_set_identification(p, pl, g, gl, fpir=0.5)
    b = open_set_identification(p.to(device), pl.to(device), g, gl.to(device), fpir=0.5)
    np.testing.assert_allclose(a.dir, b.dir)
    np.testing.assert_allclose(a.thresholds, b.thresholds, atol=1e-6)


@settings(max_examples=10)
@given(st.integers(0, 2**31 - 1))
def test_top1_matches_pytorch_metric_learning_precision_at_1(seed):
    # With no exact ties, the best identity is the identity of the nearest gallery row, which
    # is what pytorch-metric-learning's precision_at_1 scores.
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(20, 16, generator=gen)
    gl = torch.arange(60) % 20
    pl = torch.randint(0, 20, (50,), generator=gen)
    g = centers[gl] + 0.8 * torch.randn(60, 16, generator=gen)
    p = centers[pl] + 0.8 * torch.randn(50, 16, generator=gen)
    calc = AccuracyCalculator(
        include=("precision_at_1",), knn_func=CustomKNN(pml.distances.CosineSimilarity())
    )
    expected = calc.get_accuracy(p, pl, g, gl, ref_includes_query=False)["precision_at_1"]
    assert top_k_accuracy(p, pl, g, gl, 1) == pytest.approx(expected, abs=1e-12)


def test_embedding_metrics_inside_an_autocast_region_equal_outside():
    # e.g. an evaluation hook run inside a training step's autocast region
    gen = torch.Generator().manual_seed(5)
    gallery_labels = torch.arange(40) % 12
    probe_labels = torch.cat([torch.arange(30) % 12, torch.full((10,), -1)])
    p, g = torch.randn(40, 16, generator=gen), torch.randn(40, 16, generator=gen)
    cmc = cmc_curve(p[:30], probe_labels[:30], g, gallery_labels, chunk_size=8)
    open_set = open_set_identification(p, probe_labels, g, gallery_labels, fpir=0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cmc_amp = cmc_curve(p[:30], probe_labels[:30], g, gallery_labels, chunk_size=8)
        open_amp = open_set_identification(p, probe_labels, g, gallery_labels, fpir=0.2)
    np.testing.assert_array_equal(cmc_amp, cmc)
    np.testing.assert_array_equal(open_amp.thresholds, open_set.thresholds)
    np.testing.assert_array_equal(open_amp.curve_dir, open_set.curve_dir)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p, y: cmc_curve(p, y, p, y, max_rank=4), "max_rank must be at most"),
        (lambda p, y: cmc_curve(p, y, p[:2], y[:2]), "every probe identity in the gallery"),
        (lambda p, y: top_k_accuracy(p, y, p, y, k=9), "k must be at most"),
        (lambda p, y: top_k_accuracy(p, y, p, y, k=0), "k must be in"),
        (lambda p, y: open_set_identification(p, y, p[:2], y[:2], fpir=1.5), "fpir targets"),
        (lambda p, y: open_set_identification(p, y, p[:2], y[:2], rank=3), "rank must be at"),
        (lambda p, y: open_set_identification(p, y, p, y), "needs both mated"),
        (
            lambda p, y: open_set_identification(p, y, p, y, unknown=torch.ones(2).bool()),
            "unknown must be a boolean mask",
        ),
    ],
)
def test_bad_arguments_raise_before_any_scoring(monkeypatch, call, match):
    import metricface.metrics.identification as identification

    def no_scoring(*args, **kwargs):
        raise AssertionError("the gallery was scored before the arguments were checked")

    monkeypatch.setattr(identification, "_blocks_from_embeddings", no_scoring)
    p, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=match):
        call(p, labels)


def test_top_k_accuracy_requires_an_integer_k():
    p, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match="k must be an int, got NoneType None"):
        top_k_accuracy(p, labels, p.flip(0), labels, k=None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_open_set_thresholds_hold_when_applied_in_the_scores_dtype(dtype):
    # A user deploys the threshold on scores of the same dtype (float32 cosines): the
    # comparison must reproduce the reported FPIR and DIR, not admit the boundary probe.
    gen = torch.Generator().manual_seed(6)
    gallery_labels = torch.arange(10)
    probe_labels = torch.cat([torch.arange(10), torch.full((20,), -1)])
    scores = torch.rand(30, 10, generator=gen, dtype=dtype)
    res = open_set_identification_from_scores(
        scores, probe_labels, gallery_labels, fpir=[0.1, 0.25, 0.5]
    )
    top = scores.max(1).values
    genuine = scores[torch.arange(10), torch.arange(10)]
    rank1 = scores[:10].argmax(1) == torch.arange(10)
    for t, fpir, dir_ in zip(res.thresholds.tolist(), res.fpir, res.dir):
        assert (top[10:] >= t).double().mean().item() == fpir
        assert ((genuine >= t) & rank1).double().mean().item() == dir_


# --------------------------------------------------------------------------- issue 14


def _id_calls(device):
    p, g = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 3])
    return {
        "cmc_curve": lambda: cmc_curve(p, labels, g, labels, device=device),
        "top_k_accuracy": lambda: top_k_accuracy(p, labels, g, labels, device=device),
        "open_set_identification": lambda: open_set_identification(
            p, torch.tensor([0, 1, 2, 9]), g, labels, device=device
        ),
    }


@pytest.mark.parametrize("name", ["cmc_curve", "top_k_accuracy", "open_set_identification"])
def test_unknown_or_missing_device_is_a_clear_error(name, monkeypatch):
    with pytest.raises(ValueError, match=r"device must be a device such as .*got 'bogus'"):
        _id_calls("bogus")[name]()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda' needs CUDA, which is not available"):
        _id_calls("cuda")[name]()


@pytest.mark.parametrize("fpir", ["a", "0.1", [0.1, "b"], None, {"a": 1}])
def test_fpir_of_the_wrong_kind_names_fpir(fpir):
    p, labels = torch.randn(3, 3), torch.tensor([0, 1, 5])
    with pytest.raises(TypeError, match=r"fpir must be a number or a 1-d sequence of numbers"):
        open_set_identification(p, labels, p[:2], labels[:2], fpir=fpir)
    with pytest.raises(TypeError, match=r"fpir must be a number"):
        open_set_identification_from_scores(np.eye(3, 2), labels, labels[:2], fpir=fpir)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: cmc_curve(torch.ones(2, 3), [0, 1], torch.ones(2, 4), [0, 1]),
            r"probe_embeddings and gallery_embeddings must have the same embedding dimension",
        ),
        (
            lambda: cmc_curve(torch.ones(3), [0, 1, 2], torch.ones(2, 3), [0, 1]),
            r"probe_embeddings must have shape \(batch, dim\)",
        ),
        (
            lambda: open_set_identification(
                torch.tensor([[float("nan"), 0.0]]), [5], torch.ones(1, 2), [0]
            ),
            r"probe_embeddings must contain only finite values",
        ),
        (
            lambda: top_k_accuracy(torch.ones(2, 2), [0, 1], "x", [0, 1]),
            r"gallery_embeddings must be a torch.Tensor or a NumPy array",
        ),
    ],
)
def test_embedding_errors_name_the_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize(("n_non", "count"), [(3, 1), (1000, 2)])
def test_fpir_target_just_below_a_count_is_never_exceeded(n_non, count):
    # a target a hair below count / n_non allows count - 1 false alarms, not count
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(4 + n_non, 2))
    labels = np.r_[[0, 1, 0, 1], np.full(n_non, 5)]
    target = count / n_non - 1e-13
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # below the resolution when count is 1
        res = open_set_identification_from_scores(scores, labels, np.array([0, 1]), fpir=target)
    assert res.fpir[0] <= target
    assert res.fpir[0] == (count - 1) / n_non
