"""Benchmark margin-softmax losses against pytorch-metric-learning: time and peak memory.

Each (case, loss, library) runs in a fresh subprocess that builds the loss and a batch, warms up,
times ``forward + backward`` (``zero_grad(set_to_none=True)`` first, as an optimiser step would)
and then measures the peak memory of one more ``forward + backward``:

- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  memory allocated before the step (parameters, inputs).
- CPU: the growth of the process's peak resident set: the kernel's ``VmHWM`` is reset through
  ``/proc/self/clear_refs`` just before the step and read after it, minus ``VmRSS`` before the
  step. This counts every page the step touched (tensors, autograd buffers, allocator slack),
  not only live tensors. Children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc maps every
  allocation above 64 KiB separately and returns it on free; a fresh process per case keeps the
  figures independent. Linux only.

Usage::

    python benchmarks/bench_margin_losses.py --device cpu
    python benchmarks/bench_margin_losses.py --device cuda --cases 512,512,10000 512,512,1000000
    python benchmarks/bench_margin_losses.py --quick
    python benchmarks/bench_margin_losses.py --losses arcface   # only some losses

Other loss implementations (e.g. a sharded class-center loss) register in ``LOSSES`` below:
``name -> (metricface factory, peer factory or None)``; each factory takes
``(num_classes, embedding_dim)``. A peer of ``None`` prints ``-``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import torch


def _mf_arcface(c: int, d: int) -> torch.nn.Module:
    from metricface.losses import ArcFaceLoss

    return ArcFaceLoss(c, d, margin=0.5, scale=64.0)


def _pml_arcface(c: int, d: int) -> torch.nn.Module:
    from pytorch_metric_learning.losses import ArcFaceLoss

    return ArcFaceLoss(c, d, margin=math.degrees(0.5), scale=64)


def _mf_cosface(c: int, d: int) -> torch.nn.Module:
    from metricface.losses import CosFaceLoss

    return CosFaceLoss(c, d, margin=0.35, scale=64.0)


def _pml_cosface(c: int, d: int) -> torch.nn.Module:
    from pytorch_metric_learning.losses import CosFaceLoss

    return CosFaceLoss(c, d, margin=0.35, scale=64)


def _mf_subcenter(c: int, d: int) -> torch.nn.Module:
    from metricface.losses import SubCenterArcFaceLoss

    return SubCenterArcFaceLoss(c, d, sub_centers=3, margin=0.5, scale=64.0)


def _pml_subcenter(c: int, d: int) -> torch.nn.Module:
    from pytorch_metric_learning.losses import SubCenterArcFaceLoss

    return SubCenterArcFaceLoss(
        num_classes=c, embedding_size=d, margin=math.degrees(0.5), scale=64, sub_centers=3
    )


Factory = Callable[[int, int], torch.nn.Module]
LOSSES: dict[str, tuple[Factory, Optional[Factory]]] = {
    "arcface": (_mf_arcface, _pml_arcface),
    "cosface": (_mf_cosface, _pml_cosface),
    "subcenter": (_mf_subcenter, _pml_subcenter),
}
DEFAULT_CASES = ["512,512,10000", "512,512,100000"]
QUICK_CASES = ["64,128,2000"]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(loss: str, lib: str, b: int, d: int, c: int, device: str, repeats: int) -> dict:
    """Time and peak memory of one loss implementation (run in a subprocess)."""
    torch.manual_seed(0)
    factory = LOSSES[loss][0 if lib == "metricface" else 1]
    assert factory is not None
    module = factory(c, d).to(device)
    emb = torch.randn(b, d, device=device, requires_grad=True)
    labels = torch.randint(0, c, (b,), device=device)
    params = [emb, *module.parameters()]

    def step() -> None:
        for p in params:
            p.grad = None
        module(emb, labels).backward()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)

    for p in params:
        p.grad = None
    if device == "cuda":
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        step()
        peak = (_rss_kib("VmHWM") - base) * 1024
    return {"time_s": statistics.median(times), "peak_bytes": peak}


def _run_child(args: argparse.Namespace, loss: str, lib: str, case: tuple[int, int, int]) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        json.dumps([loss, lib, *case, args.device, args.repeats]),
        "--threads",
        str(args.threads),
    ]
    # glibc: serve every allocation above 64 KiB by mmap, so freed tensors leave the resident
    # set at once and VmHWM reflects what the step really held at its peak
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{loss}/{lib} {case} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(res: Optional[dict]) -> tuple[str, str]:
    if res is None:
        return "-", "-"
    return f"{res['time_s'] * 1e3:.0f} ms", f"{res['peak_bytes'] / 2**20:.0f} MiB"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cases", nargs="+", default=None, help="B,D,C triples")
    parser.add_argument("--losses", nargs="+", default=None, choices=sorted(LOSSES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="one small case, 2 repeats")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.child:
        loss, lib, b, d, c, device, repeats = json.loads(args.child)
        print(json.dumps(measure(loss, lib, b, d, c, device, repeats)))
        return

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    cases = args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES)
    if args.quick:
        args.repeats = 2
    losses = args.losses or ["arcface", "subcenter"]
    header = (
        "| case (loss, B, D, C) | metricface time | peer time | time ratio "
        "| metricface peak | peer peak | memory ratio |"
    )
    print(f"device={args.device} torch={torch.__version__} threads={args.threads}")
    print(header)
    print("|" + "---|" * 7)
    for spec in cases:
        b, d, c = (int(v) for v in spec.split(","))
        for loss in losses:
            ours = _run_child(args, loss, "metricface", (b, d, c))
            peer = None if LOSSES[loss][1] is None else _run_child(args, loss, "pml", (b, d, c))
            t_ours, m_ours = _fmt(ours)
            t_peer, m_peer = _fmt(peer)
            t_ratio = m_ratio = "-"
            if peer is not None:
                t_ratio = f"{peer['time_s'] / ours['time_s']:.2f}x faster"
                m_ratio = f"{ours['peak_bytes'] / max(peer['peak_bytes'], 1):.2f}"
            print(
                f"| {loss}, {b}, {d}, {c} | {t_ours} | {t_peer} | {t_ratio} "
                f"| {m_ours} | {m_peer} | {m_ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
