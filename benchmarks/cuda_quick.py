"""The headline CUDA figures of metricface in one short run (``run_cuda.sh --quick``).

``bash benchmarks/run_cuda.sh --quick OUTDIR`` runs each part below in a process of its own
under its own time limit. A part appends its rows to the markdown table ``OUTDIR/results.md``
the moment it has measured them, so a part stopped at its limit keeps what it had measured.
Each part is one function here and reuses the topic benchmarks' code; one part runs as::

    python benchmarks/cuda_quick.py PART --table OUTDIR/results.md [--dry-run] [--limit S]

``tests``
    ``pytest -m cuda``: passed, failed and skipped counts and the time, collection included.
``arcface``
    ArcFace forward + backward time and peak memory against pytorch-metric-learning's
    ``ArcFaceLoss`` at B=512, D=512, C=100k in float32, for the dense ``ArcFaceLoss`` and the
    chunked ``PartialFCLoss`` (``bench_margin_losses.measure_time``).
``largest_c``
    The largest class count whose class centers train on the card (forward, backward and an
    SGD step with momentum, at B=512, D=512): the chunked ``PartialFCLoss`` against PML's dense
    ``ArcFaceLoss``. Two small trials give the affine memory model, a trial aims at the card's
    free memory, and bisection narrows the bracket while the part's time lasts
    (``bench_partial_fc.train_trial``).
``all_pairs``
    ``all_pairs_histogram`` of 1e5 embeddings (5e9 pairs), then ours against materialising
    every pair at 2e4 embeddings (``bench_metrics.bench_all_pairs``).
``eer``
    ``equal_error_rate`` of 1e8 continuous float32 scores given as CUDA tensors (the first call
    in the process), then ours against scikit-learn ``roc_curve`` + ``brentq`` with the same
    scores as numpy arrays on the CPU at 1e7 and 1e8.
``training``
    IResNet-50 at 112x112, batch 256, bf16 autocast, channels_last: training images/s and
    MFU, eager and then ``torch.compile``-d; the peak is a bf16 matrix product measured in the
    same run and the FLOPs come from ``metricface.backbones.profile``
    (``bench_backbones.train_step``).

``--dry-run`` runs every part on the CPU at tiny sizes: a check of the script (arguments, the
table, the time limits), not a measurement. ``--stall`` (for testing the time limits) makes a
part write one row and then wait until its limit stops it.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

PARTS = ("tests", "arcface", "largest_c", "all_pairs", "eer", "training")
COLUMNS = ("part", "figure", "metricface", "peer", "ratio", "notes")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of every part: real ones for a GPU, tiny ones for a dry run."""

    tests: tuple[str, ...]
    arc_bdc: tuple[int, int, int]
    arc_repeats: int
    cls_bd: tuple[int, int]
    cls_chunk: int
    cls_first: dict  # method -> class count of the first trial
    cls_unit: int  # class counts are multiples of this
    cls_tol: float  # stop when the bracket is this narrow (relative)
    cls_budget: int | None  # bytes; None: the card's free memory
    pairs_n: int
    pairs_peer_n: int
    pairs_dim: int
    bins: int
    eer_n: int
    eer_peer_ns: tuple[int, ...]
    net: str
    net_kw: dict
    image: int
    batch: int
    warmup: int
    steps: int
    repeats: int
    matmul: int
    compile: bool


