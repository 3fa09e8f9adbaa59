"""Triplet mining + loss: metricface vs pytorch-metric-learning, time and peak memory.

Each case is one training step without the network: mine triplets from ``B`` embeddings of
dimension ``D`` (``P`` identities x ``K`` images), evaluate the triplet loss on them and
back-propagate to the embeddings. Cases:

* ``triplet-<type>``: ``TripletMarginMiner(margin=0.2, type_of_triplets=<type>)`` followed by
  ``TripletMarginLoss(margin=0.05)`` on the mined triplets (both libraries; the two miners
  return identical triplets);
* ``all-triplets-loss``: ``TripletMarginLoss(margin=0.05)(embeddings, labels)`` over every
  triplet of the batch, no miner.

Method. Every (case, library) runs in a fresh subprocess, so one library's allocations never
shape the other's numbers. Time is the best wall time of ``--reps`` runs after one warm-up
(the minimum is the figure least disturbed by other load on a shared machine).
Peak memory: on CPU, the growth of the process's peak resident set during one run (Linux
``/proc/self/clear_refs`` resets the peak, ``VmHWM`` is read afterwards, minus ``VmRSS``
before the run, which already holds the inputs); on CUDA, ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats`` minus the memory allocated before the run. Each subprocess
runs under an address-space limit (``--mem-limit-gb``, CPU only) so that a library which
needs more fails cleanly ("OOM") instead of exhausting a shared machine.

Usage::

    python benchmarks/bench_miners.py --device cpu            # B = 256, 1024, 4096
    python benchmarks/bench_miners.py --quick                 # B = 128, 256: smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = ("triplet-all", "triplet-semihard", "triplet-hard", "all-triplets-loss")


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker(args: argparse.Namespace) -> dict:
    import torch

    if args.lib == "metricface":
        from metricface import losses, miners
    else:
        from pytorch_metric_learning import losses, miners

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    classes = args.batch // args.per_class
    labels = torch.arange(classes).repeat_interleave(args.per_class)
    centers = torch.randn(classes, args.dim, generator=g)
    base = centers[labels] + 3.0 * torch.randn(args.batch, args.dim, generator=g)
    base, labels = base.to(device), labels.to(device)
    loss_fn = losses.TripletMarginLoss(margin=0.05)
    miner = None
    if args.case.startswith("triplet-"):
        kind = args.case.split("-", 1)[1]
        miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets=kind)

    def step():
        x = base.clone().requires_grad_(True)
        tuples = None if miner is None else miner(x, labels)
        loss = loss_fn(x, labels, indices_tuple=tuples)
        loss.backward()
        count = -1 if tuples is None else int(tuples[0].numel())
        return float(loss.detach()), count

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # memory of one run
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        value, count = step()
        sync()
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        before = _rss_kb("VmRSS")
        if not _reset_peak_rss():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs)")
        value, count = step()
        peak_mb = (_rss_kb("VmHWM") - before) / 1024
    # time: warm-up done by the memory run above
    times = []
    for _ in range(args.reps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return {
        "time_ms": 1000 * min(times),
        "peak_mb": peak_mb,
        "loss": value,
        "triplets": count,
    }


def _run_case(args: argparse.Namespace, case: str, batch: int, lib: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--lib", lib,
        "--case", case,
        "--batch", str(batch),
        "--dim", str(args.dim),
        "--per-class", str(args.per_class),
        "--device", args.device,
        "--reps", str(args.reps if batch < 4096 else 1),
        "--threads", str(args.threads),
    ]  # fmt: skip
    limit = int(args.mem_limit_gb * 2**30)

    def cap_memory():
        if args.device == "cpu":
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.timeout, preexec_fn=cap_memory
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {args.timeout}s"}
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        oom = any(k in tail[0] for k in ("out of memory", "Cannot allocate", "MemoryError"))
        return {"error": "OOM" if oom else tail[0][:60]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(result: dict, key: str, spec: str) -> str:
    return result["error"] if "error" in result else format(result[key], spec)


def _ratio(ours: dict, peer: dict, key: str) -> str:
    if "error" in ours or "error" in peer or ours[key] <= 0:
        return "-"
    return f"{peer[key] / ours[key]:.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-class", type=int, default=4, help="K images per identity")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--mem-limit-gb", type=float, default=8.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lib", choices=["metricface", "pml"], help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    if args.quick:
        args.sizes, args.reps = [128, 256], 1

    import torch

    print(f"torch {torch.__version__}, device {args.device}, D={args.dim}, K={args.per_class}")
    print("time: best-of-reps ms per mine+loss+backward step; peak: MiB above the inputs")
    print("ratio = pml / metricface (higher is better for metricface)\n")
    header = (
        "| case | B | triplets | metricface ms | pml ms | time ratio "
        "| metricface peak MiB | pml peak MiB | memory ratio | same loss |"
    )
    print(header)
    print("|---" * 10 + "|")
    for batch in args.sizes:
        for case in args.cases:
            ours = _run_case(args, case, batch, "metricface")
            peer = _run_case(args, case, batch, "pml")
            same = "-"
            if "error" not in ours and "error" not in peer:
                close = abs(ours["loss"] - peer["loss"]) <= 1e-4 * max(1.0, abs(peer["loss"]))
                same = "yes" if close and ours["triplets"] == peer["triplets"] else "NO"
            triplets = ours.get("triplets", peer.get("triplets", "-"))
            print(
                f"| {case} | {batch} | {'all' if triplets == -1 else triplets} "
                f"| {_fmt(ours, 'time_ms', '.1f')} | {_fmt(peer, 'time_ms', '.1f')} "
                f"| {_ratio(ours, peer, 'time_ms')} "
                f"| {_fmt(ours, 'peak_mb', '.0f')} | {_fmt(peer, 'peak_mb', '.0f')} "
                f"| {_ratio(ours, peer, 'peak_mb')} | {same} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
