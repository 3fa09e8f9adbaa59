"""Pair lists: LFW pairs.txt, CSV and submission files, and PairListDataset."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from metricface.data import (
    PairList,
    PairListDataset,
    read_lfw_pairs,
    read_pairs_csv,
    write_lfw_pairs,
    write_pairs_csv,
    write_submission,
)

LFW = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
Zico\t1\t2
Zoran_Djindjic\t3\t4
Zhu_Rongji\t1\tZorica_Radovic\t1
Zico\t2\tZoran_Djindjic\t1
"""


def test_read_lfw_pairs_with_folds(tmp_path):
    (tmp_path / "pairs.txt").write_text(LFW)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    assert len(pairs) == 8
    assert pairs.left[0] == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert pairs.right[0] == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    assert pairs.right[2] == "Dean_Barker/Dean_Barker_0001.jpg"
    assert pairs.labels.tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    assert pairs.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_lfw_roundtrip_and_dev_format(tmp_path):
    (tmp_path / "pairs.txt").write_text(LFW)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    write_lfw_pairs(tmp_path / "again.txt", pairs)
    assert (tmp_path / "again.txt").read_text() == LFW
    dev = "2\nA_B\t1\t2\nC\t2\t3\nA_B\t1\tC\t5\nC\t1\tD\t1\n"  # 2 genuine, then 2 impostor
    (tmp_path / "dev.txt").write_text(dev)
    d = read_lfw_pairs(tmp_path / "dev.txt", ext="png")
    assert d.folds is None and d.labels.tolist() == [1, 1, 0, 0]
    assert d.right[2] == "C/C_0005.png"
    write_lfw_pairs(tmp_path / "dev2.txt", d)
    assert (tmp_path / "dev2.txt").read_text() == dev


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("x y\n", "line 1"),
        ("1\nA\t1\n", "line 2"),
        ("2\nA\t1\t2\n", "promises 2"),
        ("1\t2\nA\t1\t2\n", "header promises 1 folds"),
    ],
)
def test_lfw_errors(tmp_path, text, match):
    (tmp_path / "p.txt").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_lfw_pairs(tmp_path / "p.txt")


_path = st.text(alphabet='abcXYZ019_/.," -', min_size=1, max_size=12)


@given(
    st.lists(st.tuples(_path, _path, st.integers(0, 1), st.integers(0, 9)), min_size=1),
    st.booleans(),
)
def test_csv_roundtrip(tmp_path_factory, rows, labeled):
    path = tmp_path_factory.mktemp("csv") / "pairs.csv"
    pairs = PairList(
        [r[0] for r in rows],
        [r[1] for r in rows],
        np.array([r[2] for r in rows]) if labeled else None,
        np.array([r[3] for r in rows]),
        [f"p{i}" for i in range(len(rows))],
    )
    write_pairs_csv(path, pairs)
    back = read_pairs_csv(path)
    assert back.left == pairs.left and back.right == pairs.right and back.ids == pairs.ids
    assert back.folds.tolist() == pairs.folds.tolist()
    if labeled:
        assert back.labels.tolist() == pairs.labels.tolist()
    else:
        assert back.labels is None


def test_unlabeled_csv_with_other_header_names(tmp_path):
    (tmp_path / "test.csv").write_text("path1,path2\na.jpg,b.jpg\nc.jpg,d.jpg\n")
    p = read_pairs_csv(tmp_path / "test.csv")
    assert p.labels is None and p.ids == ["0", "1"] and p.right == ["b.jpg", "d.jpg"]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="img1,img2"):
        read_pairs_csv(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("img1,img2,label\na,b,yes\n")
    with pytest.raises(ValueError, match="integers"):
        read_pairs_csv(tmp_path / "bad2.csv")
    (tmp_path / "bad3.csv").write_text("img1,img2,label\na,b,2\n")
    with pytest.raises(ValueError, match="labels must be 1"):
        read_pairs_csv(tmp_path / "bad3.csv")


def test_submission(tmp_path):
    scores = torch.tensor([0.9, -0.25, 0.5, 0.1 + 0.2])
    write_submission(tmp_path / "s.csv", scores, ids=["a", "b", "c", "d"])
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "score"]
    # scores survive the text round trip exactly
    assert [float(r[1]) for r in rows[1:]] == scores.double().tolist()
    write_submission(tmp_path / "p.csv", scores.numpy(), threshold=0.5)
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.reader(f))
    assert rows == [["id", "predicted"], ["0", "1"], ["1", "0"], ["2", "1"], ["3", "0"]]
    with pytest.raises(ValueError, match="finite"):
        write_submission(tmp_path / "x.csv", [float("nan")])
    with pytest.raises(ValueError, match="ids"):
        write_submission(tmp_path / "x.csv", [0.1, 0.2], ids=["a"])


