"""Reading InsightFace RecordIO packs: raw record rate vs JPEG decode rate, and index loading.

1. Read rate. Renders ``--images`` faces with :class:`metricface.data.SyntheticFaces` (112x112),
   adds sensor-like noise (sigma 4) so the JPEGs (Pillow, quality 95) have the size of real
   aligned crops (about 6-7 KB), and writes them as a pack. Then, in one shuffled order over
   the warm page cache (what a training epoch sees), times

   * ``RecordFaces.raw(i)``: the record read (two ``pread`` calls) and its parse;
   * ``RecordFaces[i]``: the same plus decoding with Pillow into a ``(3, H, W)`` tensor;
   * ``torchvision.io.decode_jpeg`` alone on the same bytes already in memory (the peer
     decoder), and the largest pixel difference between the two decoders.

   The pack never limits the loader when ``raw`` is several times faster than either decode.

2. Index load. Writes a pack of ``--index-records`` tiny records (the header scan reads 36
   bytes of each record whatever its size) and its ``.idx``, then times ``RecordFaces(...)``
   (first call: the index parse and the scan of every record header; timed without
   ``tracemalloc``, then measured with it in a second call) and its retained memory (the NumPy
   arrays) against the peer: the index as MXNet's ``MXIndexedRecordIO`` holds it (a
   dict built line by line; time and ``tracemalloc`` memory) and ``np.loadtxt`` on the same
   file. With a real pack on a cold disk the scan is bound by reading one page per record.

    python benchmarks/bench_records.py [--quick] [--images N] [--index-records N]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.io import decode_jpeg

from metricface.data import RecordFaces, SyntheticFaces, write_record_pack


def make_jpegs(n: int, size: int, seed: int = 0) -> list[tuple[bytes, int]]:
    per = 20
    faces = SyntheticFaces(-(-n // per), per, image_size=size, seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image, label = faces[i]
        pixels = image.permute(1, 2, 0).numpy().astype(np.float32)
        pixels += rng.normal(0, 4, pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=95)
        out.append((buffer.getvalue(), label))
    return out


def rate(fn, order, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in order:
            fn(i)
        best = min(best, time.perf_counter() - t0)
    return len(order) / best


def read_rates(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        items = make_jpegs(args.images, args.size)
        sizes = np.array([len(d) for d, _ in items])
        print(
            f"rendered {len(items)} JPEGs in {time.perf_counter() - t0:.1f} s, mean size "
            f"{sizes.mean() / 1024:.1f} KB (min {sizes.min()}, max {sizes.max()} bytes)"
        )
        rec = Path(tmp) / "train.rec"
        t0 = time.perf_counter()
        write_record_pack(rec, items)
        write_s = time.perf_counter() - t0
        ds = RecordFaces(rec)
        order = np.random.default_rng(1).permutation(len(ds)).tolist()
        blobs = [ds.raw(i)[0] for i in range(len(ds))]  # also warms the page cache
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        diff = max(
            int((ds[i][0].int() - decode_jpeg(tensors[i]).int()).abs().max())
            for i in range(0, len(ds), max(len(ds) // 50, 1))
        )
        raw = rate(ds.raw, order, args.repeats)
        pil = rate(ds.__getitem__, order, args.repeats)
        tv = rate(lambda i: decode_jpeg(tensors[i]), order, args.repeats)
        print(f"\npack write: {len(items) / write_s:,.0f} images/s ({write_s:.2f} s)")
        print(
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"threads {torch.get_num_threads()}"
        )
        print("| case | records or images / s | raw read / this |")
        print("|---|---|---|")
        print(f"| RecordFaces.raw (pread + parse) | {raw:,.0f} | 1.0 |")
        print(f"| RecordFaces[i] (raw + Pillow decode) | {pil:,.0f} | {raw / pil:.1f} |")
        print(
            f"| torchvision.io.decode_jpeg alone (bytes in memory) | {tv:,.0f} | {raw / tv:.1f} |"
        )
        print(f"\nlargest pixel difference Pillow vs torchvision decode: {diff}")


def synthetic_pack(folder: Path, n: int) -> Path:
    """``n`` 36-byte records (flag 0, scalar label, 4 image bytes) and their index."""
    record = np.dtype([("magic", "<u4"), ("lrec", "<u4"), ("flag", "<u4"), ("label", "<f4"),
                       ("id", "<u8"), ("id2", "<u8"), ("image", "<u4")])  # fmt: skip
    data = np.zeros(n, record)
    data["magic"], data["lrec"] = 0xCED7230A, 28
    data["label"] = np.arange(n) // 60
    data["id"] = np.arange(n)
    data["image"] = 0xD9FFD8FF
    rec = folder / "train.rec"
    data.tofile(rec)
    offsets = np.arange(n, dtype=np.int64) * record.itemsize
    text = "\n".join(f"{k}\t{o}" for k, o in zip(range(n), offsets.tolist())) + "\n"
    rec.with_suffix(".idx").write_text(text)
    return rec


def mxnet_style_index(path: Path) -> dict[int, int]:
    """How ``mxnet.recordio.MXIndexedRecordIO`` loads an ``.idx``: a dict, line by line."""
    idx = {}
    with open(path) as f:
        for line in f:
            key, pos = line.strip().split("\t")
            idx[int(key)] = int(pos)
    return idx


def measure(fn):
    """(result, seconds, retained MB, peak MB): timed untraced, memory from a traced rerun."""
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    del out
    tracemalloc.start()
    out = fn()
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, seconds, retained / 2**20, peak / 2**20


def index_load(args) -> None:
    n = args.index_records
    with tempfile.TemporaryDirectory() as tmp:
        rec = synthetic_pack(Path(tmp), n)
        idx = rec.with_suffix(".idx")
        print(
            f"\nindex: {n:,} records, .idx {idx.stat().st_size / 2**20:.0f} MB, "
            f".rec {rec.stat().st_size / 2**20:.0f} MB (warm page cache)"
        )
        ds, ours_s, ours_mb, ours_peak = measure(lambda: RecordFaces(rec))
        arrays = (ds.keys.nbytes + ds.offsets.nbytes + ds.labels.nbytes) / 2**20
        assert len(ds) == n and ds.labels[-1] == (n - 1) // 60
        del ds
        peer, peer_s, peer_mb, peer_peak = measure(lambda: mxnet_style_index(idx))
        assert len(peer) == n
        del peer
        print("| case | time s | retained MB | peak MB |")
        print("|---|---|---|---|")
        print(
            f"| RecordFaces(rec): index + header scan + labels | {ours_s:.2f} | {ours_mb:.0f} "
            f"(arrays {arrays:.0f}) | {ours_peak:.0f} |"
        )
        print(
            f"| MXIndexedRecordIO-style dict, offsets only | {peer_s:.2f} | {peer_mb:.0f} | "
            f"{peer_peak:.0f} |"
        )
        if not args.skip_loadtxt:
            _, lt_s, lt_mb, lt_peak = measure(lambda: np.loadtxt(idx, dtype=np.int64))
            print(f"| np.loadtxt(idx), offsets only | {lt_s:.2f} | {lt_mb:.0f} | {lt_peak:.0f} |")
        print(
            f"\nratio time ours/dict: {ours_s / peer_s:.2f}; retained memory ours/dict: "
            f"{ours_mb / peer_mb:.2f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--index-records", type=int, default=5_800_000)
    p.add_argument("--skip-loadtxt", action="store_true", help="np.loadtxt takes long at 5.8M")
    p.add_argument("--device", default="cpu", help="accepted for a uniform command line")
    p.add_argument("--quick", action="store_true", help="500 images, 200,000 index records")
    args = p.parse_args()
    if args.quick:
        args.images, args.index_records = 500, 200_000
    print(f"pid {os.getpid()}, cpu count {os.cpu_count()}")
    read_rates(args)
    index_load(args)


if __name__ == "__main__":
    main()
