"""RecordFaces and write_record_pack on packs built here byte for byte.

The packs are laid out by a reference writer written in this file from the RecordIO format
(magic word, length word with its continuation flag, payload split at aligned magic words,
4-byte padding; MXNet's ``IfQQ`` image header with optional float32 label array; InsightFace's
header record and identity records) and checked by an independent sequential parser that
walks the ``.rec`` without the index.
"""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from metricface.data import (
    IdentityFolder,
    ImageDecodeError,
    RecordFaces,
    decode_image_file,
    write_record_pack,
)
from metricface.samplers import IdentityBatchSampler, PairSampler

MAGIC = struct.pack("<I", 0xCED7230A)


# ------------------------------------------------------------------ reference format
def ref_record(payload: bytes) -> bytes:
    """One record: split where the magic word sits at a 4-byte aligned payload position."""
    parts, start = [], 0
    for pos in range(0, len(payload) - 3, 4):
        if payload[pos : pos + 4] == MAGIC:
            parts.append(payload[start:pos])
            start = pos + 4
    parts.append(payload[start:])
    out = b""
    for i, part in enumerate(parts):
        if len(parts) == 1:
            cflag = 0
        else:
            cflag = 1 if i == 0 else 3 if i == len(parts) - 1 else 2
        out += MAGIC + struct.pack("<I", (cflag << 29) | len(part)) + part
        out += b"\0" * (-len(part) % 4)
    return out


def ref_payload(label, image: bytes, key: int) -> bytes:
    """MXNet's recordio.pack: IRHeader 'IfQQ', then the label array when flag > 0."""
    if isinstance(label, int):
        return struct.pack("<IfQQ", 0, float(label), key, 0) + image
    array = struct.pack(f"<{len(label)}f", *label)
    return struct.pack("<IfQQ", len(label), 0.0, key, 0) + array + image


def ref_parse(data: bytes) -> dict[int, bytes]:
    """Sequential scan of a whole .rec: record start offset -> joined payload."""
    out, pos = {}, 0
    while pos < len(data):
        start, parts = pos, []
        while True:
            magic, word = struct.unpack_from("<4sI", data, pos)
            assert magic == MAGIC
            cflag, length = word >> 29, word & (2**29 - 1)
            parts.append(data[pos + 8 : pos + 8 + length])
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                break
        out[start] = MAGIC.join(parts)
    return out


def ref_unpack(payload: bytes):
    """(flag, identity, image bytes) of an image payload."""
    flag, label, _, _ = struct.unpack_from("<IfQQ", payload)
    if flag:
        label = struct.unpack_from("<f", payload, 24)[0]
    return flag, int(label), payload[24 + 4 * flag :]


def build_pack(folder, records, *, idx_order=None, prop=None, name="train"):
    """Write ``[(key, payload)]`` in file order; the .idx lists them in ``idx_order``."""
    folder.mkdir(parents=True, exist_ok=True)
    rec, lines, data = folder / f"{name}.rec", {}, b""
    for key, payload in records:
        lines[key] = f"{key}\t{len(data)}\n"
        data += ref_record(payload)
    rec.write_bytes(data)
    order = idx_order if idx_order is not None else [k for k, _ in records]
    (folder / f"{name}.idx").write_text("".join(lines[k] for k in order))
    if prop is not None:
        (folder / "property").write_text(prop)
    return rec


def insightface_records(images, labels):
    """Header record 0, the image records 1..n, one identity record per label."""
    n, classes = len(images), max(lab if isinstance(lab, int) else int(lab[0]) for lab in labels)
    classes += 1
    first = n + 1
    records = [(0, struct.pack("<IfQQ2f", 2, 0.0, 0, 0, first, first + classes))]
    records += [
        (k + 1, ref_payload(lab, img, k + 1)) for k, (img, lab) in enumerate(zip(images, labels))
    ]
    ids = [lab if isinstance(lab, int) else int(lab[0]) for lab in labels]
    end = 1
    for c in range(classes):
        keys = [k + 1 for k, i in enumerate(ids) if i == c]
        start, end = (keys[0], keys[-1] + 1) if keys else (end, end)
        records.append((first + c, struct.pack("<IfQQ2f", 2, 0.0, first + c, 0, start, end)))
    return records


