"""IdentityFolder on a small tree of real JPEG/PNG files, a corrupt file and an empty folder."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from metricface.data import IdentityFolder, ImageDecodeError, decode_image_file


def _image(seed: int, size: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)


def _write(img: torch.Tensor, path) -> None:
    fmt = "PNG" if str(path).lower().endswith("png") else "JPEG"
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path, format=fmt, quality=95)


def test_grey_and_rgba_images_become_rgb(tmp_path):
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    Image.new("RGBA", (5, 4), (1, 2, 3, 4)).save(tmp_path / "a.png")
    grey, rgba = decode_image_file(tmp_path / "g.png"), decode_image_file(tmp_path / "a.png")
    assert grey.shape == rgba.shape == (3, 4, 5)
    assert grey.unique().tolist() == [77] and rgba[:, 0, 0].tolist() == [1, 2, 3]


@pytest.fixture
def tree(tmp_path):
    """alice: 3 JPEG, bob: 2 PNG + 1 corrupt JPEG, carol: 4 JPEG, dave: empty, notes.txt."""
    root = tmp_path / "faces"
    images = {}
    for name, n, fmt in (("alice", 3, "jpg"), ("bob", 2, "png"), ("carol", 4, "JPG")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = _image(hash((name, i)) % 1000)
            path = root / name / f"{i:03d}.{fmt}"
            _write(img, path)
            with Image.open(path) as reread:  # the independent reference decode
                images[str(path)] = torch.from_numpy(np.array(reread)).permute(2, 0, 1)
    (root / "bob" / "999.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "bob" / "readme.txt").write_text("not an image")
    (root / "dave").mkdir()
    (root / "notes.txt").write_text("top-level files are ignored")
    return root, images


def test_scan_labels_and_reading(tree):
    root, images = tree
    with pytest.warns(UserWarning, match="dave"):
        ds = IdentityFolder(root)
    assert ds.label_map == {"alice": 0, "bob": 1, "carol": 2}
    assert ds.classes == ["alice", "bob", "carol"]
    assert ds.empty_identities == ["dave"]
    assert len(ds) == 3 + 3 + 4  # bob's corrupt .jpg is listed, its .txt is not
    assert ds.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 4
    img, label = ds[0]
    assert label == 0 and img.dtype == torch.uint8 and img.shape == (3, 20, 20)
    for path, lab in ds.samples:
        if "999" in path:
            continue
        assert torch.equal(decode_image_file(path), images[path])
        assert ds.classes[lab] in path


def test_corrupt_file_raises_naming_the_file(tree):
    root, _ = tree
    with pytest.warns(UserWarning):
        ds = IdentityFolder(root)
    bad = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("999.jpg"))
    with pytest.raises(ImageDecodeError, match=r"999\.jpg"):
        ds[bad]


def test_corrupt_file_skipped_with_warning(tree):
    root, _ = tree
    with pytest.warns(UserWarning):
        ds = IdentityFolder(root, on_error="skip")
    bad = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("999.jpg"))
    with pytest.warns(UserWarning, match=r"999\.jpg"):
        img, label = ds[bad]
    assert label == 1 and img.shape == (3, 20, 20)
    assert [p.rsplit("/", 1)[-1] for p in ds.bad_files] == ["999.jpg"]
    # same identity's first image was used instead (wrap-around)
    assert torch.equal(img, ds[bad - 2][0])


def test_verify_drops_bad_files(tree):
    root, _ = tree
    with pytest.warns(UserWarning):
        ds = IdentityFolder(root)
    bad = ds.verify()
    assert len(bad) == 1 and bad[0].endswith("999.jpg")
    assert len(ds) == 9 and ds.labels.tolist().count(1) == 2
    for i in range(len(ds)):
        ds[i]


def test_label_map_roundtrip_and_reuse(tree, tmp_path):
    root, _ = tree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = IdentityFolder(root)
    ds.save_label_map(tmp_path / "labels.json")
    loaded = IdentityFolder.load_label_map(tmp_path / "labels.json")
    assert loaded == ds.label_map
    # another copy of the data with only some identities keeps the same labels
    other = tmp_path / "other"
    (other / "carol").mkdir(parents=True)
    _write(_image(1), other / "carol" / "x.png")
    again = IdentityFolder(other, label_map=loaded)
    assert again.labels.tolist() == [2] and again.num_classes == 3
    (other / "zed").mkdir()
    _write(_image(2), other / "zed" / "y.png")
    with pytest.raises(ValueError, match="zed"):
        IdentityFolder(other, label_map=loaded)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        IdentityFolder.load_label_map(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="different label"):
        IdentityFolder(other, label_map={"carol": 0, "zed": 0})


def test_saved_label_map_reloads_on_a_tree_with_an_empty_identity_folder(tree, tmp_path):
    """The empty folder "dave" gets no label, so the saved map does not name it: it is still
    skipped, not taken for an identity the map does not know."""
    root, _ = tree
    with pytest.warns(UserWarning, match="dave"):
        ds = IdentityFolder(root)
    ds.save_label_map(tmp_path / "labels.json")
    with pytest.warns(UserWarning, match="dave"):
        again = IdentityFolder(
            root, label_map=IdentityFolder.load_label_map(tmp_path / "labels.json")
        )
    assert again.samples == ds.samples and again.label_map == ds.label_map


def test_split_by_identity_is_open_set(tree):
    root, _ = tree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = IdentityFolder(root)
    train, held = ds.split_by_identity(1, seed=3)
    assert set(train.label_map).isdisjoint(held.label_map)
    assert set(train.label_map) | set(held.label_map) == set(ds.label_map)
    assert len(train) + len(held) == len(ds)
    for part in (train, held):
        assert sorted(set(part.labels.tolist())) == list(range(len(part.label_map)))
        for path, lab in part.samples:
            assert f"/{part.classes[lab]}/" in path
    assert ds.split_by_identity(1, seed=3)[1].samples == held.samples  # seeded
    _, h2 = ds.split_by_identity(0.34, seed=3)
    assert len(h2.label_map) == 1
    with pytest.raises(ValueError, match="held_out"):
        ds.split_by_identity(1.5)
    with pytest.raises(ValueError, match="empty"):
        ds.split_by_identity(3)


def test_split_by_image_is_closed_set(tree):
    root, _ = tree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = IdentityFolder(root)
    train, test = ds.split_by_image(1, seed=0)
    assert train.label_map == test.label_map == ds.label_map
    assert sorted(train.samples + test.samples) == sorted(ds.samples)
    assert sorted(test.labels.tolist()) == [0, 1, 2]
    train, test = ds.split_by_image(0.5, seed=0, min_train=3)
    # alice and bob have 3 images: all stay in train; carol gives 1 (min_train=3)
    assert test.labels.tolist() == [2]


def test_bad_arguments(tree, tmp_path):
    root, _ = tree
    with pytest.raises(ValueError, match="root"):
        IdentityFolder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no identity"):
        IdentityFolder(tmp_path / "flat")
    with pytest.raises(ValueError, match="on_error"):
        IdentityFolder(root, on_error="ignore")
    with pytest.raises(TypeError, match="transform"):
        IdentityFolder(root, transform="flip")
    with pytest.raises(ValueError, match="no image"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        IdentityFolder(root, extensions=(".tiff",))


@given(
    counts=st.lists(st.integers(0, 4), min_size=1, max_size=12),
    threads=st.integers(1, 16),
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_scan_equals_torchvision_imagefolder_for_any_thread_count(
    tmp_path_factory, counts, threads
):
    """Same (path, label) samples as torchvision's ImageFolder, however folders are split."""
    from torchvision.datasets import ImageFolder

    root = tmp_path_factory.mktemp("scan")
    for i, n in enumerate(counts):
        (root / f"id{i:02d}").mkdir()
        for k in range(n):
            (root / f"id{i:02d}" / f"{k}.jpg").touch()
    if not any(counts):
        with pytest.raises(ValueError, match="holds no image"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            IdentityFolder(root, num_threads=threads)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty identity folders are reported, not errors
        ours = IdentityFolder(root, num_threads=threads)
    peer = ImageFolder(str(root), allow_empty=True)
    # ImageFolder numbers empty folders too; compare by identity name
    assert [(p, ours.classes[y]) for p, y in ours.samples] == [
        (p, peer.classes[y]) for p, y in peer.samples
    ]
