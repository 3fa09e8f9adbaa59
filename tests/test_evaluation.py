"""VerificationSets (the LFW protocol on .bin files) and evaluate_ijb, cross-checked against a
direct computation with the model and the verification metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _bin_files import pair_images, write_bin
from torch import nn

from metricface.data import load_ijb_meta, load_verification_bin
from metricface.evaluation import VerificationSets, VerificationTable, evaluate_ijb
from metricface.metrics import (
    equal_error_rate,
    ijb_report,
    kfold_verification_accuracy,
    tar_at_far,
)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.Tanh(), nn.Linear(32, 8))


def direct_scores(model, path, flip):
    """The protocol by hand: normalise pixels to [-1, 1], sum the embeddings of each image and
    its mirror image, L2-normalise, cosine of each pair."""
    images, issame = load_verification_bin(path)
    x = (images.double() / 255 - 0.5) / 0.5
    model = model.double().eval()
    with torch.no_grad():
        e = model(x) + (model(x.flip(-1)) if flip else 0)
    model.float()
    e = e / e.norm(dim=1, keepdim=True)
    return issame, (e[0::2] * e[1::2]).sum(1).numpy()


@pytest.fixture
def two_sets(tmp_path):
    _, bins, issame = pair_images(40, seed=1)
    lfw = write_bin(tmp_path / "lfw.bin", bins, issame, "python2")
    _, bins, issame = pair_images(30, seed=2)
    cfp = write_bin(tmp_path / "cfp_fp.bin", bins, issame, "python3-protocol4")
    return lfw, cfp


@pytest.mark.parametrize("flip", [True, False])
def test_table_matches_a_direct_computation(two_sets, flip):
    model = tiny_model()
    sets = VerificationSets(two_sets, far_targets=(0.1, 0.5), batch_size=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = sets.evaluate(model, flip_tta=flip)
    assert [row.name for row in table] == ["lfw", "cfp_fp"] == sets.names
    for row, path in zip(table, two_sets):
        issame, scores = direct_scores(model, path, flip)
        np.testing.assert_array_equal(row.issame, issame)
        np.testing.assert_allclose(row.scores, scores, atol=1e-6)
        acc, std = kfold_verification_accuracy(issame, row.scores, 10)
        assert (row.accuracy, row.std) == (acc, std)
        assert acc == kfold_verification_accuracy(issame, scores, 10)[0]
        assert row.eer == equal_error_rate(issame, row.scores)
        np.testing.assert_array_equal(row.tar, tar_at_far(issame, row.scores, [0.1, 0.5]))
        assert row.n_pairs == issame.shape[0] and row.fold_thresholds.shape == (10,)
        assert row.threshold == np.median(row.fold_thresholds)
    assert table["lfw"].accuracy > 0.8  # genuine pairs share their base image


def test_cached_images_give_the_same_table(two_sets):
    model = tiny_model(1)
    plain = VerificationSets(two_sets, far_targets=[0.5]).evaluate(model)
    cached = VerificationSets(two_sets, far_targets=[0.5], keep_decoded=True)
    first, second = cached.evaluate(model), cached.evaluate(model)
    for a, b, c in zip(plain, first, second):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
        np.testing.assert_array_equal(b.scores, c.scores)


def test_model_modes_and_normalisation(two_sets):
    model = tiny_model(2).train()
    sets = VerificationSets(two_sets[0], mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    row = sets.evaluate(model)["lfw"]
    assert model.training  # restored
    images, _ = load_verification_bin(two_sets[0])
    mean = torch.tensor([0.4, 0.5, 0.6])[:, None, None]
    std = torch.tensor([0.2, 0.3, 0.4])[:, None, None]
    model.eval()
    with torch.no_grad():
        x = (images.float() / 255 - mean) / std
        e = nn.functional.normalize(model(x) + model(x.flip(-1)), dim=1)
    np.testing.assert_allclose(row.scores, (e[0::2] * e[1::2]).sum(1).numpy(), atol=1e-6)


def test_resizing_to_the_model_input(two_sets):
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return x.flatten(1)[:, :5] + 1.0

    VerificationSets(two_sets[1], image_size=(12, 10)).evaluate(Probe())
    assert set(seen) == {(12, 10)}


def test_table_formats(two_sets):
    sets = VerificationSets({"LFW": two_sets[0], "CFP-FP": two_sets[1]}, far_targets=[0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = sets.evaluate(tiny_model())
    assert isinstance(table, VerificationTable) and len(table) == 2
    lines = table.format().splitlines()
    assert lines[0].split() == [
        "set", "pairs", "accuracy", "(%)", "EER", "(%)", "TAR@FAR=0.1", "(%)", "threshold",
    ]  # fmt: skip
    assert lines[1].startswith("LFW") and lines[2].startswith("CFP-FP") and "+-" in lines[1]
    flat = table.as_dict()
    assert flat["LFW/accuracy"] == table["LFW"].accuracy
    assert set(flat) >= {"CFP-FP/std", "CFP-FP/eer", "CFP-FP/tar@far=0.1", "LFW/threshold"}
    with pytest.raises(KeyError, match="no set named 'lfw'"):
        table["lfw"]


def test_construction_errors(tmp_path, two_sets):
    with pytest.raises(FileNotFoundError, match="no such verification .bin file"):
        VerificationSets([two_sets[0], tmp_path / "agedb_30.bin"])
    with pytest.raises(ValueError, match="two verification sets are named 'lfw'"):
        VerificationSets([two_sets[0], two_sets[0]])
    with pytest.raises(ValueError, match="std must be positive"):
        VerificationSets(two_sets, std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="n_folds must be in"):
        VerificationSets(two_sets, n_folds=1)
    with pytest.raises(ValueError, match="far_targets must be in"):
        VerificationSets(two_sets, far_targets=[2.0])
    with pytest.raises(ValueError, match="at least one FAR target"):
        VerificationSets(two_sets, far_targets=[])
    with pytest.raises(KeyError, match="no set named"):
        VerificationSets(two_sets).dataset("agedb_30")


# --------------------------------------------------------------------------- IJB


def write_ijb(root, seed=0):
    """An IJB-C-like meta folder: 8 subjects, templates of several medias, G1/G2, probes."""
    rng = np.random.default_rng(seed)
    meta = root / "IJBC" / "meta"
    meta.mkdir(parents=True)
    media_lines, features, subject_of = [], [], {}
    centres = rng.normal(size=(8, 6))
    image = 0
    for t in range(24):
        subject = t % 8
        subject_of[t + 100] = subject
        for m in range(rng.integers(1, 3)):
            for _ in range(rng.integers(1, 3)):
                image += 1
                media_lines.append(f"{image}.jpg {t + 100} {7000 + 3 * t + m}")
                features.append(centres[subject] + 0.5 * rng.normal(size=6))
    (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(media_lines) + "\n")
    gallery = [100 + s for s in range(8)]  # the first template of each subject
    probes = [t for t in subject_of if t not in gallery]
    pairs = [(g, p, int(subject_of[g] == subject_of[p])) for g in gallery for p in probes]
    (meta / "ijbc_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {c}\n" for a, b, c in pairs)
    )
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    for name, templates in (("G1", gallery[:4]), ("G2", gallery[4:]), ("probe_mixed", probes)):
        prefix = "ijbc_1N_gallery_" if name != "probe_mixed" else "ijbc_1N_"
        rows = "".join(f"{t},{subject_of[t] + 1},img/{t}.jpg\n" for t in templates)
        (meta / f"{prefix}{name}.csv").write_text(header + rows)
    return meta.parent, np.array(features), rng.uniform(0.5, 1.0, image)


def test_evaluate_ijb_is_the_report_of_the_meta_files(tmp_path):
    root, features, weights = write_ijb(tmp_path)
    meta = load_ijb_meta(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = evaluate_ijb(features, meta, weights=weights, far_targets=[0.1], ranks=(1, 2))
        expected = ijb_report(
            features, meta.media.templates, meta.media.medias, weights=weights,
            pairs=meta.pairs, galleries=meta.galleries, probes=meta.probes,
            far_targets=[0.1], ranks=(1, 2),
        )  # fmt: skip
    assert report.name == "IJBC" and sorted(report.identification) == ["G1", "G2"]
    np.testing.assert_array_equal(report.scores, expected.scores)
    assert report.as_dict() == expected.as_dict()
    assert report.identification["G1"].n_probes == 16
    assert report.identification["G1"].n_mated == 8  # probes of the 4 subjects enrolled in G1


def test_evaluate_ijb_checks_its_inputs(tmp_path):
    root, features, _ = write_ijb(tmp_path)
    meta = load_ijb_meta(root)
    with pytest.raises(ValueError, match=r"one row per image of .*ijbc_face_tid_mid\.txt"):
        evaluate_ijb(features[:-1], meta)
    with pytest.raises(TypeError, match="meta must be an IJBMeta"):
        evaluate_ijb(features, {"media": meta.media})
