"""Training-step throughput of metricface backbones against torchvision's ResNets.

For every backbone and batch size the script times full training steps (forward, a loss,
backward, SGD-with-momentum update) of the metricface network and of the torchvision ResNet of
the same depth (``iresnet100`` is paired with ``resnet101``, ``iresnet200`` with
``resnet152``), alternating the two over several repeats so that a loaded machine slows both
alike, and reports the median images/s, the ratio ours / torchvision and the model FLOPs
utilisation::

    MFU = 3 * forward FLOPs per image * images/s / peak matmul FLOP/s

where the forward FLOPs come from :func:`metricface.backbones.profile` and the peak is measured
in the same run with a large matrix product in the training dtype (bf16 on CUDA by default,
float32 on CPU).

Examples
--------
CPU smoke run::

    OMP_NUM_THREADS=2 python benchmarks/bench_backbones.py --device cpu --quick

H100, bf16 + channels_last + torch.compile::

    python benchmarks/bench_backbones.py --device cuda --models iresnet50 iresnet100 resnet50 \
        --batch-sizes 128 256 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import metricface.backbones as B

PEER = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "resnet152": "resnet152",
    "iresnet18": "resnet18",
    "iresnet34": "resnet34",
    "iresnet50": "resnet50",
    "iresnet100": "resnet101",
    "iresnet200": "resnet152",
}


@dataclass
class Setup:
    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 means no autocast
    channels_last: bool
    compile: bool
    input_size: int
    warmup: int
    steps: int
    repeats: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """FLOP/s of an ``n x n`` by ``n x n`` matrix product in ``dtype`` (best of a few runs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    best = float("inf")
    reps = 20 if device.type == "cuda" else 3
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best


def train_step(model: nn.Module, s: Setup) -> tuple[Callable[[torch.Tensor], None], int]:
    """Move ``model`` to the device; return a training-step function and its forward FLOPs.

    The step is forward (under autocast in ``s.dtype``, compiled with ``s.compile``), a loss,
    backward and an SGD-with-momentum update; the FLOPs are those of one image's forward pass
    from :func:`metricface.backbones.profile`.
    """
    flops = B.profile(model, (3, s.input_size, s.input_size)).flops
    model = model.to(s.device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    fwd = torch.compile(model) if s.compile else model
    amp = (
        torch.autocast(s.device.type, dtype=s.dtype)
        if s.dtype != torch.float32
        else contextlib.nullcontext()
    )

    def step(x: torch.Tensor) -> None:
        with amp:
            out = fwd(x)
        loss = out.float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, flops


def images_per_second(
    step: Callable[[torch.Tensor], None], x: torch.Tensor, n: int, dev: torch.device
) -> float:
    """Images/s of ``n`` calls of ``step(x)``, the device synchronised before and after."""
    _sync(dev)
    t = time.perf_counter()
    for _ in range(n):
        step(x)
    _sync(dev)
    return x.shape[0] * n / (time.perf_counter() - t)


def bench_pair(name: str, batch: int, s: Setup) -> dict[str, float]:
    """Images/s (median over repeats), forward FLOPs and peak memory of ours and the peer."""
    import torchvision  # the peer (imported here: the other helpers do without it)

    torch.manual_seed(0)
    kw = {"input_size": s.input_size} if name.startswith("iresnet") else {}
    models = {
        "ours": B.build_backbone(name, **kw),
        "peer": getattr(torchvision.models, PEER[name])(),
    }
    x = torch.randn(batch, 3, s.input_size, s.input_size, device=s.device)
    if s.channels_last:
        x = x.to(memory_format=torch.channels_last)
    steps, result = {}, {}
    for key, model in models.items():
        # both networks stay resident, so a network's peak is counted from what was allocated
        # before it was moved to the device (the input and the other network's parameters and
        # momentum): its own parameters, gradients, momentum and activations
        _sync(s.device)
        base = torch.cuda.memory_allocated(s.device) if s.device.type == "cuda" else 0
        steps[key], result[f"{key}_flops"] = train_step(model, s)
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(s.device)
        for _ in range(s.warmup):  # includes torch.compile's compilation with --compile
            steps[key](x)
        _sync(s.device)
        if s.device.type == "cuda":
            result[f"{key}_mem"] = (torch.cuda.max_memory_allocated(s.device) - base) / 2**30
    rates: dict[str, list[float]] = {"ours": [], "peer": []}
    for _ in range(s.repeats):
        for key in rates:
            rates[key].append(images_per_second(steps[key], x, s.steps, s.device))
    for key, r in rates.items():
        result[key] = statistics.median(r)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--models", nargs="+", default=None, choices=sorted(PEER))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input side (default 112; 64 with --quick)",
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="autocast dtype (default: fp32 on CPU, bf16 on CUDA)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on for CUDA, off for CPU",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--matmul-size", type=int, default=None, help="side of the peak-FLOPs matmul")
    p.add_argument("--quick", action="store_true", help="small smoke run")
    a = p.parse_args(argv)
    import torchvision

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    cuda = device.type == "cuda"
    if cuda:  # let cuDNN pick the fastest convolution algorithms for the fixed shapes
        torch.backends.cudnn.benchmark = True
    dtype_name = a.dtype or ("bf16" if cuda else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    models = a.models or (["resnet18", "iresnet18", "resnet50"] if a.quick else sorted(PEER))
    batches = a.batch_sizes or ([4] if a.quick else ([128, 256] if cuda else [16]))
    s = Setup(
        device=device,
        dtype=dtype,
        channels_last=cuda if a.channels_last is None else a.channels_last,
        compile=a.compile,
        input_size=a.input_size or (64 if a.quick else 112),
        warmup=a.warmup if a.warmup is not None else (1 if a.quick else (10 if cuda else 2)),
        steps=a.steps if a.steps is not None else (2 if a.quick else (30 if cuda else 5)),
        repeats=2 if a.quick else a.repeats,
    )
    mm = a.matmul_size or (8192 if cuda else 2048)
    peak = peak_matmul_flops(device, dtype, mm)

    name = torch.cuda.get_device_name(device) if cuda else cpu_model()
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {name}, "
        f"threads {torch.get_num_threads()}"
    )
    print(
        f"dtype {dtype_name}, channels_last {s.channels_last}, compile {s.compile}, "
        f"input {s.input_size}x{s.input_size}, {s.warmup} warm-up + {s.repeats} x {s.steps} "
        f"timed steps; peak {dtype_name} matmul ({mm}^3) {peak / 1e12:.2f} TFLOP/s"
    )
    cols = [
        "case",
        "peer",
        "GFLOPs/img",
        "metricface img/s",
        "torchvision img/s",
        "ratio",
        "MFU ours",
        "MFU peer",
    ]
    if cuda:
        cols += ["mem ours GiB", "mem peer GiB"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for model_name in models:
        for batch in batches:
            try:
                r = bench_pair(model_name, batch, s)
            except torch.OutOfMemoryError:  # record the cell and go on with the next case
                torch.cuda.empty_cache()
                row = [f"{model_name} b{batch}", PEER[model_name]] + ["OOM"] * (len(cols) - 2)
                print("| " + " | ".join(row) + " |", flush=True)
                continue
            mfu = {k: 3 * r[f"{k}_flops"] * r[k] / peak for k in ("ours", "peer")}
            row = [
                f"{model_name} b{batch}",
                PEER[model_name],
                f"{r['ours_flops'] / 1e9:.2f}",
                f"{r['ours']:.1f}",
                f"{r['peer']:.1f}",
                f"{r['ours'] / r['peer']:.2f}",
                f"{100 * mfu['ours']:.1f}%",
                f"{100 * mfu['peer']:.1f}%",
            ]
            if cuda:
                row += [f"{r['ours_mem']:.2f}", f"{r['peer_mem']:.2f}"]
            print("| " + " | ".join(row) + " |", flush=True)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``"CPU"`` where that is unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


if __name__ == "__main__":
    main()
