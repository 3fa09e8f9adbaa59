"""Triplet mining + loss: metricface vs pytorch-metric-learning, time and peak memory.

Each case is one training step without the network: mine triplets from ``B`` embeddings of
dimension ``D`` (``P`` identities x ``K`` images), evaluate the triplet loss on them and
back-propagate to the embeddings. Cases:

* ``triplet-<type>``: ``TripletMarginMiner(margin=0.2, type_of_triplets=<type>)`` followed by
  ``TripletMarginLoss(margin=0.05)`` on the mined triplets (both libraries; the two miners
  return identical triplets);
* ``all-triplets-loss``: ``TripletMarginLoss(margin=0.05)(embeddings, labels)`` over every
  triplet of the batch, no miner.

Inputs: both libraries get the same embeddings (``centers[labels] + 3 * noise`` from a seeded
generator) and labels. The table reports the number of mined triplets and whether both
libraries gave the same count and the same loss (relative tolerance ``1e-4``).

Time: one subprocess per case builds both libraries' miner and loss, runs one warm-up step of
each, then alternates their timed steps (``--reps`` each, one at ``B >= 4096``) and reports the
median; alternating keeps load drift on a shared machine from favouring either side.

Peak memory, CPU: a fresh subprocess per (case, library). It first runs the same step on a
small batch (64 embeddings) so that one-time initialisation is not counted, then measures one
step at full size:

- CPU: the growth of the process's peak resident set (``/proc/self/clear_refs`` resets the
  kernel's ``VmHWM`` to the current RSS; ``VmHWM`` after the step minus ``VmRSS`` before it,
  which already holds the inputs). Children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc
  maps every allocation above 64 KiB separately and returns it on free. Linux only.
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  memory allocated before the step. The allocator's counters see only live tensors, so this is
  measured in the timing process after its warm-up, one library at a time, instead of in fresh
  processes (a third of the process start-ups, each of which pays for CUDA initialisation).

``--semihard``: instead of the cases above, time ``SemiHardMiner(margin=0.2)`` against
``BatchHardMiner()`` (both metricface, mining only, no loss) on the same embeddings at each
``B`` in one process, alternating the two miners ``--reps`` times after a warm-up; medians and
their ratio. Batch-hard mining is one ``(B, B)`` pass after the distance matrix, the floor for
any miner that reads every distance; semi-hard mining should stay within a small factor of it.

Every CPU subprocess runs under an address-space limit (``--mem-limit-gb``), so a library that
needs more fails cleanly ("OOM") instead of exhausting a shared machine; the note then gives
the peer's projected need. pytorch-metric-learning 2.9 enumerates all triplets through a
``B x B x B`` uint8 mask while ``B^3 < 2^31`` (``B <= 1290``) and through a per-anchor Python
loop beyond (memory proportional to the number of triplets); the note says which path ran.

Usage::

    python benchmarks/bench_miners.py --device cpu            # B = 256, 1024, 4096
    python benchmarks/bench_miners.py --device cuda
    python benchmarks/bench_miners.py --quick                 # B = 128, 256: smoke run
    python benchmarks/bench_miners.py --semihard --sizes 1024 2048 4096
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

CASES = ("triplet-all", "triplet-semihard", "triplet-hard", "all-triplets-loss")
LIBS = ("metricface", "pml")
WARMUP_BATCH = 64
INT32_MAX = 2**31 - 1


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _oom_message(exc: BaseException) -> str | None:
    """``"OOM ..."`` when ``exc`` is an allocation failure, else ``None``."""
    text = str(exc)
    if isinstance(exc, MemoryError) or "allocate" in text or "out of memory" in text:
        m = re.search(r"allocate (\d+) bytes", text)
        return f"OOM (asked for {int(m.group(1)) / 2**30:.1f} GiB)" if m else "OOM"
    return None


def _embeddings(batch: int, args: argparse.Namespace):
    """``batch`` embeddings of ``B / K`` identities x ``K`` images, and their labels (seeded)."""
    import torch

    g = torch.Generator().manual_seed(0)
    classes = batch // args.per_class
    labels = torch.arange(classes).repeat_interleave(args.per_class)
    centers = torch.randn(classes, args.dim, generator=g)
    x = centers[labels] + 3.0 * torch.randn(batch, args.dim, generator=g)
    return x.to(args.device), labels.to(args.device)


def _make_step(lib: str, case: str, batch: int, args: argparse.Namespace):
    """Inputs shared by both libraries and one library's ``mine + loss + backward`` step."""
    import torch

    if lib == "metricface":
        from metricface import losses, miners
    else:
        from pytorch_metric_learning import losses, miners

    device = torch.device(args.device)
    base, labels = _embeddings(batch, args)
    loss_fn = losses.TripletMarginLoss(margin=0.05)
    miner = None
    if case.startswith("triplet-"):
        miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets=case.split("-", 1)[1])

    def step() -> tuple[float, int]:
        x = base.clone().requires_grad_(True)
        tuples = None if miner is None else miner(x, labels)
        loss = loss_fn(x, labels, indices_tuple=tuples)
        loss.backward()
        count = -1 if tuples is None else int(tuples[0].numel())
        del tuples, x
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach()), count

    return step


