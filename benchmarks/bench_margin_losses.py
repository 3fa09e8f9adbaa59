"""Benchmark margin-softmax losses against pytorch-metric-learning: time and peak memory.

Timing: one subprocess per (case, loss) builds both implementations on the same batch, warms
each up once, then alternates their ``forward + backward`` steps (gradients set to ``None``
first, as an optimiser's ``zero_grad`` does) and reports the median of ``--repeats`` steps each;
alternating keeps load drift on a shared machine from favouring either side.

Peak memory: a fresh subprocess per (case, loss, library) warms up once and measures one more
step:

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


def _setup(loss: str, lib: str, b: int, d: int, c: int, device: str) -> Callable[[], None]:
    """Build one implementation and a batch; return its ``forward + backward`` step.

    The step first drops the gradients (as ``optimizer.zero_grad()`` does); ``step.clear()``
    does only that.
    """
    torch.manual_seed(0)
    factory = LOSSES[loss][0 if lib == "metricface" else 1]
    assert factory is not None
    module = factory(c, d).to(device)
    emb = torch.randn(b, d, device=device, requires_grad=True)
    labels = torch.randint(0, c, (b,), device=device)
    params = [emb, *module.parameters()]

    def clear() -> None:
        for p in params:
            p.grad = None

    def step() -> None:
        clear()
        module(emb, labels).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step.clear = clear  # type: ignore[attr-defined]
    return step


def measure_time(loss: str, libs: list[str], b: int, d: int, c: int, device: str, n: int) -> dict:
    """Median step time of each library, their steps interleaved so load drift hits both."""
    steps = {lib: _setup(loss, lib, b, d, c, device) for lib in libs}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {lib: [] for lib in libs}
    for _ in range(n):
        for lib, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[lib].append(time.perf_counter() - t0)
    return {lib: statistics.median(t) for lib, t in times.items()}


def measure_memory(loss: str, lib: str, b: int, d: int, c: int, device: str) -> int:
    """Peak memory (bytes) of one step beyond what the inputs and parameters hold."""
    step = _setup(loss, lib, b, d, c, device)
    step()  # warm-up (lazy initialisation, allocator)
    step.clear()  # type: ignore[attr-defined]  # the step's own gradients count as its memory
    if device == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated() - base
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    step()
    return (_rss_kib("VmHWM") - base) * 1024


def _run_child(args: argparse.Namespace, job: list, memory: bool) -> object:
    cmd = [sys.executable, __file__, "--child", json.dumps(job), "--threads", str(args.threads)]
    env = dict(os.environ)
    if memory:
        # glibc: serve every allocation above 64 KiB by mmap, so freed tensors leave the
        # resident set at once and VmHWM reflects what the step really held at its peak
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{job} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


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
        job = json.loads(args.child)
        if job[0] == "time":
            print(json.dumps(measure_time(*job[1:])))
        else:
            print(json.dumps(measure_memory(*job[1:])))
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
            has_peer = LOSSES[loss][1] is not None
            libs = ["metricface", "pml"] if has_peer else ["metricface"]
            times = _run_child(
                args, ["time", loss, libs, b, d, c, args.device, args.repeats], False
            )
            mem = {
                lib: _run_child(args, ["memory", loss, lib, b, d, c, args.device], True)
                for lib in libs
            }
            row = [f"{loss}, {b}, {d}, {c}", f"{times['metricface'] * 1e3:.0f} ms"]
            if has_peer:
                row += [
                    f"{times['pml'] * 1e3:.0f} ms",
                    f"{times['pml'] / times['metricface']:.2f}x faster",
                    _mib(mem["metricface"]),
                    _mib(mem["pml"]),
                    f"{mem['metricface'] / max(mem['pml'], 1):.2f}",
                ]
            else:
                row += ["-", "-", _mib(mem["metricface"]), "-", "-"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
