"""Benchmark margin-softmax losses against pytorch-metric-learning: time and peak memory.

Inputs: both libraries get the same embeddings (``randn(B, D)``), labels and class centers,
drawn from a dedicated seeded generator; the centers are copied into the peer's ``W`` (its
``(D, C * K)`` layout is the transpose of ``weight``). The timing run prints both losses and the
largest difference of the embedding gradients, so a row whose numbers disagree is visible.

Timing: one subprocess per (case, loss) builds both implementations on the same batch, warms
each up once, then alternates their ``forward + backward`` steps (gradients set to ``None``
first, as an optimiser's ``zero_grad`` does) and reports the median of ``--repeats`` steps each;
alternating keeps load drift on a shared machine from favouring either side.

Peak memory: one more step after the warm-up, of each library separately:

- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  memory allocated before the step (parameters, inputs, the other library's tensors). The
  allocator's counters see only live tensors, so this runs in the timing subprocess, after its
  timed steps, instead of in fresh ones (each of which would pay for CUDA initialisation).
- CPU: a fresh subprocess per (case, loss, library) warms up once and measures one more step:
  the growth of the process's peak resident set: the kernel's ``VmHWM`` is reset through
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
``(num_classes, embedding_dim)``. A peer of ``None`` prints ``-``. ``arcface_chunked``
(:class:`~metricface.losses.PartialFCLoss` with ``chunk_size=8192``: the same loss, the classes
scored in chunks) runs only when named in ``--losses``.
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


def _mf_arcface_chunked(c: int, d: int) -> torch.nn.Module:
    from metricface.losses import ArcFaceMargin, PartialFCLoss

    return PartialFCLoss(c, d, ArcFaceMargin(0.5), scale=64.0, chunk_size=8192)


Factory = Callable[[int, int], torch.nn.Module]
LOSSES: dict[str, tuple[Factory, Optional[Factory]]] = {
    "arcface": (_mf_arcface, _pml_arcface),
    "arcface_chunked": (_mf_arcface_chunked, _pml_arcface),  # same loss, classes in chunks
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


def _inputs(
    loss: str, b: int, d: int, c: int, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings (B, D), labels (B,) and class centers (C * K, D), the same for both sides."""
    g = torch.Generator().manual_seed(0)
    rows = c * (3 if loss == "subcenter" else 1)
    emb = torch.randn(b, d, generator=g)
    labels = torch.randint(0, c, (b,), generator=g)
    weight = torch.randn(rows, d, generator=g).mul_(0.01)
    return emb.to(device), labels.to(device), weight.to(device)


def _setup(loss: str, lib: str, b: int, d: int, c: int, device: str) -> Callable[[], float]:
    """Build one implementation on the shared batch; return its ``forward + backward`` step.

    The step first drops the gradients (as ``optimizer.zero_grad()`` does) and returns the
    loss value; ``step.clear()`` only drops the gradients and ``step.emb`` is the embedding
    leaf (for comparing gradients).
    """
    factory = LOSSES[loss][0 if lib == "metricface" else 1]
    assert factory is not None
    module = factory(c, d).to(device)
    emb, labels, weight = _inputs(loss, b, d, c, device)
    with torch.no_grad():
        if lib == "metricface":
            module.weight.copy_(weight)
        else:  # the peer stores the centers as columns
            module.W.copy_(weight.t())
    del weight
    emb.requires_grad_(True)
    params = [emb, *module.parameters()]

    def clear() -> None:
        for p in params:
            p.grad = None

    def step() -> float:
        clear()
        out = module(emb, labels)
        out.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return float(out.detach())

    step.clear = clear  # type: ignore[attr-defined]
    step.emb = emb  # type: ignore[attr-defined]
    return step


def measure_time(loss: str, libs: list[str], b: int, d: int, c: int, device: str, n: int) -> dict:
    """Median step time of each library, their steps interleaved so load drift hits both.

    Also returns each library's loss and, with two libraries, the largest absolute difference
    of their embedding gradients relative to the largest gradient entry.
    """
    steps = {lib: _setup(loss, lib, b, d, c, device) for lib in libs}
    losses = {lib: step() for lib, step in steps.items()}  # warm-up
    grads = [step.emb.grad for step in steps.values()]  # type: ignore[attr-defined]
    grad_diff = None
    if len(grads) == 2:
        scale = grads[1].abs().max().clamp_min(1e-30)
        grad_diff = float((grads[0] - grads[1]).abs().max() / scale)
    del grads
    times: dict[str, list[float]] = {lib: [] for lib in libs}
    for _ in range(n):
        for lib, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[lib].append(time.perf_counter() - t0)
    result = {
        "time": {lib: statistics.median(t) for lib, t in times.items()},
        "loss": losses,
        "grad_diff": grad_diff,
    }
    if device == "cuda":  # peak of one step per library, beyond everything already allocated
        result["memory"] = {}
        for lib, step in steps.items():
            step.clear()  # type: ignore[attr-defined]  # its own gradients count as its memory
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            try:
                step()
            except torch.OutOfMemoryError:
                result["memory"][lib] = {"error": "OOM"}
                continue
            result["memory"][lib] = torch.cuda.max_memory_allocated() - base
    return result


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
    return f"{n / 2**20:,.0f} MiB"