GPU = Sizes(
    tests=("tests",),
    arc_bdc=(512, 512, 100_000),
    arc_repeats=10,
    cls_bd=(512, 512),
    cls_chunk=32768,
    cls_first={"chunked": 250_000, "pml": 100_000},
    cls_unit=1000,
    cls_tol=0.005,
    cls_budget=None,
    pairs_n=100_000,
    pairs_peer_n=20_000,
    pairs_dim=512,
    bins=2000,
    eer_n=10**8,
    eer_peer_ns=(10**7, 10**8),
    net="iresnet50",
    net_kw={},
    image=112,
    batch=256,
    warmup=3,
    steps=20,
    repeats=3,
    matmul=8192,
    compile=True,
)
DRY = Sizes(
    tests=("tests/metrics/test_histogram.py",),
    arc_bdc=(32, 32, 2000),
    arc_repeats=1,
    cls_bd=(16, 32),
    cls_chunk=1024,
    cls_first={"chunked": 2000, "pml": 1000},
    cls_unit=100,
    cls_tol=0.2,
    cls_budget=4 * 2**20,
    pairs_n=1500,
    pairs_peer_n=600,
    pairs_dim=32,
    bins=200,
    eer_n=200_000,
    eer_peer_ns=(100_000, 200_000),
    net="iresnet18",
    net_kw={"width": 0.125},
    image=32,
    batch=4,
    warmup=1,
    steps=1,
    repeats=1,
    matmul=256,
    compile=False,
)


class Part:
    """One part's context: its name, its rows' file, its device and sizes, its deadline."""

    def __init__(self, name: str, table: str, dry: bool, limit: float) -> None:
        self.name = name
        self.table = table
        self.dry = dry
        self.sizes = DRY if dry else GPU
        self.device = "cpu" if dry else "cuda"
        self.deadline = time.monotonic() + limit

    def left(self) -> float:
        """Seconds until the part's time limit."""
        return self.deadline - time.monotonic()

    def row(
        self, figure: str, ours: str, peer: str = "-", ratio: str = "-", notes: str = ""
    ) -> None:
        """Append one row to the table now (and echo it to the log)."""
        append_row(self.table, [self.name, figure, ours, peer, ratio, notes])


def append_row(table: str, cells: list[str]) -> None:
    """Append a markdown table row, flushed to disk at once."""
    line = "| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |\n"
    with open(table, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    print(line, end="", flush=True)


def have(module: str) -> bool:
    """Whether ``module`` is installed (found on the path, not imported)."""
    return importlib.util.find_spec(module) is not None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _secs(t: float) -> str:
    return f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.1f} ms"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else _mib(n)


def _count(c: float) -> str:
    if c >= 1e6:
        return f"{c / 1e6:.2f}M"
    return f"{c / 1e3:.0f}k" if c >= 1e4 else f"{c:.0f}"


def _free_memory(device: str) -> None:
    """Give the device's cached blocks back (CUDA; a CPU tensor is freed with its last use)."""
    import torch

    if device == "cuda":
        gc.collect()  # e.g. an out-of-memory traceback's frames
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------- header
NEEDED = (  # (module, distribution) the parts import
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("numpy", "numpy"),
    ("scipy", "scipy"),
    ("sklearn", "scikit-learn"),
    ("pytorch_metric_learning", "pytorch-metric-learning"),
    ("pytest", "pytest"),
    ("hypothesis", "hypothesis"),
    ("metricface", "metricface"),
)


def missing_packages() -> list[str]:
    """The distributions of :data:`NEEDED` whose module fails to import."""
    out = []
    for module, dist in NEEDED:
        try:
            importlib.import_module(module)
        except Exception as e:
            print(f"import {module}: {type(e).__name__}: {e}", file=sys.stderr)
            out.append(dist)
    return out


