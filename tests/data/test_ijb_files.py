"""IJB-B/C protocol files: readers on files laid out as the official ones, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from metricface.data import (
    IJBMeta,
    load_ijb_meta,
    read_ijb_media,
    read_ijb_pairs,
    read_ijb_subjects,
)

# The first lines of the real files look like this (InsightFace's IJB_release meta folder).
MEDIA = "1.jpg 1 69544\n2.jpg 1 3720\n3.jpg 1 3720\n4.jpg 2 69544\n5.jpg 171707 187029\n"
PAIRS = "1 11065 1\n1 11066 0\n171707 185794 1\n"
# The 1:N CSVs of the official protocol: one row per image, more columns than are read.
GALLERY = (
    "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n"
    "1,1,img/1.jpg,1,10,20,100,120\n"
    "1,1,img/2.jpg,2,11,21,101,121\n"
    "4,2,frames/5_10.png,5,0,0,50,60\n"
)


def test_read_media(tmp_path):
    (tmp_path / "ijbc_face_tid_mid.txt").write_text(MEDIA)
    media = read_ijb_media(tmp_path / "ijbc_face_tid_mid.txt")
    names, templates, medias = media
    assert names.tolist() == ["1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"]
    assert templates.tolist() == [1, 1, 1, 2, 171707] and templates.dtype == np.int64
    assert medias.tolist() == [69544, 3720, 3720, 69544, 187029]


@pytest.mark.parametrize(
    "text",
    [
        MEDIA + "\n",  # a trailing blank line
        MEDIA.replace("\n", "\n\n", 1),  # a blank line inside
        "\ufeff" + MEDIA,  # a UTF-8 byte-order mark
        MEDIA.replace("\n", "\r\n"),
    ],
)
def test_media_files_tolerate_blank_lines_and_a_byte_order_mark(tmp_path, text):
    (tmp_path / "m.txt").write_text(text, encoding="utf-8")
    names, templates, _ = read_ijb_media(tmp_path / "m.txt")
    assert names.tolist() == ["1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"]
    assert templates.tolist() == [1, 1, 1, 2, 171707]


def test_read_pairs(tmp_path):
    (tmp_path / "pairs.txt").write_text(PAIRS)
    t1, t2, labels = read_ijb_pairs(tmp_path / "pairs.txt")
    assert t1.tolist() == [1, 1, 171707] and t2.tolist() == [11065, 11066, 185794]
    assert labels.dtype == np.bool_ and labels.tolist() == [True, False, True]


@pytest.mark.parametrize(
    "text",
    [
        "1 2 1\n3 4 0",
        "1\t2\t1\r\n3\t4\t0\r\n",
        "1 2 1\n\n3 4 0\n",
        "  1   2 1\n3 4 0\n",
        "\ufeff1 2 1\n3 4 0\n\n",
    ],
)
def test_pairs_tolerate_whitespace_variants(tmp_path, text):
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    pairs = read_ijb_pairs(tmp_path / "p.txt")
    assert pairs.t1.tolist() == [1, 3] and pairs.labels.tolist() == [True, False]


def test_pairs_match_a_reference_parser_on_a_large_file(tmp_path):
    rng = np.random.default_rng(0)
    table = np.stack([rng.integers(1, 200_000, 5000), rng.integers(1, 200_000, 5000),
                      rng.integers(0, 2, 5000)], 1)  # fmt: skip
    np.savetxt(tmp_path / "p.txt", table, fmt="%d")
    pairs = read_ijb_pairs(tmp_path / "p.txt")
    expected = [tuple(map(int, line.split())) for line in open(tmp_path / "p.txt")]
    assert list(zip(pairs.t1.tolist(), pairs.t2.tolist(), pairs.labels.astype(int).tolist())) == (
        expected
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 2 1\n3 4 0\n5 6\n", r"p\.txt: expected lines .*columns changed from 3 to 2 at row 3"),
        ("1 2 1\n3 x 0\n", r"p\.txt: .*could not convert string 'x'"),
        ("1 2 1 9\n", r"p\.txt: .*got 4 fields"),
        ("1 2 3\n", r"p\.txt: labels must be 0 or 1, got 3 in row 1"),
        ("", r"p\.txt: expected lines"),
        ("1 2 1.5\n", r"p\.txt: .*'1\.5'"),
    ],
)
def test_bad_pair_files_name_file_and_line(tmp_path, text, message):
    (tmp_path / "p.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_ijb_pairs(tmp_path / "p.txt")


@pytest.mark.parametrize(
    "text, message",
    [
        ("1.jpg 1\n", "m.txt: expected lines 'image_name template_id media_id'"),
        ("1.jpg one 2\n", "m.txt: .*'one'"),
        ("1.jpg 1 2 extra\n", "m.txt: .*got 4 fields per line"),
        ("1.jpg 1 2\n2.jpg 1 2 extra\n", "m.txt: .*columns changed from 3 to 4"),
        ("", "m.txt: expected"),
    ],
)
def test_bad_media_files(tmp_path, text, message):
    (tmp_path / "m.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_ijb_media(tmp_path / "m.txt")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_ijb_pairs(tmp_path / "nope.txt")


def test_read_subjects(tmp_path):
    (tmp_path / "g.csv").write_text(GALLERY)
    templates, subjects = read_ijb_subjects(tmp_path / "g.csv")
    assert templates.tolist() == [1, 4] and subjects.tolist() == [1, 2]


def test_subject_columns_found_by_name(tmp_path):
    (tmp_path / "p.csv").write_text(
        "\ufeffFILENAME, subject_id ,Template_Id\nimg/1.jpg,7,30\nimg/2.jpg,5,20\nimg/3.jpg,7,30\n"
    )
    templates, subjects = read_ijb_subjects(tmp_path / "p.csv")
    assert templates.tolist() == [20, 30] and subjects.tolist() == [5, 7]


@pytest.mark.parametrize(
    "text, message",
    [
        ("TEMPLATE,SUBJECT\n1,1\n", "missing TEMPLATE_ID, SUBJECT_ID"),
        ("TEMPLATE_ID,SUBJECT_ID\n1,1\n1,2\n", "template 1 is listed with subjects 1 and 2"),
        ("TEMPLATE_ID,SUBJECT_ID\n1,a\n", "integer TEMPLATE_ID and SUBJECT_ID"),
        ("TEMPLATE_ID,SUBJECT_ID\n", "holds no template|expected"),
    ],
)
def test_bad_subject_files(tmp_path, text, message):
    (tmp_path / "g.csv").write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_ijb_subjects(tmp_path / "g.csv")
    assert "g.csv" in str(info.value)


def _meta_folder(root, prefix="ijbc", gallery_names=("G1", "G2")):
    meta = root / "IJBC" / "meta"
    meta.mkdir(parents=True)
    (meta / f"{prefix}_face_tid_mid.txt").write_text(MEDIA)
    (meta / f"{prefix}_template_pair_label.txt").write_text(PAIRS)
    for g in gallery_names:
        (meta / f"{prefix}_1N_gallery_{g}.csv").write_text(GALLERY)
    (meta / f"{prefix}_1N_probe_mixed.csv").write_text(GALLERY.replace("4,2,", "171707,3,"))
    (meta / f"{prefix}_name_5pts_score.txt").write_text("")  # not read here
    return meta


@pytest.mark.parametrize("prefix", ["ijbc", "IJBC"])
def test_load_meta_reads_every_protocol_file(tmp_path, prefix):
    meta_dir = _meta_folder(tmp_path, prefix)
    for root, target in ((meta_dir.parent, None), (meta_dir, "IJBC"), (meta_dir, "ijbc")):
        meta = load_ijb_meta(root, target)
        assert isinstance(meta, IJBMeta) and meta.target == "IJBC"
        assert meta.media.templates.tolist() == [1, 1, 1, 2, 171707]
        assert meta.pairs.labels.tolist() == [True, False, True]
        assert sorted(meta.galleries) == ["G1", "G2"]
        assert meta.galleries["G2"].templates.tolist() == [1, 4]
        assert meta.probes.templates.tolist() == [1, 171707]
        assert set(meta.files) == {"media", "pairs", "gallery G1", "gallery G2", "probes"}
    assert repr(meta) == (
        "IJBMeta(target='IJBC', images=5, templates=3, pairs=3, galleries=['G1', 'G2'], probes=2)"
    )


def test_load_meta_without_optional_files(tmp_path):
    (tmp_path / "ijbb_face_tid_mid.txt").write_text(MEDIA)
    meta = load_ijb_meta(tmp_path)
    assert meta.target == "IJBB" and meta.pairs is None and meta.galleries == {}
    assert meta.probes is None


def test_load_meta_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_ijb_meta(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="expected one .*found 0"):
        load_ijb_meta(tmp_path)
    (tmp_path / "ijbb_face_tid_mid.txt").write_text(MEDIA)
    (tmp_path / "ijbc_face_tid_mid.txt").write_text(MEDIA)
    with pytest.raises(ValueError, match="found 2 .*ijbb, ijbc.*target="):
        load_ijb_meta(tmp_path)
    with pytest.raises(FileNotFoundError, match="no xyz_face_tid_mid.txt .*ijbb_face_tid_mid"):
        load_ijb_meta(tmp_path, "XYZ")
    assert load_ijb_meta(tmp_path, "ijbb").target == "IJBB"
