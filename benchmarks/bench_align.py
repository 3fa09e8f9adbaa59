"""Face alignment throughput: metricface's align_face against a per-image PIL affine warp.

Source images are ``--image-size`` square uint8 RGB photos (VGGFace2's loose crops are a few
hundred pixels a side) with the face at a random similarity (scale 1.6-2.4, rotation +-25
degrees) of the 112x112 template; as in real loose crops, the aligned crop of a large face
reaches beyond the photo. Every case includes the similarity fit from the 5 landmarks, as a
user pays it.

Cases, each timed over the same ``--images`` photos (best of ``--repeats`` passes):

* ``single numpy``: ``align_face((H, W, 3) array, landmarks)``, one image per call;
* ``single PIL``: ``align_face(PIL image, landmarks)``;
* ``JPEG decode + align + encode``: the work of ``python -m metricface align`` per file (from
  and to bytes in memory, quality 95);
* ``batch tensor``: ``align_face((B, 3, H, W) tensor, (B, 5, 2))``, ``--batch`` images per call,
  on ``--device``;
* ``estimate only``: ``estimate_similarity`` on all landmark sets at once;
* ``read landmark CSV``: ``read_vggface2_landmarks`` on a generated file of ``--csv-rows`` rows
  in VGGFace2's layout (3.1 million in the real training file), timed once, with its peak memory.

The peer, in the same run: the similarity fitted with ``numpy.linalg.lstsq`` (the 4-parameter
linear least squares, per image) and ``PIL.Image.transform(..., Image.AFFINE, ..., BILINEAR)``
with the pixel-centre conversion, per image; for ``estimate only``, the same ``lstsq`` fit in a
loop; for the CSV, the ``csv`` module with ``float()`` per field (each in its own process for the
memory figure). OpenCV (``estimateAffinePartial2D`` + ``warpAffine``) and scikit-image
(``SimilarityTransform`` + ``warp``) are added when they are importable. The ``agreement``
column compares the crops with ours on the pixels whose sample lies at least one pixel inside
the photo (beyond, PIL repeats the edge pixel where ours blends with black); PIL's bilinear
filter truncates instead of rounding, so its crops are on average half a grey level darker.

    python benchmarks/bench_align.py [--device cpu|cuda] [--images 400] [--batch 256] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metricface.data import (
    ARCFACE_TEMPLATE,
    align_face,
    estimate_similarity,
    read_vggface2_landmarks,
)


def make_photos(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, size, size, 3)`` uint8 photos and ``(n, 5, 2)`` landmarks of a face in each."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, size // 8 + 1, size // 8 + 1, 3), dtype=np.uint8)
    photos = np.stack(
        [np.asarray(Image.fromarray(s).resize((size, size), Image.BICUBIC)) for s in small]
    )
    photos = np.clip(photos.astype(np.int16) + rng.integers(-12, 13, photos.shape), 0, 255)
    landmarks = []
    for _ in range(n):
        scale, angle = rng.uniform(1.6, 2.4), rng.uniform(-0.44, 0.44)
        c, s = scale * math.cos(angle), scale * math.sin(angle)
        centred = (ARCFACE_TEMPLATE - 55.5) @ np.array([[c, s], [-s, c]])
        reach = 55.5 * scale * math.sqrt(2)  # the crop's corners: inside if the face is small
        margin = max(size - 1 - 2 * reach, 0.0) / 2
        centre = (size - 1) / 2 + rng.uniform(-margin, margin, 2)
        landmarks.append(centred + centre)
    return photos.astype(np.uint8), np.array(landmarks)


def lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    x, y = src[:, 0], src[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    design = np.empty((10, 4))
    design[0::2] = np.stack([x, -y, one, zero], axis=1)
    design[1::2] = np.stack([y, x, zero, one], axis=1)
    a, b, tx, ty = np.linalg.lstsq(design, dst.reshape(-1), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def pil_align(image: Image.Image, landmarks: np.ndarray, size: int = 112) -> Image.Image:
    """The peer: lstsq fit + PIL's affine warp (PIL maps output to input in corner coordinates)."""
    m = lstsq_similarity(landmarks, ARCFACE_TEMPLATE * 1.0)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    shift = inv[:, 2] + 0.5 - inv[:, :2] @ [0.5, 0.5]  # pixel centres -> PIL's pixel corners
    data = (inv[0, 0], inv[0, 1], shift[0], inv[1, 0], inv[1, 1], shift[1])
    return image.transform((size, size), Image.AFFINE, data, resample=Image.BILINEAR)


