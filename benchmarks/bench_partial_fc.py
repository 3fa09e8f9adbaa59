"""Peak memory and time of a margin-softmax forward+backward with very many classes.

Compares, in one run and on the same inputs:

* ``chunked``: :class:`metricface.losses.PartialFCLoss` with ``chunk_size`` (online
  log-sum-exp, the ``(B, C)`` logits never held);
* ``dense``: :class:`metricface.losses.ArcFaceLoss`, the library's dense path (one
  ``(B, C)`` buffer for cosines, logits and softmax);
* the peer, pytorch-metric-learning's ``ArcFaceLoss`` (dense ``(B, C)`` logits).

Each measurement runs in a fresh subprocess. Peak memory counts everything the step needs
(the class-center weight, its gradient, the embeddings and every intermediate): on CUDA
``torch.cuda.max_memory_allocated``, on CPU the growth of the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``). The largest class count that fits in
``--budget-gb`` is found from the measured peaks at two sizes (memory is affine in ``C``) and
then checked by a run at that size.

Usage::

    python benchmarks/bench_partial_fc.py --device cpu --budget-gb 4
    python benchmarks/bench_partial_fc.py --device cuda            # budget: the GPU's memory
    python benchmarks/bench_partial_fc.py --device cpu --quick
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

METHODS = ("chunked", "dense", "pml")
LABEL = {
    "chunked": "metricface chunked",
    "dense": "metricface dense",
    "pml": "PML ArcFaceLoss",
}


# ----------------------------------------------------------------------------- worker side
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory of the work inside a ``with`` block, beyond what was held when it began.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
    memory allocated at entry. CPU: the growth of the process's peak resident set (``VmHWM``,
    reset through ``/proc/self/clear_refs`` at entry) over ``VmRSS`` at entry, Linux only. The
    figure is ``peak`` (bytes) after the block.
    """

    def __init__(self, device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = _rss_kib("VmRSS") * 1024
            with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
                fh.write("5")
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.peak = _rss_kib("VmHWM") * 1024 - self.base


def _loss_class(method: str):
    """The loss class of ``method``, imported and built once (outside any measurement)."""
    import torch

    if method == "pml":
        from pytorch_metric_learning.losses import ArcFaceLoss as PMLArcFaceLoss

        return PMLArcFaceLoss
    from metricface.losses import ArcFaceLoss, PartialFCLoss

    if method == "dense":
        with torch.device("meta"):  # the first use of the meta device loads its kernels
            ArcFaceLoss(2, 2)
        return ArcFaceLoss
    return PartialFCLoss


def build_loss(method: str, c: int, d: int, chunk: int, dev) -> tuple:
    """The loss ``method`` for ``c`` classes and its class-center parameter, on ``dev``.

    The centers are allocated on ``dev`` directly and filled from a seeded generator in blocks
    (no temporary ``(C, D)`` copy), identical for every method. pytorch-metric-learning's
    constructor would build and initialise its ``(D, C)`` centers on the CPU (seconds per
    million classes), so its loss is built for one class and given the ``(D, C)`` parameter on
    ``dev`` it would have made.
    """
    import torch

    from metricface.losses import ArcFaceMargin

    cls = _loss_class(method)
    if method == "pml":
        loss_fn = cls(1, d, margin=math.degrees(0.5), scale=64.0).to(dev)
        loss_fn.W = torch.nn.Parameter(torch.empty(d, c, device=dev))
        loss_fn.num_classes = c
        weight = loss_fn.W
    elif method == "dense":
        with torch.device("meta"):
            loss_fn = cls(c, d, margin=0.5, scale=64.0)
        loss_fn = loss_fn.to_empty(device=dev)
        weight = loss_fn.weight
    else:
        loss_fn = cls(c, d, margin=ArcFaceMargin(0.5), scale=64.0, chunk_size=chunk, device=dev)
        weight = loss_fn.weight
    gen = torch.Generator(device=dev).manual_seed(1)
    with torch.no_grad():
        for start in range(0, c, 65536):
            block = torch.randn(min(65536, c - start), d, device=dev, generator=gen)
            if method == "pml":
                weight[:, start : start + len(block)] = block.T
            else:
                weight[start : start + len(block)] = block
    return loss_fn, weight


def _warm_up(dev) -> None:
    """Touch the allocator, thread pools and kernels once, so a baseline excludes them."""
    import torch

    warm = torch.randn(64, 64, device=dev, requires_grad=True)
    (warm @ warm.T).exp().sum().backward()


def _worker(method: str, b: int, d: int, c: int, chunk: int, device: str, repeats: int) -> dict:
    import torch

    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    _warm_up(dev)
    _loss_class(method)
    with PeakMemory(dev) as mem:
        x = torch.randn(b, d, device=dev, requires_grad=True)
        y = torch.randint(0, c, (b,), device=dev)
        loss_fn, weight = build_loss(method, c, d, chunk, dev)

        def step() -> float:
            x.grad = weight.grad = None
            loss = loss_fn(x, y)
            loss.backward()
            return float(loss.detach())

        times, loss = [], float("nan")
        for i in range(repeats + (1 if repeats > 1 else 0)):  # one warm-up when timing repeats
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = step()
            if cuda:
                torch.cuda.synchronize()
            if repeats == 1 or i > 0:
                times.append(time.perf_counter() - t0)
    return {"peak": mem.peak, "time": statistics.median(times), "loss": loss}


def train_trial(method: str, b: int, d: int, c: int, chunk: int, device, steps: int = 2) -> dict:
    """Train the class centers of ``method`` for ``steps`` steps, in this process.

    A step is forward, backward and an SGD update with momentum 0.9 and weight decay (the
    momentum buffer is the size of the centers; from the second step on it is held throughout).
    Returns the peak memory of the whole trial (centers, gradient, momentum, every
    intermediate; :class:`PeakMemory`) and the median step time. An allocation that does not
    fit raises as it would in training (``torch.OutOfMemoryError`` on CUDA); everything the
    trial allocated is released when it returns or raises.
    """
    import torch

    dev = torch.device(device)
    torch.manual_seed(0)
    _warm_up(dev)
    _loss_class(method)
    times = []
    with PeakMemory(dev) as mem:
        x = torch.randn(b, d, device=dev, requires_grad=True)
        y = torch.randint(0, c, (b,), device=dev)
        loss_fn, weight = build_loss(method, c, d, chunk, dev)
        opt = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
        for _ in range(steps):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            x.grad = None
            opt.zero_grad(set_to_none=True)
            loss_fn(x, y).backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
    return {"peak": mem.peak, "time": statistics.median(times)}


def _run(method, b, d, c, chunk, device, repeats) -> dict:
    cmd = [sys.executable, __file__, "--_worker", method, *map(str, (b, d, c, chunk)), device]
    cmd.append(str(repeats))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        oom = any(
            k in tail[0]
            for k in ("out of memory", "OutOfMemoryError", "MemoryError", "can't allocate")
        )
        return {"error": "OOM" if oom else tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver side
def _fmt_c(c: float) -> str:
    return f"{c / 1e6:.2f}M" if c >= 1e6 else f"{c / 1e3:.0f}k"


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("case", "metricface", "peer (PML ArcFaceLoss)", "ratio")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=100_000)
    p.add_argument("--chunk-size", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-gb", type=float, default=None, help="default: 4 (CPU), GPU memory")
    p.add_argument("--no-verify", action="store_true", help="no runs near the budget")
    p.add_argument("--refine", type=int, default=3, help="runs to approach the budget")
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    p.add_argument("--_worker", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._worker:
        m, b, d, c, chunk, device, repeats = args._worker
        print(json.dumps(_worker(m, int(b), int(d), int(c), int(chunk), device, int(repeats))))
        return

    import torch

    if args.quick:
        args.batch, args.dim, args.classes, args.repeats = 64, 64, 20_000, 1
        args.chunk_size = min(args.chunk_size, 2048)
        args.budget_gb = args.budget_gb or 0.5
    if args.budget_gb is None:
        if args.device == "cuda":
            args.budget_gb = torch.cuda.get_device_properties(0).total_memory / 2**30 * 0.95
        else:
            args.budget_gb = 4.0
    budget = args.budget_gb * 2**30
    b, d, c = args.batch, args.dim, args.classes
    print(f"torch {torch.__version__}, device {args.device}, B={b} D={d} C={c}, "
          f"chunk_size={args.chunk_size}, budget {args.budget_gb:.1f} GiB")  # fmt: skip

    small = max(c // 5, 1000)
    main_runs, small_runs = {}, {}
    for m in METHODS:
        main_runs[m] = _run(m, b, d, c, args.chunk_size, args.device, args.repeats)
        small_runs[m] = _run(m, b, d, small, args.chunk_size, args.device, 1)
        print(f"  {m:8s} C={c}: {main_runs[m]}   C={small}: {small_runs[m]}", flush=True)

    largest, checked = {}, {}
    for m in METHODS:
        points = [
            (n, r) for n, r in ((small, small_runs[m]), (c, main_runs[m])) if "error" not in r
        ]
        if len(points) == 1 and not args.no_verify:
            # e.g. the peer runs out of memory at C: a second point below the one that fitted
            half = max(points[0][0] // 2, 500)
            run = _run(m, b, d, half, args.chunk_size, args.device, 1)
            print(f"  {m:8s} C={half}: {run}", flush=True)
            if "error" not in run:
                points.insert(0, (half, run))
        if len(points) < 2:
            continue
        fits = [(n, r) for n, r in points if r["peak"] <= budget]
        for _ in range(0 if args.no_verify else args.refine):
            # memory is affine in C: aim at the budget through the two latest points
            (c0, r0), (c1, r1) = points[-2:]
            slope = (r1["peak"] - r0["peak"]) / (c1 - c0)
            if slope <= 0:
                break
            guess = int(c1 + (budget - r1["peak"]) / slope) // 1000 * 1000
            if guess <= 0 or guess in (c0, c1):
                break
            run = _run(m, b, d, guess, args.chunk_size, args.device, 1)
            print(f"  {m:8s} C={guess}: {run}", flush=True)
            if "error" in run:  # e.g. out of memory: step back below the budget next time
                run = {"peak": budget * 1.05}
            points.append((guess, run))
            if run["peak"] <= budget:
                fits.append((guess, run))
                if run["peak"] >= 0.97 * budget:
                    break
        if fits:
            largest[m], checked[m] = max(fits, key=lambda t: t[0])

    def pair(key, ours, peer, fmt, ratio=True):
        a, z = main_runs[ours].get(key), main_runs[peer].get(key)
        cells = [
            fmt(v) if v is not None else run.get("error", "error")
            for v, run in ((a, main_runs[ours]), (z, main_runs[peer]))
        ]
        return (*cells, f"{a / z:.2f}" if ratio and a is not None and z is not None else "-")

    mb = lambda v: f"{v / 2**20:,.0f} MiB"  # noqa: E731
    sec = lambda v: f"{v:.3f} s"  # noqa: E731
    rows = []
    size = f"B={b}, D={d}, C={_fmt_c(c)}"
    for ours in ("chunked", "dense"):
        rows.append((f"fwd+bwd time, {LABEL[ours]}, {size}", *pair("time", ours, "pml", sec)))
        rows.append((f"peak memory, {LABEL[ours]}, {size}", *pair("peak", ours, "pml", mb)))
    for ours in ("chunked", "dense"):
        if not args.no_verify and ours in largest and "pml" in largest:

            def show(m):
                return f"{_fmt_c(largest[m])} ({mb(checked[m]['peak'])})"

            rows.append((
                f"largest C in {args.budget_gb:.1f} GiB, {LABEL[ours]}",
                show(ours), show("pml"), f"{largest[ours] / largest['pml']:.1f}",
            ))  # fmt: skip
    gaps = [abs(main_runs[m]["loss"] - main_runs["pml"]["loss"]) for m in ("chunked", "dense")
            if "loss" in main_runs[m] and "loss" in main_runs["pml"]]  # fmt: skip
    print()
    print(_table(rows))
    if gaps:
        print(f"\nlargest loss difference to the peer at C={c}: {max(gaps):.2e}")
    else:
        print(f"\nno loss comparison at C={c}: a run failed (see the cells above)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))
    main()