def _secs(t: float) -> str:
    return f"{t:.3f} s" if t >= 1 else f"{t * 1e3:.1f} ms"


def _case_name(loss: str, b: int, d: int, c: int) -> str:
    cs = f"{c // 1000}k" if c % 1000 == 0 and c >= 1000 else str(c)
    return f"{loss}, B={b}, D={d}, C={cs}"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cases", nargs="+", default=None, help="B,D,C triples")
    parser.add_argument("--losses", nargs="+", default=None, choices=sorted(LOSSES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="one small case, 2 repeats")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.child:
        job = json.loads(args.child)
        try:
            if job[0] == "time":
                print(json.dumps(measure_time(*job[1:])))
            else:
                print(json.dumps(measure_memory(*job[1:])))
        except (torch.OutOfMemoryError, MemoryError):
            print(json.dumps({"error": "OOM"}))  # a cell of the table, not a crash
        return

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    cases = args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES)
    if args.quick:
        args.repeats = 2
    losses = args.losses or ["arcface", "cosface", "subcenter"]
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"device={where} torch={torch.__version__} threads={args.threads} "
        f"repeats={args.repeats} (median of interleaved steps after one warm-up)"
    )
    print("time: forward + backward; peak: memory of one step beyond inputs and parameters")
    print("ratio = metricface / peer (below 1: metricface is faster or smaller)\n")
    print("| case | metricface | peer | ratio | note |")
    print("|---|---|---|---|---|")
    for spec in cases:
        b, d, c = (int(v) for v in spec.split(","))
        for loss in losses:
            has_peer = LOSSES[loss][1] is not None
            libs = ["metricface", "pml"] if has_peer else ["metricface"]
            res = _run_child(args, ["time", loss, libs, b, d, c, args.device, args.repeats], False)
            if "memory" in res:  # CUDA: measured by the timing subprocess
                mem = res["memory"]
            else:
                mem = {
                    lib: _run_child(args, ["memory", loss, lib, b, d, c, args.device], True)
                    for lib in libs
                }
            name = _case_name(loss, b, d, c)
            failed = {lib: isinstance(m, dict) for lib, m in mem.items()}  # {"error": ...}
            if "error" in res or any(failed.values()):
                # out of memory on one side: record it as a cell, keep what was measured
                times = res.get("time", {})
                t_cells = [_secs(times[k]) if k in times else res.get("error", "-") for k in libs]
                m_cells = [mem[k]["error"] if failed[k] else _mib(mem[k]) for k in libs]
                for what, cells in (("fwd+bwd time", t_cells), ("peak memory", m_cells)):
                    peer_cell = cells[1] if has_peer else "-"
                    print(f"| {what}, {name} | {cells[0]} | {peer_cell} | - | |", flush=True)
                continue
            ours_t, ours_l = res["time"]["metricface"], res["loss"]["metricface"]
            if has_peer:
                peer_t, peer_l = res["time"]["pml"], res["loss"]["pml"]
                note = (
                    f"{peer_t / ours_t:.2f}x faster; loss {ours_l:.5f} vs {peer_l:.5f} "
                    f"(diff {abs(ours_l - peer_l):.1e}), grad diff {res['grad_diff']:.1e}"
                )
                rows = [
                    (f"fwd+bwd time, {name}", _secs(ours_t), _secs(peer_t), ours_t / peer_t,
                     note),
                    (f"peak memory, {name}", _mib(mem["metricface"]), _mib(mem["pml"]),
                     mem["metricface"] / max(mem["pml"], 1),
                     f"{mem['pml'] / max(mem['metricface'], 1):.1f}x less"),
                ]  # fmt: skip
            else:
                rows = [
                    (f"fwd+bwd time, {name}", _secs(ours_t), "-", None, f"loss {ours_l:.5f}"),
                    (f"peak memory, {name}", _mib(mem["metricface"]), "-", None, ""),
                ]
            for case, ours, peer, ratio, note in rows:
                r = "-" if ratio is None else f"{ratio:.2f}"
                print(f"| {case} | {ours} | {peer} | {r} | {note} |", flush=True)


if __name__ == "__main__":
    main()