def test_pair_list_validation():
    with pytest.raises(ValueError, match="same length"):
        PairList(["a"], [])
    with pytest.raises(ValueError, match="labels must have one entry"):
        PairList(["a"], ["b"], np.array([1, 0]))


def test_pair_list_dataset(tmp_path):
    for name, value in (("a.png", 10), ("b.png", 200)):
        Image.new("RGB", (6, 5), (value, value, value)).save(tmp_path / name)
    pairs = PairList(["a.png", "b.png"], ["b.png", "b.png"], np.array([0, 1]))
    ds = PairListDataset(pairs, root=tmp_path, transform=lambda x: x.float().mean())
    x1, x2, label = ds[0]
    assert (float(x1), float(x2), label) == (10.0, 200.0, 0)
    assert ds[1][2] == 1 and len(ds) == 2
    unlabeled = PairListDataset(PairList(["a.png"], ["a.png"]), root=tmp_path)
    img1, _, label = unlabeled[0]
    assert img1.shape == (3, 5, 6) and label == -1
    with pytest.raises(TypeError, match="pairs"):
        PairListDataset([("a", "b")])


# The first lines of LFW's View 1 ``pairsDevTrain.txt``: the header is the number of matched
# pairs N, followed by N matched and then N mismatched lines (1100 + 1100 in the real file).
LFW_DEV = """2
Aaron_Peirsol\t1\t2
Abdullah_al-Attiyah\t1\t3
AJ_Cook\t1\tMarsha_Thomason\t1
Aaron_Sorkin\t2\tFrank_Solich\t5
"""


def test_read_lfw_view1_header_counts_matched_pairs(tmp_path):
    (tmp_path / "pairsDevTrain.txt").write_text(LFW_DEV)
    pairs = read_lfw_pairs(tmp_path / "pairsDevTrain.txt")
    assert len(pairs) == 4 and pairs.folds is None
    assert pairs.labels.tolist() == [1, 1, 0, 0]
    assert pairs.right[1] == "Abdullah_al-Attiyah/Abdullah_al-Attiyah_0003.jpg"
    assert pairs.right[3] == "Frank_Solich/Frank_Solich_0005.jpg"
    write_lfw_pairs(tmp_path / "again.txt", pairs)
    assert (tmp_path / "again.txt").read_text() == LFW_DEV


def test_write_lfw_pairs_without_folds_needs_the_view1_layout(tmp_path):
    unequal = PairList(["A/A_0001.jpg"] * 2, ["A/A_0002.jpg", "B/B_0001.jpg"], np.array([1, 1]))
    with pytest.raises(ValueError, match="then as many impostor"):
        write_lfw_pairs(tmp_path / "p.txt", unequal)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_pair_files_with_bom_and_windows_line_endings(tmp_path, newline):
    text = LFW_DEV.replace("\n", newline)
    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_lfw_pairs(tmp_path / "p.txt").labels.tolist() == [1, 1, 0, 0]
    csv_text = newline.join(["img1,img2,label", "a.jpg,b.jpg,1", "c.jpg,d.jpg,0", ""])
    (tmp_path / "p.csv").write_bytes(b"\xef\xbb\xbf" + csv_text.encode())
    p = read_pairs_csv(tmp_path / "p.csv")
    assert p.left == ["a.jpg", "c.jpg"] and p.right == ["b.jpg", "d.jpg"]
    assert p.labels.tolist() == [1, 0]


_lfw_name = st.text(alphabet="abcXYZ_-'.", min_size=1, max_size=10)


@given(st.integers(0, 3), st.integers(1, 4), st.data())
def test_lfw_roundtrip_of_any_layout(tmp_path_factory, n_folds, per_fold, data):
    """Write pairs.txt text by hand, read it, write it back: same text, same pairs."""
    folds = max(n_folds, 1)
    lines = [f"{n_folds}\t{per_fold}" if n_folds else str(per_fold)]
    expected = []
    num = st.integers(1, 9999)
    for _ in range(folds):
        for label in (1, 0):
            for _ in range(per_fold):
                a, i, j = data.draw(_lfw_name), data.draw(num), data.draw(num)
                b = data.draw(_lfw_name) if label == 0 else a
                lines.append(f"{a}\t{i}\t{j}" if label else f"{a}\t{i}\t{b}\t{j}")
                expected.append((f"{a}/{a}_{i:04d}.jpg", f"{b}/{b}_{j:04d}.jpg", label))
    text = "\n".join(lines) + "\n"
    path = tmp_path_factory.mktemp("lfw") / "pairs.txt"
    path.write_text(text)
    pairs = read_lfw_pairs(path)
    assert list(zip(pairs.left, pairs.right, pairs.labels.tolist())) == expected
    if n_folds:
        assert pairs.folds.tolist() == np.repeat(np.arange(folds), 2 * per_fold).tolist()
    else:
        assert pairs.folds is None
    write_lfw_pairs(path, pairs)
    assert path.read_text() == text