def optional_peers() -> dict:
    peers = {}
    try:
        import cv2

        def cv2_align(array, landmarks):
            m, _ = cv2.estimateAffinePartial2D(landmarks, ARCFACE_TEMPLATE, method=cv2.LMEDS)
            return cv2.warpAffine(array, m, (112, 112), borderValue=0.0)

        peers["OpenCV"] = cv2_align
    except ImportError:
        pass
    try:
        from skimage.transform import SimilarityTransform, warp

        def skimage_align(array, landmarks):
            tform = SimilarityTransform()
            tform.estimate(landmarks, ARCFACE_TEMPLATE)
            out = warp(array, tform.inverse, output_shape=(112, 112), order=1, preserve_range=True)
            return out.round().astype(np.uint8)

        peers["scikit-image"] = skimage_align
    except ImportError:
        pass
    return peers


def best(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and process-CPU seconds of ``fn()`` over ``repeats`` calls."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def agreement(ours, peer, landmarks, image_size: int) -> str:
    """Peer minus ours on the output pixels that sample at least 1 pixel inside the photo."""
    v, u = np.mgrid[:112, :112].astype(np.float64)
    diffs = []
    for o, p, lm in zip(ours, peer, landmarks):
        m = np.vstack([estimate_similarity(lm, ARCFACE_TEMPLATE), [0, 0, 1]])
        inv = np.linalg.inv(m)
        sx, sy = (
            inv[0, 0] * u + inv[0, 1] * v + inv[0, 2],
            inv[1, 0] * u + inv[1, 1] * v + inv[1, 2],
        )
        inside = (sx >= 1) & (sy >= 1) & (sx <= image_size - 2) & (sy <= image_size - 2)
        diffs.append((p.astype(np.int16) - o)[inside].ravel())
    diff = np.concatenate(diffs)
    return f"peer-ours mean {diff.mean():+.2f}, in {{-1, 0}}: {100 * np.isin(diff, (-1, 0)).mean():.2f}%"


def write_csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        f.write('"NAME_ID","P1X","P1Y","P2X","P2Y","P3X","P3Y","P4X","P4Y","P5X","P5Y"\n')
        for start in range(0, rows, 100_000):
            values = rng.uniform(0, 300, (min(100_000, rows - start), 10))
            f.writelines(
                f'"n{(start + i) // 360:06d}/{(start + i) % 360:04d}_01",'
                + ",".join(f"{v:.5g}" for v in row)
                + "\n"
                for i, row in enumerate(values)
            )


def csv_module_reader(path: Path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        names, points = [], []
        for row in reader:
            names.append(row[0])
            points.append([float(v) for v in row[1:]])
    return names, np.array(points, np.float32).reshape(-1, 5, 2)


def _memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB (Linux; ru_maxrss elsewhere,
    which a spawned child may inherit from its parent)."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(field + ":"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_read(which: str, path: str, queue) -> None:
    before = _memory_mb("VmRSS")
    start = time.perf_counter()
    n = len((read_vggface2_landmarks if which == "ours" else csv_module_reader)(Path(path))[0])
    queue.put((time.perf_counter() - start, _memory_mb("VmHWM") - before, n))


def read_in_process(which: str, path: Path) -> tuple[float, float, int]:
    """Seconds, peak resident-memory growth (MB) and rows of one read in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_timed_read, args=(which, str(path), queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--csv-rows", type=int, default=200_000, help="rows of the landmark CSV case")
    p.add_argument("--quick", action="store_true", help="60 images, batch 32, 1 repeat")
    args = p.parse_args()
    if args.quick:
        args.images, args.batch, args.repeats, args.csv_rows = 60, 32, 1, 20_000
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    torch.set_num_threads(args.threads)

    photos, landmarks = make_photos(args.images, args.image_size)
    pils = [Image.fromarray(a) for a in photos]
    w0 = time.perf_counter()
    align_face(photos[0], landmarks[0])
    first = time.perf_counter() - w0
    print(
        f"torch {torch.__version__}, {args.images} photos {args.image_size}x{args.image_size}, "
        f"device {args.device}, {args.threads} torch thread(s); first align_face call "
        f"{1000 * first:.1f} ms (included nowhere below)"
    )
    print(
        "| case | metricface img/s | peer | peer img/s | ratio (our time / peer's) | CPU-time ratio | agreement |"
    )
    print("|---|---|---|---|---|---|---|")

    def row(case, ours_fn, peer_name, peer_fn, n, note=""):
        ow, oc = best(ours_fn, args.repeats)
        pw, pc = best(peer_fn, args.repeats)
        print(
            f"| {case} | {n / ow:,.0f} | {peer_name} | {n / pw:,.0f} | {ow / pw:.2f} | "
            f"{oc / pc:.2f} | {note} |",
            flush=True,
        )

    ours_crops = [align_face(a, lm) for a, lm in zip(photos, landmarks)]
    peer_crops = [np.asarray(pil_align(im, lm)) for im, lm in zip(pils, landmarks)]
    row(
        "single numpy (H, W, 3)",
        lambda: [align_face(a, lm) for a, lm in zip(photos, landmarks)],
        "PIL transform",
        lambda: [np.asarray(pil_align(Image.fromarray(a), lm)) for a, lm in zip(photos, landmarks)],
        args.images,
        agreement(ours_crops, peer_crops, landmarks, args.image_size),
    )
    row(
        "single PIL image",
        lambda: [align_face(im, lm) for im, lm in zip(pils, landmarks)],
        "PIL transform",
        lambda: [pil_align(im, lm) for im, lm in zip(pils, landmarks)],
        args.images,
    )
    for name, fn in optional_peers().items():
        peer = [fn(a, lm) for a, lm in zip(photos, landmarks)]
        row(
            "single numpy (H, W, 3)",
            lambda: [align_face(a, lm) for a, lm in zip(photos, landmarks)],
            name,
            lambda fn=fn: [fn(a, lm) for a, lm in zip(photos, landmarks)],
            args.images,
            agreement(ours_crops, peer, landmarks, args.image_size),
        )

    jpegs = []
    for a in photos:
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="JPEG", quality=95)
        jpegs.append(buffer.getvalue())

    def per_file(align):  # what the align tool does per file: decode, align, encode
        def run(data: bytes, points: np.ndarray) -> bytes:
            with Image.open(io.BytesIO(data)) as image:
                crop = align(image.convert("RGB"), points)
            out = io.BytesIO()
            crop.save(out, format="JPEG", quality=95)
            return out.getvalue()

        return run

    ours_file = per_file(lambda im, lm: Image.fromarray(align_face(np.asarray(im), lm)))
    peer_file = per_file(pil_align)
    row(
        "JPEG decode + align + encode",
        lambda: [ours_file(j, lm) for j, lm in zip(jpegs, landmarks)],
        "PIL",
        lambda: [peer_file(j, lm) for j, lm in zip(jpegs, landmarks)],
        args.images,
    )

    device = torch.device(args.device)
    tensor = torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous().to(device)
    points = torch.from_numpy(landmarks).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def batched():
        for i in range(0, args.images, args.batch):
            align_face(tensor[i : i + args.batch], points[i : i + args.batch])
        sync()

    batched()  # warm-up
    row(
        f"batch tensor B={args.batch} ({args.device})",
        batched,
        "PIL transform",
        lambda: [pil_align(im, lm) for im, lm in zip(pils, landmarks)],
        args.images,
    )
    many = np.concatenate([landmarks] * max(1, 20_000 // args.images))
    row(
        f"estimate only, {len(many):,} sets",
        lambda: estimate_similarity(many, ARCFACE_TEMPLATE),
        "lstsq loop",
        lambda: [lstsq_similarity(lm, ARCFACE_TEMPLATE) for lm in many],
        len(many),
    )
    if args.csv_rows:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "loose_landmark_train.csv"
            write_csv(path, args.csv_rows)
            ours_s, ours_mb, n = read_in_process("ours", path)
            peer_s, peer_mb, _ = read_in_process("peer", path)
        print(
            f"| read landmark CSV, {n:,} rows | {n / ours_s:,.0f} rows/s ({ours_mb:,.0f} MB) | "
            f"csv module | {n / peer_s:,.0f} rows/s ({peer_mb:,.0f} MB) | {ours_s / peer_s:.2f} | "
            f"- | {ours_s:.1f} s vs {peer_s:.1f} s, one read each |"
        )


if __name__ == "__main__":
    main()