def jpeg(seed: int, size: int = 24, comment: bytes = b"") -> bytes:
    """A small JPEG (noise over a gradient, quality 95), optionally with a COM segment."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size, dtype=np.float32)
    pixels = ramp[None, :, None] + rng.normal(0, 25, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    if comment:
        data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]
    return data


def jpeg_with_magic(seed: int, image_start: int) -> bytes:
    """A decodable JPEG whose payload holds the magic word at aligned positions (split)."""
    pad = -(image_start + 6) % 4  # SOI (2) + COM marker and length (4)
    return jpeg(seed, comment=b"x" * pad + MAGIC + MAGIC + b"abcd" + MAGIC + b"yz")


# ------------------------------------------------------------------ fixtures
IMAGES = [jpeg(s) for s in range(6)]
LABELS = [0, [0.0, 7.5], 1, [1.0], [1.0, 2.0, 3.0], 3]  # identity 2 has no image


@pytest.fixture
def insightface_pack(tmp_path):
    images = [*IMAGES[:2], jpeg_with_magic(2, 24), *IMAGES[3:]]
    records = insightface_records(images, LABELS)
    order = [r[0] for r in records][::-1]  # the .idx lists the records backwards
    order[2], order[5] = order[5], order[2]
    rec = build_pack(tmp_path / "pack", records, idx_order=order, prop="5,24,24")
    return rec, images


def test_insightface_pack_matches_the_reference_parser(insightface_pack):
    rec, images = insightface_pack
    assert {len(img) % 4 for img in images} != {0}  # some records need padding
    assert rec.read_bytes().count(MAGIC) > len(images) + 4 + 1  # the magic word split one
    ds = RecordFaces(rec)
    assert ds.has_header and len(ds) == 6
    assert ds.keys.tolist() == [1, 2, 3, 4, 5, 6]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 1, 1, 1, 3]
    assert ds.num_classes == 5 and ds.image_size == (24, 24)  # from `property`
    reference = ref_parse(rec.read_bytes())
    for i in range(len(ds)):
        data, label = ds.raw(i)
        flag, ref_label, ref_image = ref_unpack(reference[int(ds.offsets[i])])
        assert (data, label) == (ref_image, ref_label) == (images[i], ds.labels[i])
        assert flag == (0 if isinstance(LABELS[i], int) else len(LABELS[i]))


def test_items_decode_as_identity_folder_does(insightface_pack, tmp_path):
    rec, images = insightface_pack
    ds = RecordFaces(rec, transform=lambda x: x.flip(-1))
    for i, data in enumerate(images):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(data)
        image, label = ds[i]
        assert isinstance(label, int) and label == ds.labels[i]
        assert image.dtype == torch.uint8 and torch.equal(image, decode_image_file(path).flip(-1))


def test_plain_pack_without_header_or_property(tmp_path):
    records = [(k, ref_payload(lab, IMAGES[k], k)) for k, lab in enumerate([2, 0, 2, 1])]
    rec = build_pack(tmp_path, records, idx_order=[3, 1, 0, 2])
    ds = RecordFaces(rec)
    assert not ds.has_header and ds.image_size is None
    assert ds.keys.tolist() == [0, 1, 2, 3] and ds.labels.tolist() == [2, 0, 2, 1]
    assert ds.num_classes == 3
    assert [ds.raw(i)[0] for i in range(4)] == IMAGES[:4]
    assert ds[-1][1] == 1 and ds[np.int64(1)][1] == 0
    with pytest.raises(IndexError, match="out of range"):
        ds[4]


def test_writer_lays_out_the_reference_bytes(tmp_path):
    images = [*IMAGES[:2], jpeg_with_magic(2, 24), *IMAGES[3:]]
    rec = tmp_path / "ours" / "train.rec"
    rec.parent.mkdir()
    assert write_record_pack(rec, zip(images, LABELS), num_classes=5) == 6
    # the reference lays out identities 0..3 (2 empty); num_classes=5 adds an empty identity 4
    records = insightface_records(images, LABELS)
    records[0] = (0, struct.pack("<IfQQ2f", 2, 0.0, 0, 0, 7, 12))
    records.append((11, struct.pack("<IfQQ2f", 2, 0.0, 11, 0, 7, 7)))
    ref = build_pack(tmp_path / "ref", records)
    assert rec.read_bytes() == ref.read_bytes()
    assert rec.with_suffix(".idx").read_text() == ref.with_suffix(".idx").read_text()
    assert (rec.parent / "property").read_text() == "5,24,24"
    assert sorted(p.name for p in rec.parent.iterdir()) == ["property", "train.idx", "train.rec"]
    plain = tmp_path / "plain.rec"
    write_record_pack(plain, zip(IMAGES[:3], [1, 0, 1]), header=False, write_property=False)
    records = [(k, ref_payload(lab, IMAGES[k], k)) for k, lab in enumerate([1, 0, 1])]
    assert plain.read_bytes() == build_pack(tmp_path / "ref2", records).read_bytes()


@settings(max_examples=25)
@given(
    chunks=st.lists(
        st.tuples(st.binary(max_size=11), st.booleans(), st.integers(0, 3)), min_size=1, max_size=5
    ),
    label=st.integers(0, 2**24 - 1),
    flag=st.integers(0, 3),
)
@example(chunks=[(b"abc", True, 0)], label=7, flag=0)  # the magic word ends the payload
@example(chunks=[(b"abc", True, 0), (b"", True, 0)], label=7, flag=0)  # back to back
def test_any_payload_survives_the_round_trip(tmp_path_factory, chunks, label, flag):
    """Magic words at aligned and unaligned places, at the start and end, back to back."""
    image = b"\xff"
    for filler, magic, shift in chunks:
        image += filler + b"\0" * shift + (MAGIC if magic else b"")
    lab = label if flag == 0 else [float(label)] + [0.5] * (flag - 1)
    folder = tmp_path_factory.mktemp("pack")
    rec = folder / "x.rec"
    write_record_pack(rec, [(image, lab)], header=False, write_property=False)
    payload = ref_payload(lab, image, 0)
    assert rec.read_bytes() == ref_record(payload)
    assert ref_parse(rec.read_bytes()) == {0: payload}
    ds = RecordFaces(rec)
    assert ds.raw(0) == (image, label)


def test_header_counts_rounded_in_float32(tmp_path):
    """Above 2**24 the header's first identity key is rounded: 2**24 + 3 is stored as + 4."""
    first = 2**24 + 3
    assert int(np.float32(first)) == first + 1
    keys = [1, 2, 2**24 - 1, 2**24 + 2]
    records = [(0, struct.pack("<IfQQ2f", 2, 0.0, 0, 0, first, first + 2))]
    records += [(k, ref_payload(i % 2, IMAGES[i], k)) for i, k in enumerate(keys)]
    records += [(first + c, struct.pack("<IfQQ2f", 2, 0.0, first + c, 0, 1, 2)) for c in (0, 1)]
    ds = RecordFaces(build_pack(tmp_path, records))
    assert ds.keys.tolist() == keys and ds.labels.tolist() == [0, 1, 0, 1]


