"""IJB template protocols: pooling and pair scores against a direct loop, 1:N rates against
open_set_identification / cmc_curve, the report against the verification metrics."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metricface.metrics import (
    IJB_FAR_TARGETS,
    cmc_curve,
    equal_error_rate,
    ijb_report,
    open_set_identification,
    roc_curve,
    tar_at_far,
    template_features,
    template_identification,
    template_pair_scores,
)


def reference_pooling(features, templates, medias, weights=None, normalize_images=False):
    """InsightFace's recipe written as a plain float64 loop over templates and medias."""
    x = np.asarray(features, dtype=np.float64)
    if normalize_images:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if weights is not None:
        x = x * np.asarray(weights, dtype=np.float64)[:, None]
    out = {}
    for t in sorted(set(templates)):
        total = np.zeros(x.shape[1])
        rows = [i for i in range(len(templates)) if templates[i] == t]
        for m in sorted({medias[i] for i in rows}):
            total += np.mean([x[i] for i in rows if medias[i] == m], axis=0)
        out[t] = total / np.linalg.norm(total)
    return out


def random_protocol(seed, n=120, dim=8, n_templates=15, n_medias=25):
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, n_templates, n) * 10 + 3  # sparse ids
    medias = rng.integers(0, n_medias, n)  # media ids shared across templates
    features = rng.normal(size=(n, dim))
    weights = rng.uniform(0.1, 1.0, n)
    return features, templates, medias, weights


@pytest.mark.parametrize("normalize_images", [False, True])
@pytest.mark.parametrize("use_weights", [False, True])
def test_pooling_matches_a_direct_loop(normalize_images, use_weights):
    features, templates, medias, weights = random_protocol(0)
    w = weights if use_weights else None
    feats, ids = template_features(
        torch.from_numpy(features), templates, medias, w, normalize_images=normalize_images
    )
    expected = reference_pooling(features, templates, medias, w, normalize_images)
    assert ids.tolist() == sorted(expected) and feats.dtype == torch.float64
    np.testing.assert_allclose(feats.numpy(), np.stack([expected[t] for t in ids]), atol=1e-12)
    feats32, _ = template_features(
        features.astype(np.float32), templates, medias, w, normalize_images=normalize_images
    )
    assert feats32.dtype == torch.float32
    np.testing.assert_allclose(feats32.numpy(), feats.numpy(), atol=1e-6)


@given(
    structure=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), min_size=1, max_size=30),
    seed=st.integers(0, 2**16),
    chunk=st.integers(1, 8),
)
def test_pooling_any_structure_any_chunking(structure, seed, chunk):
    templates = [t for t, _ in structure]
    medias = [m for _, m in structure]
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(len(structure), 3)) + 5.0  # sums never cancel
    weights = rng.uniform(0.5, 2.0, len(structure))
    feats, ids = template_features(features, templates, medias, weights, chunk_size=chunk)
    expected = reference_pooling(features, templates, medias, weights)
    np.testing.assert_allclose(feats.numpy(), np.stack([expected[t] for t in ids]), atol=1e-12)
    perm = rng.permutation(len(structure))  # the order of the images does not matter
    shuffled, _ = template_features(
        features[perm], np.array(templates)[perm], np.array(medias)[perm], weights[perm]
    )
    np.testing.assert_allclose(shuffled.numpy(), feats.numpy(), atol=1e-12)


def test_scaling_all_weights_changes_nothing():
    features, templates, medias, weights = random_protocol(1)
    a, _ = template_features(features, templates, medias, weights)
    b, _ = template_features(features, templates, medias, 7.5 * weights)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)


