"""``python -m metricface pack-rec / unpack-rec``: byte-identical round trips, resuming, errors."""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
from PIL import Image

from metricface.cli import main
from metricface.data import IdentityFolder, RecordFaces, write_record_pack


def _image(seed: int, fmt: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path):
    """alice: 2 JPEG, bob: 1 PNG + 1 JPEG, carol: 3 JPEG (one holding the magic word)."""
    root = tmp_path / "faces"
    files = {}
    for person, names in [("alice", ["a.jpg", "b.jpg"]), ("bob", ["c.png", "d.jpg"]),
                          ("carol", ["e.jpg", "f.jpg", "g.jpeg"])]:  # fmt: skip
        (root / person).mkdir(parents=True)
        for name in names:
            data = _image(len(files), "PNG" if name.endswith("png") else "JPEG")
            if name == "f.jpg":  # a trailing magic word: the record is split
                data += b"\0" * (-len(data) % 4) + struct.pack("<I", 0xCED7230A)
            (root / person / name).write_bytes(data)
            files[f"{person}/{name}"] = data
    return root, files


def _contents(root):
    """identity -> list of file contents in IdentityFolder order."""
    ds = IdentityFolder(root)
    out: dict[str, list[bytes]] = {}
    for path, label in ds.samples:
        out.setdefault(ds.classes[label], []).append(open(path, "rb").read())
    return ds, out


def test_folder_pack_folder_round_trip_is_byte_identical(tree, tmp_path, capsys):
    root, _ = tree
    assert main(["pack-rec", str(root), str(tmp_path / "pack"), "--quiet"]) == 0
    assert "wrote 7 images of 3 identities" in capsys.readouterr().out
    rec = tmp_path / "pack" / "train.rec"
    faces = RecordFaces(rec)
    assert faces.has_header and faces.num_classes == 3 and faces.image_size == (12, 12)
    assert main(["unpack-rec", str(rec), str(tmp_path / "out"), "--quiet"]) == 0
    _, before = _contents(root)
    unpacked, after = _contents(tmp_path / "out")
    assert list(after) == ["0", "1", "2"] and unpacked.label_map == faces.label_map
    assert list(after.values()) == list(before.values())
    assert sorted(os.listdir(tmp_path / "out" / "1")) == ["3.png", "4.jpg"]  # keys, bytes' format
    # and back again: the same pack byte for byte
    assert main(["pack-rec", str(tmp_path / "out"), str(tmp_path / "again.rec"), "--quiet"]) == 0
    assert (tmp_path / "again.rec").read_bytes() == rec.read_bytes()
    assert (tmp_path / "again.idx").read_bytes() == rec.with_suffix(".idx").read_bytes()


def test_unpack_resumes_and_reports_progress(tree, tmp_path, capsys):
    root, _ = tree
    rec = tmp_path / "p.rec"
    main(["pack-rec", str(root), str(rec), "--no-header", "--quiet"])
    assert not RecordFaces(rec).has_header
    out = tmp_path / "out"
    assert main(["unpack-rec", str(rec), str(out)]) == 0
    captured = capsys.readouterr()
    assert "unpack-rec: 7/7 images (100%)" in captured.err
    (out / "2" / "5.jpg").unlink()  # lost, and an interrupted write left a hidden temporary
    (out / "2" / ".6.jpg.partial").write_bytes(b"half")
    stamp = (out / "0" / "0.jpg").stat().st_mtime_ns
    assert main(["unpack-rec", str(rec), str(out), "--quiet"]) == 0
    assert "wrote 1 images" in (out_text := capsys.readouterr().out)
    assert "6 were already there" in out_text
    assert (out / "0" / "0.jpg").stat().st_mtime_ns == stamp  # finished files untouched
    assert list(_contents(out)[1].values()) == list(_contents(root)[1].values())


def test_user_mistakes_are_one_line_errors(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("METRICFACE_DEBUG", raising=False)
    root, _ = tree
    (root / "bob" / "x.jpg").write_bytes(b"GIF89a not accepted")
    assert main(["pack-rec", str(root), str(tmp_path / "p.rec"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metricface pack-rec: error: ") and err.count("\n") == 1
    assert "x.jpg' is not a JPEG, PNG or WebP file" in err
    assert not list(tmp_path.glob("*p.*"))  # nothing half-written
    (root / "bob" / "x.jpg").unlink()
    main(["pack-rec", str(root), str(tmp_path / "p.rec"), "--quiet"])
    capsys.readouterr()
    assert main(["pack-rec", str(root), str(tmp_path / "p.rec")]) == 2
    assert "p.rec' exists; pass --force" in capsys.readouterr().err
    assert main(["pack-rec", str(root), str(tmp_path / "p.rec"), "--force", "--quiet"]) == 0
    (tmp_path / "p.idx").unlink()
    assert main(["unpack-rec", str(tmp_path / "p.rec"), str(tmp_path / "o")]) == 2
    assert "p.idx' of" in capsys.readouterr().err
    assert main(["unpack-rec", str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2
    assert "neither a .rec file nor a folder" in capsys.readouterr().err


def test_a_second_pack_in_one_folder_keeps_the_first_packs_property(tree, tmp_path, capsys):
    # property is one file per folder: packing another set beside a pack must not replace it
    root, _ = tree
    assert main(["pack-rec", str(root), str(tmp_path / "train.rec"), "--quiet"]) == 0
    before = (tmp_path / "property").read_text()
    assert main(["pack-rec", str(root), str(tmp_path / "val.rec"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "property' exists" in err and "--force" in err and err.count("\n") == 1
    assert (tmp_path / "property").read_text() == before
    assert not (tmp_path / "val.rec").exists()


def test_unpack_leaves_out_records_of_unknown_format(tmp_path, capsys):
    rec = tmp_path / "x.rec"
    write_record_pack(rec, [(_image(0), 0), (b"BM not an image we store", 1)], write_property=False)
    assert main(["unpack-rec", str(rec), str(tmp_path / "out"), "--quiet"]) == 1
    assert "1 records hold neither JPEG, PNG nor WebP bytes and were left out (keys 2)" in (
        capsys.readouterr().err
    )
    assert os.listdir(tmp_path / "out") == ["0"]
