"""Verification .bin files: the layouts Python 2 and 3 tools wrote, the restricted unpickler,
decoding and the errors that name the file and the image."""

from __future__ import annotations

import builtins
import os
import pickle
import pickletools

import numpy as np
import pytest
import torch
from _bin_files import LAYOUTS, encode, pair_images, python2_pickle, write_bin
from hypothesis import given
from hypothesis import strategies as st

from metricface.data import ImageDecodeError, VerificationBin, load_verification_bin


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_pixel_exact_images_and_labels(tmp_path, layout):
    pixels, bins, issame = pair_images(3)
    path = write_bin(tmp_path / "lfw.bin", bins, issame, layout)
    images, labels = load_verification_bin(path)
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 16, 16)
    assert labels.dtype == np.bool_ and labels.tolist() == issame
    for i, expected in enumerate(pixels):  # PNG is lossless: pixel for pixel
        assert torch.equal(images[i], torch.from_numpy(expected).permute(2, 0, 1))


def test_python2_stream_is_what_python2_pickle_writes():
    """The emulated stream uses the opcodes of Python 2's protocol-2 pickler (str images as
    SHORT_BINSTRING / BINSTRING, no global at all) and reads back as Python 3 reads such files."""
    short, long = b"x" * 255, b"y" * 300
    data = python2_pickle([short, long] * 700, [True, False] * 700)
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert {"SHORT_BINSTRING", "BINSTRING", "NEWTRUE", "NEWFALSE", "APPENDS", "TUPLE2"} <= ops
    assert "LONG_BINPUT" in ops and not ops & {"GLOBAL", "STACK_GLOBAL", "BINBYTES"}
    bins, issame = pickle.loads(data, encoding="bytes")
    assert bins == [short, long] * 700 and issame == [True, False] * 700


def test_jpeg_images_decode_close_to_the_originals(tmp_path):
    y, x = np.mgrid[0:112, 0:112]
    smooth = [np.stack([x * 2, y * 2, (x + y) + 10 * k], -1).astype(np.uint8) for k in range(4)]
    bins = [encode(img, "JPEG") for img in smooth]
    images, _ = load_verification_bin(write_bin(tmp_path / "agedb_30.bin", bins, [True, False]))
    err = (images.float() - torch.from_numpy(np.stack(smooth)).permute(0, 3, 1, 2)).abs()
    assert images.shape == (4, 3, 112, 112) and err.mean() < 2  # JPEG quality 95


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("core", ["numpy._core", "numpy.core"])
def test_numpy_label_arrays_and_scalars(tmp_path, protocol, core):
    """Labels stored as a NumPy bool array or as np.bool_ scalars, under either NumPy module
    path (NumPy 1 wrote numpy.core, NumPy 2 writes numpy._core)."""
    _, bins, issame = pair_images(3)
    for labels in (np.array(issame), [np.bool_(v) for v in issame], np.array(issame, np.int64)):
        data = pickle.dumps((bins, labels), protocol=protocol)
        if protocol == 2:  # GLOBAL names are plain text lines: swap the module spelling
            data = data.replace(b"numpy._core", core.encode())
        (tmp_path / "cfp_fp.bin").write_bytes(data)
        assert load_verification_bin(tmp_path / "cfp_fp.bin")[1].tolist() == issame


def test_images_stored_as_numpy_uint8_arrays(tmp_path):
    _, bins, issame = pair_images(2)
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in bins]
    path = tmp_path / "calfw.bin"
    path.write_bytes(pickle.dumps((arrays, issame), protocol=2))
    ds = VerificationBin(path)
    assert [ds.encoded(i) for i in range(4)] == bins


class _Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _malicious(tmp_path, func, arg, protocol, nested):
    _, bins, issame = pair_images(1)
    payload = _Payload(func, arg)
    obj = ([*bins, payload], issame) if nested else payload
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("nested", [False, True])
def test_a_pickle_calling_code_is_refused_before_anything_runs(tmp_path, protocol, nested):
    sentinel = tmp_path / "ran"
    path = _malicious(
        tmp_path, builtins.exec, f"open({str(sentinel)!r}, 'w').write('x')", protocol, nested
    )
    with pytest.raises(
        ValueError, match=r"evil\.bin.*global (__builtin__|builtins)\.exec.*refusing"
    ):
        load_verification_bin(path)
    assert not sentinel.exists()
    pickle.loads(path.read_bytes())  # the same file under a plain unpickler does run it
    assert sentinel.exists()


def test_os_system_is_named_and_not_called(tmp_path):
    sentinel = tmp_path / "ran"
    path = _malicious(tmp_path, os.system, f"touch {sentinel}", 2, True)
    with pytest.raises(ValueError, match=rf"global {os.system.__module__}\.system"):
        VerificationBin(path)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    "obj, message",
    [
        (np.array([b"x", 1], dtype=object), "object arrays are refused|dtype"),
        (np.zeros(2, dtype=[("a", "i4")]), "dtype"),
        (np.array([1 + 2j]), "dtype"),
    ],
)
def test_numpy_arrays_other_than_plain_numbers_are_refused(tmp_path, obj, message):
    bins = pair_images(1)[1]
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps((bins, obj), protocol=2))
    with pytest.raises(ValueError, match=message):
        load_verification_bin(path)


def test_codecs_encode_only_as_latin1(tmp_path):
    class Rot13:
        def __reduce__(self):
            import _codecs

            return _codecs.encode, ("uryyb", "rot13")

    path = tmp_path / "codec.bin"
    path.write_bytes(pickle.dumps(([Rot13()], []), protocol=2))
    with pytest.raises(ValueError, match="latin1"):
        load_verification_bin(path)