def reference_scores(feats, ids, t1, t2):
    row = {t: i for i, t in enumerate(ids)}
    f = np.asarray(feats, dtype=np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    return np.array([f[row[a]] @ f[row[b]] for a, b in zip(t1, t2)])


def gallery_probe_pairs(n_pairs, n_gallery=30, n_probe=200, seed=0):
    """IJB's layout: one side from a small gallery, the other from many probes."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10_000, n_gallery + n_probe, replace=False)
    t1 = rng.choice(ids[:n_gallery], n_pairs)
    t2 = rng.choice(ids[n_gallery:], n_pairs)
    feats = rng.normal(size=(ids.shape[0], 16))
    return feats, ids, t1, t2


@pytest.mark.parametrize("chunk_size", [1 << 24, 1000, 1])  # 1, 6 or 30 blocks (one scan each)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pair_scores_dense_blocks_match_a_direct_loop(chunk_size, dtype):
    feats, ids, t1, t2 = gallery_probe_pairs(3000)  # 30 x 200 blocks for 3000 pairs: dense
    scores = template_pair_scores(feats.astype(dtype), ids, t1, t2, chunk_size=chunk_size)
    assert scores.dtype == dtype and scores.shape == (3000,)
    atol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(scores, reference_scores(feats, ids, t1, t2), atol=atol)


def test_pair_scores_many_blocks_and_sparse_ids_match_a_direct_loop():
    feats, ids, t1, t2 = gallery_probe_pairs(3000, n_gallery=45, seed=5)  # 45 blocks: sorted
    ids = ids * 10**9 + 17  # ids spread too far for a lookup table: binary search
    t1, t2 = t1 * 10**9 + 17, t2 * 10**9 + 17
    scores = template_pair_scores(feats, ids, t1, t2, chunk_size=200)
    np.testing.assert_allclose(scores, reference_scores(feats, ids, t1, t2), atol=1e-12)
    with pytest.raises(ValueError, match=r"t1 names template 5 \(entry 0\)"):
        template_pair_scores(feats, ids, np.r_[5, t1[1:]], t2)


@pytest.mark.parametrize("chunk_size", [1 << 24, 50])
def test_pair_scores_gathered_rows_match_a_direct_loop(chunk_size):
    rng = np.random.default_rng(3)
    ids = np.arange(5000)
    feats = rng.normal(size=(5000, 16))
    t1, t2 = rng.choice(5000, 40), rng.choice(5000, 40)  # 40 pairs over 80 templates: gather
    scores = template_pair_scores(feats, ids, t1, t2, chunk_size=chunk_size)
    np.testing.assert_allclose(scores, reference_scores(feats, ids, t1, t2), atol=1e-12)


def test_pair_scores_with_ids_in_any_order_and_unnormalised_rows():
    feats, ids, t1, t2 = gallery_probe_pairs(500, seed=4)
    perm = np.random.default_rng(0).permutation(ids.shape[0])
    scores = template_pair_scores(3.0 * feats[perm], ids[perm], t1, t2)
    np.testing.assert_allclose(scores, reference_scores(feats, ids, t1, t2), atol=1e-12)


@pytest.mark.parametrize("where", ["beyond the ids", "between the ids"])
def test_pair_naming_an_absent_template_is_named(where):
    feats, ids, t1, t2 = gallery_probe_pairs(10)
    absent = 123_456 if where == "beyond the ids" else int(np.setdiff1d(np.arange(10_000), ids)[5])
    t2 = t2.copy()
    t2[7] = absent
    with pytest.raises(
        ValueError,
        match=rf"t2 names template {absent} \(entry 7\), which is not in unique_templates",
    ):
        template_pair_scores(feats, ids, t1, t2)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f, t, m: template_features(f, t[:-1], m), r"templates must have one entry per"),
        (lambda f, t, m: template_features(f, t, m[:-1]), r"medias must have one entry per"),
        (lambda f, t, m: template_features(f, t, m, np.ones(3)), "weights must have one entry"),
        (lambda f, t, m: template_features(f, t, m, -np.ones(len(t))), "weights must be finite"),
        (lambda f, t, m: template_features(f, t.astype(float), m), "integer dtype"),
    ],
)
def test_pooling_input_errors(call, message):
    features, templates, medias, _ = random_protocol(2)
    with pytest.raises((ValueError, TypeError), match=message):
        call(features, templates, medias)


def test_non_finite_features_name_the_row():
    features, templates, medias, _ = random_protocol(2)
    features[17, 3] = np.nan
    with pytest.raises(ValueError, match="features must be finite, got NaN or inf in row 17"):
        template_features(features, templates, medias)


def test_all_zero_weights_name_the_template():
    features, templates, medias, weights = random_protocol(2)
    weights[templates == templates[5]] = 0.0
    with pytest.raises(ValueError, match=f"template {templates[5]} has an all-zero feature"):
        template_features(features, templates, medias, weights)


def test_pair_score_input_errors():
    feats, ids, t1, t2 = gallery_probe_pairs(10)
    with pytest.raises(ValueError, match="t1 and t2 must be non-empty and of equal length"):
        template_pair_scores(feats, ids, t1, t2[:-1])
    with pytest.raises(ValueError, match="unique_templates must name each row"):
        template_pair_scores(feats, ids[:-1], t1, t2)
    with pytest.raises(ValueError, match="must be distinct, got template"):
        template_pair_scores(feats, np.zeros_like(ids), t1, t2)


# --------------------------------------------------------------------------- 1:N


def identification_protocol(seed=0, subjects=12, per_subject=3, dim=16, noise=0.8):
    """Templates of ``subjects`` people; gallery G1 holds subjects 0-5, G2 subjects 6-11, one
    template each; every other template is a probe."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(subjects, dim))
    subject = np.repeat(np.arange(subjects), per_subject)
    feats = centres[subject] + noise * rng.normal(size=(subject.shape[0], dim))
    ids = 1000 + np.arange(subject.shape[0]) * 7
    first = np.arange(subjects) * per_subject
    g1, g2 = first[: subjects // 2], first[subjects // 2 :]
    probes = np.setdiff1d(np.arange(subject.shape[0]), first)
    sets = {
        "G1": (ids[g1], subject[g1] + 500),
        "G2": (ids[g2], subject[g2] + 500),
    }
    return feats, ids, sets, (ids[probes], subject[probes] + 500)


@pytest.mark.parametrize("gallery", ["G1", "G2"])
def test_identification_equals_open_set_and_cmc_on_template_features(gallery):
    feats, ids, sets, probes = identification_protocol()
    g_t, g_s = sets[gallery]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # FPIR 0.01 below 12 non-mated probes
        result = template_identification(feats, ids, g_t, g_s, *probes, ranks=(1, 2, 3))
        row = {t: i for i, t in enumerate(ids)}
        g = torch.from_numpy(feats[[row[t] for t in g_t]])
        p = torch.from_numpy(feats[[row[t] for t in probes[0]]])
        expected = open_set_identification(p, probes[1], g, g_s, fpir=(0.01, 0.1), rank=1)
    mated = np.isin(probes[1], g_s)
    assert result.n_probes == 24 and result.n_mated == mated.sum() == 12
    np.testing.assert_array_equal(result.tpir, expected.dir)
    np.testing.assert_array_equal(result.thresholds, expected.thresholds)
    cmc = cmc_curve(p[torch.from_numpy(mated)], probes[1][mated], g, g_s, max_rank=3)
    np.testing.assert_array_equal(result.rank_rates, cmc)
    # and rank-1 by direct counting: the best-scoring gallery template has the probe's subject
    pn = p.numpy()[mated] / np.linalg.norm(p.numpy()[mated], axis=1, keepdims=True)
    gn = g.numpy() / np.linalg.norm(g.numpy(), axis=1, keepdims=True)
    hits = g_s[np.argmax(pn @ gn.T, axis=1)] == probes[1][mated]
    assert result.rank_rates[0] == hits.mean()


def test_identification_with_every_probe_mated_has_no_tpir():
    feats, ids, sets, probes = identification_protocol()
    both = tuple(np.concatenate([sets["G1"][k], sets["G2"][k]]) for k in range(2))
    result = template_identification(feats, ids, *both, *probes, ranks=(1,))
    assert result.open_set is None and np.isnan(result.tpir).all()
    assert result.n_mated == result.n_probes == 24 and 0 < result.rank_rates[0] <= 1


def test_identification_input_errors():
    feats, ids, sets, probes = identification_protocol()
    g_t, g_s = sets["G1"]
    with pytest.raises(ValueError, match="gallery templates names template 5"):
        template_identification(feats, ids, np.r_[g_t, 5], np.r_[g_s, 1], *probes)
    with pytest.raises(ValueError, match="probes templates must list each template once"):
        template_identification(feats, ids, g_t, g_s, np.r_[probes[0], probes[0][:1]],
                                np.r_[probes[1], probes[1][:1]])  # fmt: skip
    with pytest.raises(ValueError, match=r"ranks must be at most the number of subjects.*\(6\)"):
        template_identification(feats, ids, g_t, g_s, *probes, ranks=(1, 10))
    with pytest.raises(ValueError, match="no probe's subject is enrolled"):
        template_identification(feats, ids, g_t, g_s, probes[0], probes[1] + 10_000, ranks=(1,))
    with pytest.raises(ValueError, match="probes subjects must have one entry"):
        template_identification(feats, ids, g_t, g_s, probes[0], probes[1][:-1])


# --------------------------------------------------------------------------- report


def ijb_like(seed=0):
    """Images of templates of 12 subjects (a few medias each), 1:1 pairs and 1:N sets."""
    rng = np.random.default_rng(seed)
    feats_t, ids, sets, probes = identification_protocol(seed, noise=1.0)
    subject_of = dict(zip(ids, np.repeat(np.arange(12), 3)))
    templates, medias, features = [], [], []
    for k, t in enumerate(ids):
        for m in range(rng.integers(1, 4)):
            for _ in range(rng.integers(1, 4)):
                templates.append(t)
                medias.append(10 * k + m)
                features.append(feats_t[k] + 0.3 * rng.normal(size=feats_t.shape[1]))
    t1 = np.concatenate([sets["G1"][0], sets["G2"][0]]).repeat(24)
    t2 = np.tile(probes[0], 12)
    labels = np.array([subject_of[a] == subject_of[b] for a, b in zip(t1, t2)])
    weights = rng.uniform(0.2, 1.0, len(templates))
    return np.array(features), np.array(templates), np.array(medias), weights, (
        t1, t2, labels), sets, probes  # fmt: skip


def test_report_equals_its_parts():
    features, templates, medias, weights, pairs, sets, probes = ijb_like()
    targets = (1e-2, 1e-1, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = ijb_report(
            features, templates, medias, weights=weights, pairs=pairs, galleries=sets,
            probes=probes, far_targets=targets, ranks=(1, 5), name="IJBC",
        )  # fmt: skip
        feats, ids = template_features(features, templates, medias, weights)
        scores = template_pair_scores(feats, ids, pairs[0], pairs[1])
        tar = tar_at_far(pairs[2], scores, targets)
        g1 = template_identification(feats, ids, *sets["G1"], *probes, ranks=(1, 5))
    np.testing.assert_array_equal(report.scores, scores)
    np.testing.assert_array_equal(report.verification.tar, tar)
    assert report.verification.eer == equal_error_rate(pairs[2], scores)
    assert report.identification["G1"].tpir == g1.tpir
    assert report.identification["G1"].rank_rates == g1.rank_rates
    assert report.n_images == len(templates) and report.n_templates == 36
    # the thinned ROC is the same piecewise-linear curve as the full one
    fpr, tpr, thresholds = roc_curve(pairs[2], scores)
    v = report.verification
    kept = np.searchsorted(-thresholds, -v.thresholds)  # both decreasing
    np.testing.assert_array_equal(thresholds[kept], v.thresholds)
    assert kept.shape[0] < thresholds.shape[0] and kept[-1] == thresholds.shape[0] - 1
    np.testing.assert_array_equal(fpr[kept], v.fpr)
    np.testing.assert_array_equal(tpr[kept], v.tpr)
    for i, j in itertools.pairwise(kept):  # every dropped point lies on its kept segment
        k = np.arange(i, j + 1)
        cross = (fpr[k] - fpr[i]) * (tpr[j] - tpr[i]) - (tpr[k] - tpr[i]) * (fpr[j] - fpr[i])
        np.testing.assert_allclose(cross, 0.0, atol=1e-12)
    flat = report.as_dict()
    assert (
        flat["tar@far=0.01"] == tar[0]
        and flat["G2/rank-5"] == (report.identification["G2"].rank_rates[1])
    )
    assert flat["mean/rank-1"] == pytest.approx(
        (flat["G1/rank-1"] + flat["G2/rank-1"]) / 2, abs=1e-15
    )
    text = report.format()
    assert text.splitlines()[0] == f"IJBC: {len(templates)} images in 36 templates"
    assert "TPIR@FPIR=0.01" in text and "rank-5" in text
    assert [line.split()[0] for line in text.splitlines()[-3:]] == ["G1", "G2", "mean"]


def test_report_defaults_and_resolution_flags():
    features, templates, medias, _, pairs, _, _ = ijb_like(1)
    report = ijb_report(features, templates, medias, pairs=pairs)
    assert report.verification.far_targets == IJB_FAR_TARGETS
    assert report.identification == {}
    assert "1e-06*" in report.format() and "below 1 / n_impostor" in report.format()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pairs": ([1], [2], [1])}, r"pairs t1 names template 1 \(entry 0\), which has no image"),
        ({"pairs": "pairs"}, "pairs must be a"),
        ({"galleries": {"G1": ([1000], [500])}}, "galleries and probes must be given together"),
        ({"probes": ([1000], [500])}, "galleries and probes must be given together"),
        ({"far_targets": [0.0]}, "far_targets must be in"),
    ],
)
def test_report_checks_before_work(kwargs, message):
    features, templates, medias, _, pairs, _, _ = ijb_like()
    kwargs.setdefault("pairs", pairs)
    with pytest.raises((ValueError, TypeError), match=message):
        ijb_report(features, templates, medias, **kwargs)


def test_report_rejects_single_class_pairs():
    features, templates, medias, _, (t1, t2, labels), _, _ = ijb_like()
    with pytest.raises(ValueError, match="genuine and impostor pairs, got 0 genuine"):
        ijb_report(features, templates, medias, pairs=(t1, t2, np.zeros_like(labels)))


@pytest.mark.parametrize("value", [2e19, 1e30, 3e38, 1e-23, 1e-40])
def test_pooling_normalises_float32_images_of_any_finite_norm(value):
    # a float32 norm overflows beyond 1.8e19 and underflows below 1e-19 per entry: such an
    # image must still count with unit length, not vanish
    feats = np.array([[value, value], [0.0, 1.0]], dtype=np.float32)
    out, _ = template_features(feats, [1, 1], [1, 2], normalize_images=True)
    expected = reference_pooling(feats, [1, 1], [1, 2], normalize_images=True)[1]
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-6)


def test_pooling_sums_float32_features_and_weights_beyond_float32_range():
    feats = np.array([[2e38, 0.0], [2e38, 0.0]], dtype=np.float32)  # the sum is 4e38
    out, _ = template_features(feats, [1, 1], [1, 2])
    np.testing.assert_array_equal(out.numpy(), [[1.0, 0.0]])
    eye = np.eye(2, dtype=np.float32)
    out, _ = template_features(eye, [1, 1], [1, 2], weights=[1e40, 1.0])
    expected = reference_pooling(eye, [1, 1], [1, 2], weights=[1e40, 1.0])[1]
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-6, atol=1e-44)  # subnormal


@pytest.mark.parametrize("fpir", ["a", "0.5", None])
def test_identification_fpir_of_the_wrong_kind_names_fpir(fpir):
    feats, ids, sets, probes = identification_protocol()
    with pytest.raises(TypeError, match="fpir must be a number or a 1-d sequence of numbers"):
        template_identification(feats, ids, *sets["G1"], *probes, fpir=fpir)