def _time_worker(args: argparse.Namespace) -> dict:
    """Warm up both libraries, then alternate their timed steps; median per library."""
    import torch

    torch.set_num_threads(args.threads)
    steps = {lib: _make_step(lib, args.case, args.batch, args) for lib in LIBS}
    out: dict[str, dict] = {}
    for lib, step in steps.items():
        try:
            loss, count = step()
            out[lib] = {"loss": loss, "triplets": count, "times": []}
        except (RuntimeError, MemoryError) as exc:
            msg = _oom_message(exc)
            if msg is None:
                raise
            out[lib] = {"error": msg}
    if args.device == "cuda":
        for lib, step in steps.items():
            if "error" in out[lib]:
                continue
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            out[lib]["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    reps = args.reps if args.batch < 4096 else 1
    for _ in range(reps):
        for lib, step in steps.items():
            if "error" in out[lib]:
                continue
            start = time.perf_counter()
            step()
            out[lib]["times"].append(time.perf_counter() - start)
    for res in out.values():
        if "times" in res:
            res["time_ms"] = 1000 * statistics.median(res.pop("times"))
    return out


def _memory_worker(args: argparse.Namespace) -> dict:
    """Peak memory (MiB) of one full-size step after a small-batch warm-up."""
    import torch

    torch.set_num_threads(args.threads)
    _make_step(args.lib, args.case, min(args.batch, WARMUP_BATCH), args)()
    step = _make_step(args.lib, args.case, args.batch, args)
    try:
        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            return {"peak_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}
        before = _rss_kb("VmRSS")
        _reset_peak_rss()
        step()
        return {"peak_mb": (_rss_kb("VmHWM") - before) / 1024}
    except (RuntimeError, MemoryError) as exc:
        msg = _oom_message(exc)
        if msg is None:
            raise
        return {"error": msg}


def _run(args: argparse.Namespace, mode: str, case: str, batch: int, lib: str = "") -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker", mode,
        "--case", case,
        "--batch", str(batch),
        "--dim", str(args.dim),
        "--per-class", str(args.per_class),
        "--device", args.device,
        "--reps", str(args.reps),
        "--threads", str(args.threads),
    ]  # fmt: skip
    if lib:
        cmd += ["--lib", lib]
    env = dict(os.environ)
    if mode == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    limit = int(args.mem_limit_gb * 2**30)

    def cap_memory() -> None:
        if args.device == "cpu":
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=args.timeout,
            preexec_fn=cap_memory,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {args.timeout:.0f}s"}
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        oom = any(k in tail[0] for k in ("out of memory", "allocate", "MemoryError"))
        return {"error": "OOM" if oom else tail[0][:80]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peer_path(batch: int, per_class: int) -> tuple[str, float]:
    """The peer's triplet enumeration path at this batch size and its projected working set.

    Vectorised (``B^3 < 2^31``): a ``B^3`` uint8 mask plus the triplets as three int64
    columns. Loop: the triplets twice (per-anchor pieces, then their concatenation).
    """
    triplets = batch * (per_class - 1) * (batch - per_class)
    if batch**3 < INT32_MAX:
        return "B^3 mask", batch**3 + 24 * triplets
    return "per-anchor loop", 2 * 24 * triplets


def _bench_semihard(args: argparse.Namespace) -> None:
    """SemiHardMiner vs BatchHardMiner, same embeddings, alternated; medians in ms."""
    import torch

    from metricface import miners

    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, device {where}, threads {args.threads}, D={args.dim}, "
        f"K={args.per_class}; median of {args.reps} alternated calls after one warm-up"
    )
    print("ratio = SemiHardMiner / BatchHardMiner\n")
    print("| B | triplets (semi-hard) | SemiHardMiner ms | BatchHardMiner ms | ratio |")
    print("|---|---|---|---|---|")
    for batch in args.sizes:
        x, labels = _embeddings(batch, args)
        pair = {"semihard": miners.SemiHardMiner(margin=0.2), "batchhard": miners.BatchHardMiner()}
        times: dict[str, list[float]] = {name: [] for name in pair}
        count = int(pair["semihard"](x, labels)[0].numel())  # warm-up
        pair["batchhard"](x, labels)
        for _ in range(args.reps):
            for name, miner in pair.items():
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                miner(x, labels)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        semi, hard = (1000 * statistics.median(times[k]) for k in ("semihard", "batchhard"))
        print(f"| {batch} | {count:,} | {semi:.1f} | {hard:.1f} | {semi / hard:.2f} |", flush=True)


def _fmt(res: dict, key: str, spec: str) -> str:
    return res["error"] if "error" in res else format(res[key], spec)


def _ratio(ours: dict, peer: dict, key: str) -> str:
    if "error" in ours or "error" in peer or peer[key] <= 0:
        return "-"
    return f"{ours[key] / peer[key]:.3f}"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="B = 128, 256 and one repetition")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-class", type=int, default=4, help="K images per identity")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--mem-limit-gb", type=float, default=8.0)
    parser.add_argument(
        "--semihard", action="store_true", help="SemiHardMiner vs BatchHardMiner timing only"
    )
    parser.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--lib", choices=LIBS, help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker = _time_worker if args.worker == "time" else _memory_worker
        print(json.dumps(worker(args)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.quick:
        args.sizes, args.reps = [128, 256], 1
    if args.semihard:
        _bench_semihard(args)
        return

    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, device {where}, threads {args.threads}, D={args.dim}, "
        f"K={args.per_class}, memory limit {args.mem_limit_gb:g} GiB per process (CPU)"
    )
    print(
        f"time: median of {args.reps} interleaved mine+loss+backward steps (1 at B >= 4096) "
        "after one warm-up; peak: MiB above the inputs, "
        + ("after the warm-up in the timing process" if args.device == "cuda" else "fresh process")
    )
    print("ratio = metricface / pml (below 1: metricface is faster or smaller)\n")
    print(
        "| case | B | triplets | metricface ms | pml ms | time ratio "
        "| metricface peak MiB | pml peak MiB | memory ratio | same loss | note |"
    )
    print("|---" * 11 + "|")
    for batch in args.sizes:
        for case in args.cases:
            timed = _run(args, "time", case, batch)
            if "error" in timed:
                timed = {lib: timed for lib in LIBS}
            if args.device == "cuda":  # measured by the timing process (see the docstring)
                mem = {
                    lib: {"peak_mb": timed[lib]["peak_mb"]}
                    if "peak_mb" in timed[lib]
                    else {"error": timed[lib].get("error", "-")}
                    for lib in LIBS
                }
            else:
                mem = {lib: _run(args, "memory", case, batch, lib) for lib in LIBS}
            ours, peer = timed["metricface"], timed["pml"]
            same = "-"
            if "loss" in ours and "loss" in peer:
                diff = abs(ours["loss"] - peer["loss"])
                close = diff <= 1e-4 * max(1.0, abs(peer["loss"]))
                same = "yes" if close and ours["triplets"] == peer["triplets"] else "NO"
                same += f" ({diff:.0e})"
            triplets = ours.get("triplets", peer.get("triplets", "-"))
            path, need = _peer_path(batch, args.per_class)
            note = f"pml path: {path}"
            if "error" in peer or "error" in mem["pml"]:
                note += f"; pml projected need {need / 2**30:.1f} GiB"
            row = [
                case,
                str(batch),
                "all" if triplets == -1 else str(triplets),
                _fmt(ours, "time_ms", ".1f"),
                _fmt(peer, "time_ms", ".1f"),
                _ratio(ours, peer, "time_ms"),
                _fmt(mem["metricface"], "peak_mb", ".0f"),
                _fmt(mem["pml"], "peak_mb", ".0f"),
                _ratio(mem["metricface"], mem["pml"], "peak_mb"),
                same,
                note,
            ]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