# ------------------------------------------------------------------ samplers, workers
@pytest.fixture
def written(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, 6, 40)).tolist()
    rec = tmp_path / "train.rec"
    write_record_pack(rec, ((jpeg(i, size=16), lab) for i, lab in enumerate(labels)))
    return rec, labels


def test_identity_batches_and_pairs_from_a_pack(written):
    rec, labels = written
    ds = RecordFaces(rec)
    seen = []
    for rank in (0, 1):
        sampler = IdentityBatchSampler(ds.labels, 3, 2, num_replicas=2, rank=rank, seed=1)
        loader = DataLoader(ds, batch_sampler=sampler)
        for (images, batch_labels), batch in zip(loader, sampler):
            assert images.shape == (6, 3, 16, 16)
            assert batch_labels.tolist() == [labels[i] for i in batch]
            assert len(set(batch_labels.tolist())) == 3
            seen += batch
    assert set(seen) == set(range(len(ds)))
    pairs = list(PairSampler(ds.labels, 0.5, num_replicas=2, rank=1, seed=0))
    assert all((labels[i] == labels[j]) == same for i, j, same in pairs)


def test_pickled_and_forked_datasets_read_the_same_items(written, monkeypatch):
    rec, _ = written
    ds = RecordFaces(rec)
    expected = [ds.raw(i) for i in range(len(ds))]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert [clone.raw(i) for i in range(len(ds))] == expected
    loader = DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context="fork")
    images = torch.cat([x for x, _ in loader])
    assert torch.equal(images, torch.stack([ds[i][0] for i in range(len(ds))]))
    fd = ds._fd
    monkeypatch.setattr(os, "getpid", lambda: -5)  # as in a forked child: reopen
    assert ds.raw(3) == expected[3] and ds._fd != fd
    monkeypatch.undo()
    os.close(ds._fd)