def test_counts_that_disagree_name_both(tmp_path):
    _, bins, issame = pair_images(2)
    path = write_bin(tmp_path / "lfw.bin", bins[:3], issame, "python2")
    with pytest.raises(ValueError, match=r"lfw\.bin: 2 pair labels need 4 images.*holds 3"):
        load_verification_bin(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a pickle at all", "not a readable verification .bin"),
        (pickle.dumps({"bins": []}), r"expected the pair \(images, issame\), got a dict"),
        (pickle.dumps(([b"x", b"y"], [2])), "0/1 or bools, got 2 at pair 0"),
        (pickle.dumps(([b"x", "y"], [True])), "image 1 must be encoded image bytes, got str"),
        (pickle.dumps(([], [])), "holds no pairs"),
        (pickle.dumps(([b"x", b"y"], [True]))[:-5], "not a readable"),
    ],
)
def test_malformed_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_verification_bin(path)
    assert "bad.bin" in str(info.value)


def test_undecodable_image_names_file_and_index(tmp_path):
    _, bins, issame = pair_images(2)
    bins[2] = b"\x00garbage"
    with pytest.raises(ImageDecodeError, match=r"lfw\.bin: image 2 cannot be decoded"):
        VerificationBin(write_bin(tmp_path / "lfw.bin", bins, issame))


def test_truncated_image_fails_at_decoding_with_its_index(tmp_path):
    """A readable header with missing pixel data passes the scan and fails when decoded."""
    _, bins, issame = pair_images(2, size=64, fmt="JPEG")
    bins[3] = bins[3][: len(bins[3]) // 2]
    ds = VerificationBin(write_bin(tmp_path / "lfw.bin", bins, issame))
    ds[2]
    with pytest.raises(ImageDecodeError, match=r"lfw\.bin: image 3 cannot be decoded"):
        ds[3]


def test_mixed_sizes_need_image_size(tmp_path):
    _, bins, issame = pair_images(2, size=16)
    bins[1] = encode(np.zeros((20, 18, 3), np.uint8))
    path = write_bin(tmp_path / "cplfw.bin", bins, issame)
    with pytest.raises(ValueError, match=r"image 1 is 20x18 \(HxW\) while image 0 is 16x16"):
        VerificationBin(path)
    images, _ = load_verification_bin(path, image_size=16)
    assert images.shape == (4, 3, 16, 16) and int(images[1].max()) == 0
    assert load_verification_bin(path, image_size=(8, 12))[0].shape == (4, 3, 8, 12)


def test_dataset_interface(tmp_path):
    _, bins, issame = pair_images(3)
    ds = VerificationBin(write_bin(tmp_path / "lfw.bin", bins, issame), name="LFW")
    assert len(ds) == 6 and ds.num_pairs == 3 and ds.name == "LFW"
    assert repr(ds) == "VerificationBin(name='LFW', pairs=3, image_size=(16, 16))"
    assert ds.encoded(4) == bins[4]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch.shape == (4, 3, 16, 16) and torch.equal(batch, ds.images()[:4])
    with pytest.raises(ValueError, match="image_size"):
        VerificationBin(tmp_path / "lfw.bin", image_size=0)


@given(
    labels=st.lists(st.booleans(), min_size=1, max_size=6),
    layout=st.sampled_from(LAYOUTS),
    big=st.booleans(),
)
def test_layouts_round_trip_any_labels(tmp_path_factory, labels, layout, big):
    size = 24 if big else 2  # PNGs over and under 256 bytes (BINSTRING / SHORT_BINSTRING)
    rng = np.random.default_rng(len(labels))
    bins = [encode(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in labels * 2]
    path = write_bin(tmp_path_factory.mktemp("bin") / "x.bin", bins, labels, layout)
    ds = VerificationBin(path)
    assert ds.issame.tolist() == labels
    assert [ds.encoded(i) for i in range(len(ds))] == bins


@given(
    cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    layout=st.sampled_from(LAYOUTS),
)
def test_corrupted_files_fail_with_a_named_error(tmp_path_factory, cuts, layout):
    """Any byte of any layout overwritten: the load either succeeds or raises ValueError /
    ImageDecodeError naming the file, never another exception."""
    _, bins, issame = pair_images(2, size=4)
    path = write_bin(tmp_path_factory.mktemp("bin") / "x.bin", bins, issame, layout)
    data = bytearray(path.read_bytes())
    for position, value in cuts:
        data[position % len(data)] = value
    path.write_bytes(bytes(data))
    try:
        load_verification_bin(path)
    except (ValueError, ImageDecodeError) as exc:
        assert "x.bin" in str(exc)


@pytest.mark.parametrize(
    "payload",
    [
        # BUILD with a slot state on the numpy.ndarray stand-in: setattr(ndarray, "pwn", 1)
        b"\x80\x02cnumpy\nndarray\nN}X\x03\x00\x00\x00pwnq\x01K\x01s\x86b.",
        # BUILD on the _codecs.encode stand-in: replace its default encoding
        b"\x80\x02c_codecs\nencode\nN}X\x0c\x00\x00\x00__defaults__(X\x06\x00\x00\x00latin1tq\x01s\x86b.",
    ],
)
def test_a_pickle_cannot_change_what_later_loads_admit(tmp_path, payload):
    # the admitted stand-ins are shared by every load in the process: a file must not be
    # able to set their attributes
    path = tmp_path / "evil.bin"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="is not admitted"):
        load_verification_bin(path)
    from metricface.data import verification_bin as vb

    assert not hasattr(vb._NDArrayType, "pwn")
    assert vb._ALLOWED[("_codecs", "encode")]._function.__defaults__ == ("utf-8",)
