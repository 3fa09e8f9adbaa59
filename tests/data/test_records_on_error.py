"""RecordFaces(on_error="skip") substitutes an undecodable record as IdentityFolder does."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from metricface.data import IdentityFolder, ImageDecodeError, RecordFaces, write_record_pack

BROKEN = b"\xff\xd8\xff\xe0 cut short"  # a JPEG header and nothing after it


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (value, 255 - value, value // 2)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


# identity 0: good, broken, good; identity 1: broken, broken, good (the substitute skips the
# second broken one); identity 2: good, broken (wraps around to its first); identity 3: broken
LAYOUT = [(0, 1), (0, 0), (0, 1), (1, 0), (1, 0), (1, 1), (2, 1), (2, 0), (3, 0)]


@pytest.fixture
def pack_and_folder(tmp_path):
    items = [(_jpeg(20 * k) if good else BROKEN, label) for k, (label, good) in enumerate(LAYOUT)]
    rec = tmp_path / "pack" / "train.rec"
    rec.parent.mkdir()
    write_record_pack(rec, items, image_size=(16, 16))
    for k, (data, label) in enumerate(items):  # the same bytes as an identity folder tree
        (tmp_path / "tree" / f"id{label}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / f"id{label}" / f"{k}.jpg").write_bytes(data)
    return rec, tmp_path / "tree"


def test_raise_names_the_record_by_default(pack_and_folder):
    rec, _ = pack_and_folder
    ds = RecordFaces(rec)
    assert ds.on_error == "raise" and ds.bad_records == []
    offset = int(ds.offsets[1])
    with pytest.raises(ImageDecodeError, match=rf"record key 2 at offset {offset} of .*train\.rec"):
        ds[1]
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', got 'ignore'"):
        RecordFaces(rec, on_error="ignore")


def test_skip_returns_what_identity_folder_returns(pack_and_folder):
    rec, tree = pack_and_folder
    ds = RecordFaces(rec, on_error="skip", transform=lambda x: x.flip(-1))
    folder = IdentityFolder(tree, on_error="skip", transform=lambda x: x.flip(-1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(ds) - 1):  # identity 3 has no decodable image at all
            image, label = ds[i]
            expected, expected_label = folder[i]
            assert label == expected_label == LAYOUT[i][0]
            assert image.dtype == torch.uint8 and torch.equal(image, expected), i
        for i in (1, 3, 7):  # asked again: no second warning, the same substitute
            assert torch.equal(ds[i][0], folder[i][0])
    messages = [str(w.message) for w in caught if "record key" in str(w.message)]
    assert len(messages) == 3  # one per broken record asked for, keys 2, 4 and 8
    assert all("using another image of the same identity" in m for m in messages)
    assert sorted(ds.bad_records) == [2, 4, 5, 8]  # key 5 was found broken as a substitute
    assert torch.equal(ds[1][0], ds[2][0]) and torch.equal(ds[3][0], ds[5][0])
    assert torch.equal(ds[7][0], ds[6][0])  # the last image wraps around to the first
    with pytest.raises(ImageDecodeError, match="no image of identity label 3 in .*train.rec"):
        with pytest.warns(UserWarning, match="record key 9 at offset"):
            ds[8]


def test_splits_and_subsets_keep_the_policy_with_their_own_record_list(pack_and_folder):
    rec, _ = pack_and_folder
    ds = RecordFaces(rec, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds[1]
    sub = ds.subset(np.array([0, 1, 2]))
    train, held = ds.split_by_identity(2, seed=0)
    for part in (sub, train, held):
        assert part.on_error == "skip" and part.bad_records == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(sub[1][0], sub[2][0])
    assert sub.bad_records == [2] and ds.bad_records == [2]