def write_header(table: str, dry: bool, command: str, commit: str, note: str) -> int:
    """Start the table file: the run's device, versions and date, then the column header."""
    import torch

    if not dry and not torch.cuda.is_available():
        print("error: --quick needs a CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    now = datetime.datetime.now(datetime.timezone.utc)
    if dry:
        from bench_backbones import cpu_model

        title = "DRY RUN on the CPU (tiny sizes: checks the script, measures nothing)"
        device = f"CPU {cpu_model()}, {os.cpu_count()} cores, no CUDA"
    else:
        props = torch.cuda.get_device_properties(0)
        title = props.name
        device = (
            f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
            f"{props.multi_processor_count} SMs, compute capability {props.major}.{props.minor}, "
            f"driver {_driver_version()}; host: {os.cpu_count()} CPU cores"
        )
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    versions = ", ".join(
        f"{name} {_version(dist)}"
        for name, dist in (
            ("numpy", "numpy"),
            ("scikit-learn", "scikit-learn"),
            ("pytorch-metric-learning", "pytorch-metric-learning"),
        )
    )
    import metricface

    lines = [
        f"## quick CUDA run — {title} — {now:%Y-%m-%d}",
        f"command: `{command}`",
        f"device: {device}",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}; "
        f"Python {platform.python_version()}; metricface {metricface.__version__} "
        f"(commit {commit}); {versions}",
        f"date: {now:%Y-%m-%d %H:%M} UTC",
    ]
    if note:
        lines.append(note)
    lines += [
        "",
        "Each part ran in its own process under its own time limit and wrote its rows as it "
        "measured them (a part stopped at its limit keeps the rows before the cut). Ratio = "
        "metricface / peer, measured in the same run (below 1: metricface is faster or "
        "smaller). Raw logs: one per part beside this file.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    with open(table, "x", encoding="utf-8") as fh:  # never overwrite an earlier run
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0


# --------------------------------------------------------------------------------- parts
def part_tests(p: Part) -> int:
    """``pytest -m cuda``, in this process; one row with the outcome counts."""
    if not have("pytest"):
        p.row("pytest -m cuda", "not run", notes="pytest is not installed")
        return 1
    import pytest

    class Outcomes:
        def __init__(self) -> None:
            self.stats: dict = {}

        def pytest_terminal_summary(self, terminalreporter) -> None:
            self.stats = {k: v for k, v in terminalreporter.stats.items() if k}

    outcomes = Outcomes()
    t0 = time.perf_counter()
    code = pytest.main(
        ["-m", "cuda", "-q", "-p", "no:cacheprovider", *p.sizes.tests], plugins=[outcomes]
    )
    took = time.perf_counter() - t0
    n = {k: len(v) for k, v in outcomes.stats.items()}
    failed = [r.nodeid for r in outcomes.stats.get("failed", []) + outcomes.stats.get("error", [])]
    counts = f"{n.get('passed', 0)} passed, {len(failed)} failed, {n.get('skipped', 0)} skipped"
    notes = f"{took:.1f} s with collection, pytest exit {int(code)}"
    notes += f"; {n.get('deselected', 0)} tests without the cuda mark deselected"
    if failed:
        notes += "; failed: " + ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
    p.row("pytest -m cuda " + " ".join(p.sizes.tests), counts, notes=notes)
    return 0 if int(code) in (0, 5) and not failed else 1


def part_arcface(p: Part) -> int:
    """ArcFace forward + backward against PML: dense and chunked, time and peak memory."""
    import torch
    from bench_margin_losses import measure_memory, measure_time

    b, d, c = p.sizes.arc_bdc
    libs = ["metricface", "pml"] if have("pytorch_metric_learning") else ["metricface"]
    size = f"B={b}, D={d}, C={_count(c)}, fp32"
    for loss, label in (
        ("arcface", "ArcFaceLoss"),
        ("arcface_chunked", "PartialFCLoss(chunk_size=8192)"),
    ):
        try:
            r = measure_time(loss, libs, b, d, c, p.device, p.sizes.arc_repeats)
            mem = r.get("memory") or {  # CUDA: measured by measure_time; CPU: here
                lib: measure_memory(loss, lib, b, d, c, p.device) for lib in libs
            }
        except torch.OutOfMemoryError:
            p.row(f"{label} fwd+bwd, {size}", "OOM")
            _free_memory(p.device)
            continue
        t = r["time"]
        if "pml" in t:
            notes = (
                f"median of {p.sizes.arc_repeats} steps after a warm-up, interleaved; loss "
                f"{r['loss']['metricface']:.5f} vs {r['loss']['pml']:.5f}, largest embedding-"
                f"gradient difference {r['grad_diff']:.1e} (relative)"
            )
            p.row(
                f"{label} fwd+bwd time, {size}",
                _secs(t["metricface"]),
                _secs(t["pml"]),
                f"{t['metricface'] / t['pml']:.2f}",
                notes,
            )
        else:
            notes = "peer not installed (pytorch-metric-learning)"
            p.row(f"{label} fwd+bwd time, {size}", _secs(t["metricface"]), notes=notes)
        cells = [m["error"] if isinstance(m, dict) else _mib(m) for m in mem.values()]
        ratio = "-"
        if len(mem) == 2 and not any(isinstance(m, dict) for m in mem.values()):
            ratio = f"{mem['metricface'] / mem['pml']:.2f}" if mem["pml"] >= 2**20 else "-"
        what = "allocator peak" if p.device == "cuda" else "resident-set growth"
        p.row(
            f"{label} peak memory of one step, {size}",
            cells[0],
            cells[1] if len(cells) > 1 else "-",
            ratio,
            f"{what} beyond inputs and parameters",
        )
        _free_memory(p.device)
    return 0


def _next_probe(fits: int, fails: int | None, aim: float | None, step: int) -> int:
    """The next class count to try, given the bracket so far (see largest_that_trains).

    ``step`` counts the moves made since the first two trials: the first aims at ``aim``, the
    affine model's prediction; later ones step up 3 % until a failure; after the first failure
    one step of 3 % down (the model was near), then bisection.
    """
    if fails is None:
        if step == 0 and aim is not None and aim > fits:
            return int(aim)
        return int(fits * 1.03) if aim is not None else 2 * fits
    if fits == 0:
        return fails // 2
    if fits < 0.9 * fails and step <= 1:
        return int(fails * 0.97)
    return (fits + fails) // 2


def largest_that_trains(
    trial, first: int, unit: int, tol: float, capacity: float, deadline: float, device: str
) -> dict:
    """Bracket the largest class count ``C`` for which ``trial(C)`` trains.

    ``trial(C)`` returns ``{"peak": bytes, "time": s}``, or raises ``torch.OutOfMemoryError``
    (or returns a peak above ``capacity``) where ``C`` does not fit. Trials at ``first`` and
    ``2 * first`` give the affine memory model ``peak = a + s * C``; the next trial aims at 99 %
    of ``capacity`` by it; then the bracket ``[fits, fails)`` is narrowed (3 % steps up to a
    failure, one 3 % step down, then halving) to ``tol`` (relative) or ``unit``, or until the next trial would pass ``deadline``
    (``time.monotonic()``). Returns ``fits`` (the largest C that trained, or 0), its ``peak``,
    ``fails`` (the smallest C that did not, or None), the ``trials`` as ``(C, trained)`` and
    ``errors``: the messages of failures other than running out of memory (a trial that
    raises any ``RuntimeError`` did not train).
    """
    import torch

    fits, fits_peak, fails, trials, points, errors = 0, None, None, [], [], []
    aim, moves = None, 0
    probe, last = first, (first, 1.0)
    # a trial takes about as long per class as the last one did: stop before the deadline
    while probe and time.monotonic() + 1.5 * last[1] * probe / last[0] + 1.0 < deadline:
        t0 = time.monotonic()
        try:
            peak = trial(probe)["peak"]
            ok = peak <= capacity
        except (torch.OutOfMemoryError, MemoryError):
            peak, ok = None, False
        except RuntimeError as e:  # e.g. cuBLAS failing to get its workspace; kept for notes
            peak, ok = None, False
            if "ALLOC" not in str(e) and "out of memory" not in str(e):
                errors.append(f"C={probe:,}: {str(e).splitlines()[0][:160]}")
        _free_memory(device)
        last = (probe, time.monotonic() - t0)
        trials.append((probe, ok))
        shown = "-" if peak is None else f"{peak / 2**20:,.1f} MiB"
        print(f"  C={probe:,}: {'trains' if ok else 'does not fit'}, peak {shown}, "
              f"{last[1]:.1f} s", flush=True)  # fmt: skip
        if ok:
            if probe > fits:
                fits, fits_peak = probe, peak
            points.append((probe, peak))
            if len(points) == 2:  # the affine model from the first two that trained
                (c0, m0), (c1, m1) = points
                slope = (m1 - m0) / (c1 - c0)
                aim = c1 + (0.99 * capacity - m1) / slope if slope > 0 else None
        else:
            fails = probe if fails is None else min(fails, probe)
        if fails is not None and fails - fits <= max(unit, tol * fits):
            break
        nxt = max(unit, _next_probe(fits, fails, aim, moves) // unit * unit)
        if len(points) >= 2 or fails is not None:
            moves += 1
        if fails is not None:
            nxt = min(nxt, fails - unit)
        probe = nxt if nxt > fits else 0
    return {"fits": fits, "peak": fits_peak, "fails": fails, "trials": trials, "errors": errors}


def part_largest_c(p: Part) -> int:
    """Largest class count that trains: PML's dense ArcFaceLoss, then the chunked loss."""
    import torch
    from bench_partial_fc import train_trial

    b, d = p.sizes.cls_bd
    chunk = p.sizes.cls_chunk
    if p.device == "cuda":
        capacity = torch.cuda.mem_get_info()[0]
        where = f"{capacity / 2**30:.1f} GiB free on the card"
    else:
        capacity = p.sizes.cls_budget
        where = f"a budget of {capacity / 2**20:.0f} MiB of resident-set growth (dry run)"
        # glibc: serve (and give back) every block above 64 KiB with mmap, so that each
        # trial's VmHWM counts its own pages (M_MMAP_THRESHOLD is -3)
        ctypes.CDLL(None).mallopt(-3, 65536)
    methods = [("chunked", f"metricface PartialFCLoss(chunk_size={chunk})")]
    if have("pytorch_metric_learning"):
        methods.insert(0, ("pml", "PML ArcFaceLoss (dense)"))
    else:
        p.row("largest C that trains, PML ArcFaceLoss", "-", "not installed")
    found = {}
    for i, (method, label) in enumerate(methods):
        share = (p.left() - 3) / (len(methods) - i)  # the rest of the time, split evenly
        t0 = time.monotonic()
        # one-time costs (kernels, workspaces, lazy imports) are not the classes' memory
        train_trial(method, b, d, p.sizes.cls_unit, chunk, p.device)
        r = largest_that_trains(
            lambda c, m=method: train_trial(m, b, d, c, chunk, p.device),
            p.sizes.cls_first[method],
            p.sizes.cls_unit,
            p.sizes.cls_tol,
            capacity,
            time.monotonic() + share,
            p.device,
        )
        found[method] = r["fits"]
        peak = f" (peak {_size(r['peak'])})" if r["peak"] is not None else ""
        bracket = f"{_count(r['fails'])} fails" if r["fails"] else "no failing size reached"
        notes = (
            f"fits {r['fits']:,}{peak}, {bracket}; {len(r['trials'])} trials in "
            f"{time.monotonic() - t0:.0f} s, each 2 steps of fwd+bwd+SGD (momentum 0.9, "
            f"weight decay 5e-4, torch's default implementation); {where}; B={b}, D={d}, "
            "fp32 centers"
        )
        if r["errors"]:
            notes += "; not out of memory: " + "; ".join(r["errors"][:2])
        cell = _count(r["fits"]) if r["fits"] else "none fits"
        figure = f"largest C that trains, {label}"
        if method == "pml":
            p.row(figure, "-", cell, notes=notes)
        else:
            peer = found.get("pml")
            ratio = f"{r['fits'] / peer:.1f}" if peer else "-"
            notes += "; ratio: times as many classes as the peer"
            p.row(figure, cell, _count(peer) if peer else "-", ratio, notes)
    return 0


def part_all_pairs(p: Part) -> int:
    """All-pairs score histogram: 5e9 pairs alone, then against the peer at 2e8 pairs."""
    from bench_metrics import bench_all_pairs

    s = p.sizes
    r = bench_all_pairs(s.pairs_n, s.pairs_dim, s.bins, p.device, quick=True, peer_max=0)
    peak = f"; peak {r['peak_gib']:.2f} GiB beyond the inputs" if r["peak_gib"] else ""
    p.row(
        f"all_pairs_histogram, N={_count(s.pairs_n)}, D={s.pairs_dim} "
        f"({r['pairs']:.2e} pairs, {s.bins} bins)",
        _secs(r["ours"]),
        "-",
        "-",
        f"{r['pairs'] / r['ours']:.3g} pairs/s, one run after a warm-up on 1,000 embeddings"
        f"{peak}; the peer would hold every pair score (compared at a smaller N below)",
    )
    r = bench_all_pairs(s.pairs_peer_n, s.pairs_dim, s.bins, p.device, quick=True)
    p.row(
        f"all_pairs_histogram, N={_count(s.pairs_peer_n)}, D={s.pairs_dim} "
        f"({r['pairs']:.2e} pairs)",
        _secs(r["ours"]),
        _secs(r["peer"]),
        f"{r['ours'] / r['peer']:.3f}",
        "peer: the pair-score matrix on the device, then np.histogram of genuine and "
        f"impostor scores; {r['mismatch']} pairs binned differently (float32 rounding at "
        "edges)",
    )
    return 0


def part_eer(p: Part) -> int:
    """EER of 1e8 continuous scores: CUDA tensors, then numpy against scikit-learn."""
    import torch
    from bench_metrics import sklearn_eer, timed

    from metricface.metrics import equal_error_rate

    n = p.sizes.eer_n
    g = torch.Generator(device=p.device).manual_seed(0)
    y = torch.rand(n, generator=g, device=p.device) < 0.1
    s = torch.randn(n, generator=g, device=p.device).add_(y, alpha=2.0)  # continuous float32
    data = "continuous float32 scores, 10 % genuine: N(0, 1) impostor, N(2, 1) genuine"
    t_dev, eer_dev = timed(lambda: equal_error_rate(y, s), 1, p.device)
    notes = f"first call in the process; EER {eer_dev:.10f}; {data}"
    if t_dev < 5:
        t_warm, _ = timed(lambda: equal_error_rate(y, s), 2, p.device)
        notes += f"; warm: {_secs(t_warm)} (best of 2)"
    p.row(f"equal_error_rate, n={n:.0e}, {p.device} tensors", _secs(t_dev), notes=notes)
    y_np, s_np = y.cpu().numpy(), s.cpu().numpy()
    y = s = None  # free the device copies
    _free_memory(p.device)
    for m in p.sizes.eer_peer_ns:
        ym, sm = y_np[:m], s_np[:m]
        t_ours, eer_ours = timed(lambda ym=ym, sm=sm: equal_error_rate(ym, sm), 1)
        t_peer, eer_peer = timed(lambda ym=ym, sm=sm: sklearn_eer(ym, sm), 1)
        diff = abs(eer_ours - eer_peer)
        notes = (
            f"one call each (the process's first at this n); EER {eer_ours:.10f} vs "
            f"{eer_peer:.10f} ({'equal' if diff <= 1e-9 else f'DIFFER by {diff:.1e}'}); "
            "peer: sklearn roc_curve(drop_intermediate=False) + brentq over np.interp"
        )
        if m == n:
            notes += f"; {p.device} tensors above / peer: {t_dev / t_peer:.3f}"
        p.row(
            f"equal_error_rate, n={m:.0e}, numpy on the CPU",
            _secs(t_ours),
            _secs(t_peer),
            f"{t_ours / t_peer:.3f}",
            notes,
        )
    return 0


def part_training(p: Part) -> int:
    """IResNet training images/s and MFU, eager then compiled."""
    import torch
    from bench_backbones import Setup, images_per_second, peak_matmul_flops, train_step

    from metricface.backbones import build_backbone

    s, dev = p.sizes, torch.device(p.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if cuda else torch.float32
    dtype_name = "bf16" if cuda else "fp32"
    peak = peak_matmul_flops(dev, dtype, s.matmul)
    torch.manual_seed(0)
    model = build_backbone(s.net, input_size=s.image, **s.net_kw)
    x = torch.randn(s.batch, 3, s.image, s.image, device=dev)
    if cuda:
        x = x.to(memory_format=torch.channels_last)
    case = (
        f"{s.net} training, {s.image}x{s.image}, batch {s.batch}, "
        f"{dtype_name + ' autocast' if cuda else 'fp32'}{', channels_last' if cuda else ''}"
    )
    modes = [False, True] if s.compile else [False]
    for compiled in modes:
        setup = Setup(dev, dtype, cuda, compiled, s.image, s.warmup, s.steps, s.repeats)
        step, flops = train_step(model, setup)
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        step(x)  # with torch.compile: the compilation
        if cuda:
            torch.cuda.synchronize(dev)
        first = time.perf_counter() - t0
        for _ in range(setup.warmup):
            step(x)
        rates = [images_per_second(step, x, setup.steps, dev) for _ in range(setup.repeats)]
        rate = statistics.median(rates)
        mfu = 3 * flops * rate / peak
        mem = (
            f"; peak memory {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB" if cuda else ""
        )
        how = "torch.compile" if compiled else "eager"
        if not s.compile:
            how += " (torch.compile is skipped in a dry run)"
        notes = (
            f"median of {setup.repeats} x {setup.steps} steps (fwd+bwd+SGD momentum) after "
            f"{setup.warmup} warm-up steps; first step {first:.1f} s"
            f"{' (compilation)' if compiled else ''}{mem}"
        )
        p.row(f"{case}, {how}: images/s", f"{rate:,.0f} img/s", notes=notes)
        p.row(
            f"{case}, {how}: MFU",
            f"{100 * mfu:.1f} %",
            notes=f"3 x {flops / 1e9:.2f} GFLOPs/image (metricface.backbones.profile, forward "
            f"x 3) x images/s / {peak / 1e12:.1f} TFLOP/s, a {s.matmul}^3 {dtype_name} matmul "
            "measured in this run",
        )
        _free_memory(p.device)
    return 0


RUN = {
    "tests": part_tests,
    "arcface": part_arcface,
    "largest_c": part_largest_c,
    "all_pairs": part_all_pairs,
    "eer": part_eer,
    "training": part_training,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=("missing", "header", *PARTS))
    ap.add_argument("--table", help="the markdown file the rows are appended to")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: a plumbing check")
    ap.add_argument("--limit", type=float, default=600.0, help="the part's time limit, seconds")
    ap.add_argument("--stall", action="store_true", help="write one row, then wait (testing)")
    ap.add_argument("--command", default="", help="header: the command line that ran")
    ap.add_argument("--commit", default="unknown", help="header: the source commit")
    ap.add_argument("--note", default="", help="header: one more line (e.g. missing peers)")
    a = ap.parse_args(argv)
    if a.part == "missing":
        print(" ".join(missing_packages()))
        return 0
    if a.table is None:
        ap.error("--table is required")
    if a.part == "header":
        return write_header(a.table, a.dry_run, a.command, a.commit, a.note)
    p = Part(a.part, a.table, a.dry_run, a.limit)
    if a.stall:
        p.row("--stall", "written before the limit", notes="then the part waits to be stopped")
        while True:
            time.sleep(1)
    import torch

    if a.dry_run:
        torch.set_num_threads(1)  # tiny work: more threads only wait on each other
    elif not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    return RUN[a.part](p)


if __name__ == "__main__":
    sys.exit(main())