def test_split_by_identity_subset_and_names_match_an_unpacked_folder(written, tmp_path):
    rec, _ = written
    ds = RecordFaces(rec)
    assert ds.classes == ["0", "1", "2", "3", "4", "5"]  # padded to the width of label 5
    train, held = ds.split_by_identity(2, seed=3)
    assert len(train) + len(held) == len(ds) and held.num_classes == 2
    assert set(train.classes).isdisjoint(held.classes)
    row_of_key = {int(k): i for i, k in enumerate(ds.keys)}
    for part in (train, held):
        for i in range(len(part)):
            row = row_of_key[int(part.keys[i])]
            assert part.identity_name(part.labels[i]) == ds.identity_name(ds.labels[row])
            assert part.raw(i)[0] == ds.raw(row)[0]
    # the same split as IdentityFolder draws over a tree named the same way
    root = tmp_path / "tree"
    for i in range(len(ds)):
        folder = root / ds.identity_name(ds.labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.jpg").write_bytes(ds.raw(i)[0])
    folder_ds = IdentityFolder(root)
    assert folder_ds.label_map == ds.label_map
    f_train, f_held = folder_ds.split_by_identity(2, seed=3)
    assert f_held.label_map == held.label_map and f_train.label_map == train.label_map
    some = held.subset([2, 0])
    assert some.labels.tolist() == held.labels[[2, 0]].tolist()
    assert some.raw(0) == held.raw(2) and some.num_classes == held.num_classes


# ------------------------------------------------------------------ errors
def _corrupt(rec, edit):
    data = bytearray(rec.read_bytes())
    edit(data)
    rec.write_bytes(bytes(data))


def _offsets(rec):
    return sorted(
        int(line.split()[1]) for line in rec.with_suffix(".idx").read_text().split("\n") if line
    )


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda rec: rec.with_suffix(".idx").unlink(), r"index file .*train\.idx.* not found"),
        (
            lambda rec: _corrupt(rec, lambda d: d.__delitem__(slice(-30, None))),
            r"record key 9 at offset \d+: the pack is truncated",
        ),
        (
            lambda rec: _corrupt(rec, lambda d: d.__delitem__(slice(_offsets(rec)[-1] + 4, None))),
            r"record key 9 at offset \d+: the index points past the end",
        ),
        (
            lambda rec: _corrupt(rec, lambda d: d.__setitem__(_offsets(rec)[3], 0)),
            r"record key 3 at offset \d+: wrong magic word 0xced72300",
        ),
        (
            lambda rec: rec.with_suffix(".idx").write_text("0\t0\n1\t42\n"),
            r"record key 1 at offset 42: offset is not a multiple of 4",
        ),
        (
            lambda rec: rec.with_suffix(".idx").write_text("0\t0\n1\t64\nx y\n"),
            r"train\.idx' line 3: expected 'key<TAB>offset'",
        ),
        (
            lambda rec: rec.with_suffix(".idx").write_text("0\t0\n0\t64\n"),
            r"lists key 0 more than once",
        ),
        (
            lambda rec: (rec.parent / "property").write_text("2,112"),
            r"property' must hold 'num_classes,height,width'",
        ),
        (
            lambda rec: (rec.parent / "property").write_text("1,16,16"),
            r"record key 3 at offset \d+: label 1 is not below num_classes=1",
        ),
    ],
)
def test_damaged_packs_name_the_file_and_record(tmp_path, damage, match):
    rec = tmp_path / "train.rec"
    write_record_pack(rec, ((jpeg(i, size=16), i // 2) for i in range(6)))
    damage(rec)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        RecordFaces(rec)


def test_bad_record_contents_name_the_record(tmp_path):
    records = [
        (0, ref_payload(0, IMAGES[0], 0)),
        (1, struct.pack("<IfQQ", 3, 0.0, 1, 0) + b"12345678"),
    ]
    with pytest.raises(
        ValueError,
        match=r"record key 1 at offset \d+: label flag 3 announces 3 float32 labels \(36 bytes",
    ):
        RecordFaces(build_pack(tmp_path / "a", records))
    off = len(ref_record(records[0][1]))
    records[1] = (1, struct.pack("<IfQQ", 0, 1.5, 1, 0) + b"img")
    with pytest.raises(
        ValueError, match=f"record key 1 at offset {off}: label 1.5 is not a non-negative integer"
    ):
        RecordFaces(build_pack(tmp_path / "b", records))
    records[1] = (1, struct.pack("<IfQQ2f", 2, 0.0, 1, 0, 0, 1))  # identity record, no header
    with pytest.raises(ValueError, match=f"record key 1 at offset {off}: holds no image bytes"):
        RecordFaces(build_pack(tmp_path / "c", records))
    header = (0, struct.pack("<IfQQf", 1, 0.0, 0, 0, 2.0))  # a one-entry header label
    with pytest.raises(ValueError, match="record key 0 at offset 0: a header record"):
        RecordFaces(build_pack(tmp_path / "e", [header, (1, ref_payload(0, IMAGES[0], 1))]))
    records[1] = (1, ref_payload(0, b"not a jpeg", 1))
    ds = RecordFaces(build_pack(tmp_path / "d", records))
    with pytest.raises(ImageDecodeError, match=rf"record key 1 at offset {off} of .*d/train\.rec"):
        ds[1]


def test_writer_refuses_bad_items_and_keeps_the_old_pack(tmp_path):
    rec = tmp_path / "train.rec"
    write_record_pack(rec, [(IMAGES[0], 0)])
    before = rec.read_bytes()
    cases = [
        (
            [(IMAGES[0], 0), (IMAGES[1], 1), (IMAGES[2], 0)],
            {},
            "item 2: identity 0 appears again after identity 1",
        ),
        ([(IMAGES[0], -1)], {}, r"item 0: identity label must be in \[0, 2\*\*24\)"),
        ([(IMAGES[0], 2**24)], {}, r"item 0: identity label must be in \[0, 2\*\*24\)"),
        ([(IMAGES[0], True)], {}, "item 0: label must be an int"),
        ([(IMAGES[0], [0.5])], {}, "item 0: a label array must start with the integer identity"),
        ([(b"", 0)], {}, "item 0: image data must be non-empty bytes"),
        ([(IMAGES[0], 3)], {"num_classes": 2}, "item 0: identity 3 is not below num_classes=2"),
        ([], {}, "at least one image"),
    ]
    for items, kw, match in cases:
        with pytest.raises((TypeError, ValueError), match=match):
            write_record_pack(rec, items, **kw)
        assert rec.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["property", "train.idx", "train.rec"]
    write_record_pack(
        tmp_path / "plain.rec", [(IMAGES[0], 0), (IMAGES[1], 1), (IMAGES[2], 0)], header=False
    )
