"""Train a face recogniser and evaluate it on identities it never saw.

With no arguments it trains a small IResNet-18 on metricface's built-in synthetic faces and
verifies held-out identities, in a few minutes on two CPU cores::

    python examples/train_vggface2.py

On a real identity-per-folder dataset (VGGFace2, CASIA-WebFace) or InsightFace pack (MS1M,
Glint360K, WebFace: ``--data faces_emore/train.rec``), on a GPU::

    python examples/train_vggface2.py --data /data/vggface2/train --backbone iresnet50 \\
        --width 1 --embedding-dim 512 --batch-size 256 --epochs 20 --amp bf16 --channels-last

Multi-GPU: ``torchrun --nproc-per-node 4 examples/train_vggface2.py --data ...``. The settings
of a published arcface_torch configuration: ``--recipe ms1mv3_r50`` (``--help`` lists them);
with ``--sample-rate`` the class centers are trained with Partial FC, sharded over the GPUs.
Resume an interrupted run exactly: ``--output <dir> --resume``.

Every epoch evaluates verification on every pair of held-out images (EER, TAR@FAR), and on
the ``--val-bin`` sets (``lfw.bin``, ``cfp_fp.bin``, ...) with the LFW protocol, and writes a
row of ``log.csv`` and ``checkpoint.pt`` (atomically). The end writes ``report.txt`` and the
plots it lists: ``roc.png``, ``det.png``, ``scores.png`` (genuine/impostor score histograms),
``embeddings.png`` (t-SNE of held-out identities) and, with ``--val-bin``, ``val_roc.png``.
Load the trained backbone with ``metricface.checkpoint.load_backbone(path, model)``.

Ctrl-C keeps the last finished epoch's checkpoint and prints the command that continues the
run; a used ``--output`` is refused unless ``--resume`` or ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli as cli
import _common as C
import _partial_fc as pfc
import _recipes as recipes
import _runs as runs

from metricface import losses, miners
from metricface.checkpoint import save_checkpoint
from metricface.distributed import get_rank
from metricface.samplers import IdentityBatchSampler

SCRIPT = "train_vggface2.py"

CLASS_LOSSES = {
    "arcface": losses.ArcFaceLoss,
    "cosface": losses.CosFaceLoss,
    "sphereface": losses.SphereFaceLoss,
    "subcenter": losses.SubCenterArcFaceLoss,
    "adaface": losses.AdaFaceLoss,
    "normsoftmax": losses.NormSoftmaxLoss,
}
SCALES = {"adaface": 64.0}  # default logit scale where it is not 32
PAIR_LOSSES = ("contrastive", "triplet")
MINERS = {
    "batchhard": miners.BatchHardMiner,
    "semihard": miners.SemiHardMiner,
    "batchall": miners.BatchAllMiner,
    "multisimilarity": miners.MultiSimilarityMiner,
    "pairmargin": miners.PairMarginMiner,
    "none": None,
}


class Objective(nn.Module):
    """Backbone + loss in one module, so DDP synchronises replicated class centers too.

    Class centers sharded over the ranks (Partial FC) must not be averaged by DDP: then
    :func:`main` wraps only the backbone in DDP, in an ``Objective`` whose ``grad_scale`` is
    the number of ranks. That undoes DDP's averaging of the backbone's gradients (each rank's
    embeddings already receive the gradient of the loss of the global batch), so the backbone
    trains as one process on the global batch would (and as arcface_torch does). Checkpoints
    gather the shards (``_partial_fc.py``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        loss: nn.Module,
        miner: nn.Module | None,
        grad_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone, self.loss, self.miner = backbone, loss, miner
        self.grad_scale = grad_scale

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = self.backbone(images).float()  # losses run in float32 under autocast
        if self.grad_scale != 1.0 and emb.requires_grad:
            emb.register_hook(lambda g: g * self.grad_scale)
        if self.miner is not None:
            return self.loss(emb, labels, self.miner(emb, labels))
        return self.loss(emb, labels)


#: Flags that apply only to some runs (see ``_common.Rule``): given explicitly where they do
#: not apply, they are refused instead of being silently ignored.
RULES: dict[str, cli.Rule] = {
    **cli.DATA_RULES,
    "miner": ("loss", lambda v: v in PAIR_LOSSES, "pair losses (--loss contrastive, triplet)"),
    "P": ("loss", lambda v: v in PAIR_LOSSES, "pair losses (--loss contrastive, triplet)"),
    "K": ("loss", lambda v: v in PAIR_LOSSES, "pair losses (--loss contrastive, triplet)"),
    "batch_size": (
        "loss",
        lambda v: v not in PAIR_LOSSES,
        "class-center losses (a pair loss's batch is --P identities x --K images)",
    ),
    "scale": ("loss", lambda v: v in CLASS_LOSSES, "margin-softmax losses (a logit scale)"),
    "margin": ("loss", lambda v: v != "normsoftmax", "losses with a margin"),
    "sample_rate": ("loss", lambda v: v in CLASS_LOSSES, "margin-softmax losses (Partial FC)"),
    "chunk_size": ("loss", lambda v: v in CLASS_LOSSES, "margin-softmax losses (class blocks)"),
    "recipe": ("loss", lambda v: v in CLASS_LOSSES, "margin-softmax losses (Partial FC)"),
}

#: Files a run writes into its folder (what --overwrite replaces).
OUTPUTS = ("checkpoint.pt", "log.csv", "report.txt", *C.PLOTS, "tb")
#: What each --recipe sets (argparse destinations -> values).
PRESETS = {name: r.flags() for name, r in recipes.RECIPES.items()}


def build_parser() -> cli.Parser:
    p = cli.Parser(__doc__, SCRIPT)
    cli.add_common_args(p, epochs=8, lr=0.1)
    g = p.add_argument_group("loss")
    g.add_argument(
        "--loss",
        choices=(*CLASS_LOSSES, *PAIR_LOSSES),
        default="cosface",
        help="margin-softmax losses train class centers; contrastive and triplet train on "
        "pairs from --P x --K batches",
    )
    g.add_argument(
        "--margin",
        type=float,
        help="margin of the loss (radians for arcface; contrastive: the negative margin; "
        "default: the loss's own)",
    )
    g.add_argument(
        "--scale",
        type=cli.POSITIVE_FLOAT,
        help="logit scale of margin-softmax losses (default: 32; adaface 64)",
    )
    g.add_argument(
        "--miner", choices=tuple(MINERS), default="batchhard", help="pair mining (pair losses)"
    )
    g.add_argument(
        "--P", type=cli.AT_LEAST_TWO, default=16, help="identities per batch (pair losses)"
    )
    g.add_argument(
        "--K", type=cli.AT_LEAST_TWO, default=4, help="images per identity (pair losses)"
    )
    g.add_argument(
        "--sample-rate",
        type=cli.number(float, 0, 1, above=True, what="a fraction in (0, 1]"),
        metavar="RATE",
        help="train the class centers with Partial FC: each step scores the batch's classes "
        "plus random others, RATE of all; under torchrun the centers are sharded over the "
        "ranks (default: no Partial FC, every center every step, replicated on every rank)",
    )
    g.add_argument(
        "--chunk-size",
        type=cli.POSITIVE_INT,
        metavar="N",
        help="score the class centers in blocks of N with an online softmax: memory for the "
        "logits of N classes instead of all (default: one block)",
    )
    g = cli.group(p, "optimisation")
    g.add_argument(
        "--schedule",
        choices=("cosine", "poly"),
        default="cosine",
        help="after the warm-up: cosine decay to 0, or arcface_torch's polynomial decay "
        "(1 - progress)^2 after a linear warm-up from 0",
    )
    g.add_argument(
        "--clip-grad-norm",
        type=cli.POSITIVE_FLOAT,
        metavar="MAX",
        help="clip the backbone's gradient norm to MAX every step (default: no clipping)",
    )
    g = cli.group(p, "data")
    g.add_argument(
        "--augment",
        choices=("mild", "flip"),
        default="mild",
        help="training augmentation: a flip, a slightly re-scaled crop and colour jitter, or "
        "horizontal flips only (as arcface_torch trains)",
    )
    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--val-bin",
        nargs="+",
        default=[],
        metavar="FILE",
        help="verification .bin sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...) evaluated every "
        "epoch with the LFW protocol (10-fold accuracy with flip TTA, EER, TAR@FAR), beside "
        "the held-out identities (default: none)",
    )
    g = p.add_argument_group("recipe")
    g.add_argument(
        "--recipe",
        choices=tuple(recipes.RECIPES),
        metavar="NAME",
        help="the settings of a published arcface_torch configuration as defaults (flags "
        "given explicitly, --tiny included, still win): "
        + ", ".join(recipes.RECIPES)
        + "; see the documentation's page on the published recipes",
    )
    g = p.add_argument_group("speed")
    g.add_argument(
        "--amp", choices=("none", "bf16", "fp16"), default="none", help="mixed precision"
    )
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    g = cli.group(p, "run")
    cli.add_resume_args(g)
    g.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    g.add_argument("--no-plots", action="store_true", help="write no plots")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line (raises ``_cli.UsageError`` on a mistake)."""
    p = build_parser()
    args = cli.parse_args(p, argv, RULES, PRESETS, P=8, K=4)
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        p.error("--tensorboard needs the tensorboard package: pip install tensorboard")
    return args


def build_loss(args, num_classes: int, distributed: bool) -> tuple[nn.Module, nn.Module | None]:
    """The loss and the miner (``None`` for class-center losses) of ``args``.

    With ``--sample-rate`` the class-center loss trains with Partial FC: it scores the batch's
    classes plus random others, and under torchrun (built after the process group is joined)
    shards its class centers over the ranks.
    """
    if args.loss in CLASS_LOSSES:
        kw: dict = {"scale": args.scale if args.scale is not None else SCALES.get(args.loss, 32.0)}
        if args.margin is not None:
            kw["margin"] = args.margin
        if args.chunk_size is not None:
            kw["chunk_size"] = args.chunk_size
        if args.sample_rate is not None:
            kw["sample_rate"] = args.sample_rate
            kw["process_group"] = dist.group.WORLD if distributed else None
        return CLASS_LOSSES[args.loss](num_classes, args.embedding_dim, **kw), None
    base = (
        losses.ContrastiveLoss(neg_margin=args.margin)
        if args.loss == "contrastive"
        else losses.TripletMarginLoss(margin=args.margin if args.margin is not None else 0.1)
    )
    miner = MINERS[args.miner]() if MINERS[args.miner] is not None else None
    if distributed:
        return losses.DistributedLossWrapper(base, miner), None
    return base, miner


def build_optimizer(params, args) -> torch.optim.Optimizer:
    """SGD with momentum 0.9, or AdamW; one parameter group (backbone and class centers)."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def poly_factor(step: int, warm: int, total: int) -> float:
    """arcface_torch's learning-rate factor: ``step / warm`` during the warm-up, then
    ``(1 - (step - warm) / (total - warm)) ** 2`` (0 from ``total`` on)."""
    if step < warm:
        return step / warm
    return max(0.0, 1.0 - (step - warm) / max(1, total - warm)) ** 2


def make_scheduler(opt, args, steps_per_epoch: int):
    """Stepped every batch: ``--warmup-epochs`` of linear warm-up, then ``--schedule``."""
    total = max(1, args.epochs * steps_per_epoch)
    warm = min(total - 1, int(args.warmup_epochs * steps_per_epoch))
    if args.schedule == "poly":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: poly_factor(s, warm, total))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warm))
    if warm <= 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(opt, 0.01, 1.0, total_iters=warm)
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warm])


def evaluate_val_bins(val_sets, objective: Objective, device: torch.device):
    """The ``--val-bin`` table, drawing nothing from the training's random streams (the
    trained weights are the same with or without ``--val-bin``)."""
    with torch.random.fork_rng(devices=[]):
        return val_sets.evaluate(objective.backbone, device=device)


def recipe_note(args: argparse.Namespace, world: int, num_classes: int) -> str:
    """What ``--recipe`` was published with beside what this run has (batch, identities)."""
    r = recipes.RECIPES[args.recipe]
    return (
        f"recipe {r.name} (arcface_torch configs/{r.name}.py) was published for {r.gpus} GPUs "
        f"x {r.batch_per_gpu} = {r.total_batch} images per step on {r.dataset} "
        f"({r.identities:,} identities); this run: {world} x {args.batch_size} = "
        f"{world * args.batch_size} per step, {num_classes:,} identities"
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    # everything is checked before any data is built or any file written (on every rank,
    # before any rank can create the folder)
    folder = runs.RunFolder(args, "train_vggface2", OUTPUTS)
    resumed = runs.read_resume(args, folder)
    runs.check_resume(resumed, args, runs.RESUME_KEYS)
    data = C.open_data(args) if args.data is not None else None
    val_sets = C.open_val_bins(args)

    rank, world, device = C.init_distributed(args)
    distributed = world > 1
    main_proc = get_rank() == 0
    if not main_proc:
        val_sets = None  # rank 0 evaluates
    # one random stream per rank, so ranks do not flip and crop their i-th images alike;
    # DDP starts every rank from rank 0's initial weights
    torch.manual_seed(args.seed + rank)

    train_set, held, held_raw = C.build_datasets(args, data)
    num_classes = int(train_set.labels.max()) + 1
    pair_loss = args.loss in PAIR_LOSSES
    if pair_loss:
        try:
            batch_sampler = IdentityBatchSampler(
                train_set.labels, args.P, args.K, num_replicas=world, rank=rank, seed=args.seed
            )
        except ValueError as exc:
            raise cli.UsageError(f"--P {args.P} --K {args.K}: {exc}") from None
        sampler = None
    elif distributed:
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=args.seed)
    loader_kw = dict(num_workers=args.workers, pin_memory=device.type == "cuda")

    def make_loader(epoch: int) -> DataLoader:
        if pair_loss:
            batch_sampler.set_epoch(epoch)
            return DataLoader(train_set, batch_sampler=batch_sampler, **loader_kw)
        if distributed:
            sampler.set_epoch(epoch)
            s = sampler
        else:  # a fresh, epoch-seeded shuffle: the order depends only on (seed, epoch)
            s = RandomSampler(train_set, generator=torch.Generator().manual_seed(args.seed + epoch))
        return DataLoader(
            train_set, batch_size=args.batch_size, sampler=s, drop_last=True, **loader_kw
        )

    steps_per_epoch = C.check_batches(make_loader(0), "training images per epoch")
    backbone = C.build_model(args)
    loss, miner = build_loss(args, num_classes, distributed)
    objective = Objective(backbone, loss, miner).to(device)
    sharded = pfc.sharded_loss(objective) is not None
    if args.channels_last:
        objective = objective.to(memory_format=torch.channels_last)
    params = [q for q in objective.parameters() if q.requires_grad]
    opt = build_optimizer(params, args)
    sched = make_scheduler(opt, args, steps_per_epoch)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    if scaler.is_enabled():  # a step the scaler skips (inf gradients) is not a wrong call order
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
    train_model: nn.Module = objective
    if args.compile:
        objective.backbone.compile()  # in place: state_dict keys stay those of the backbone
    if distributed:
        ids = [device.index] if device.type == "cuda" else None
        if sharded:  # DDP replicates the backbone only; each rank keeps its own class centers
            ddp = nn.parallel.DistributedDataParallel(objective.backbone, device_ids=ids)
            train_model = Objective(ddp, objective.loss, None, grad_scale=world)
        else:
            train_model = nn.parallel.DistributedDataParallel(objective, device_ids=ids)

    out = folder.create() if main_proc else folder.path
    with runs.guarded(folder, args, world):  # Ctrl-C or an error: keep what is saved, say how on
        start_epoch, step, history = 0, 0, []
        if resumed is not None:
            ckpt = runs.restore(
                resumed,
                folder,
                scheduler=sched,
                scaler=scaler,
                map_location=device,
                restore_rng=not distributed,  # each rank restores its own state below
            )
            pfc.load_states(ckpt, objective, opt, params)  # this rank's class centers
            start_epoch, step = ckpt["epoch"], ckpt["step"]
            if distributed:
                C.restore_rank_rng(ckpt["extra"].get("rng_per_rank"), rank, world)
            history = list(ckpt["extra"].get("history", []))
            if main_proc:
                print(f"resumed from {resumed.path} at epoch {start_epoch}, step {step}")
                if start_epoch >= args.epochs:
                    print(f"all {args.epochs} epochs are done: nothing left to train, evaluating")

        tb = None
        if main_proc:
            n_held = int(held_raw.labels.max()) + 1
            print(
                f"train: {len(train_set)} images of {num_classes} identities; held "
                f"out: {len(held)} images of {n_held} identities; {args.image_size}x"
                f"{args.image_size}, device {device}"
            )
            if args.recipe:
                print(recipe_note(args, world, num_classes))
            baseline = C.raw_pixel_report(held_raw, args.image_size)
            print(f"raw-pixel baseline on held-out identities: EER {baseline.eer:.4f}")
            log = C.CsvLog(
                out / "log.csv",
                [
                    "epoch",
                    "step",
                    "loss",
                    "lr",
                    "eer",
                    "auc",
                    "tar@far=0.01",
                    "tar@far=0.1",
                    "seconds",
                    *C.val_bin_columns(val_sets),
                ],
                keep=start_epoch,
            )
            if args.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(str(out / "tb"))

        report = emb = labels = val_table = None
        for epoch in range(start_epoch, args.epochs):
            t0 = time.perf_counter()
            train_model.train()
            total, n = 0.0, 0
            loader = make_loader(epoch)
            bar = C.progress(
                loader,
                len(loader),
                f"epoch {epoch + 1}/{args.epochs}",
                main_proc and not args.no_progress,
            )
            for images, target in bar:
                images = images.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                if args.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    value = train_model(images, target)
                opt.zero_grad(set_to_none=True)
                scaler.scale(value).backward()
                if args.clip_grad_norm is not None:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(objective.backbone.parameters(), args.clip_grad_norm)
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                v = value.item()
                total, n = total + v, n + 1
                if not math.isfinite(v):
                    raise FloatingPointError(f"loss became {v} at step {step}")
            row = {
                "epoch": epoch + 1,
                "step": step,
                "loss": total / max(n, 1),
                "lr": opt.param_groups[0]["lr"],
            }
            if main_proc:
                report, emb, labels = C.evaluate(objective.backbone, held, args, device)
                row.update(eer=report.eer, auc=report.auc)
                row.update({f"tar@far={f:g}": t for f, t in zip(report.far_targets, report.tar)})
                if val_sets is not None:
                    val_table = evaluate_val_bins(val_sets, objective, device)
                    row.update(val_table.as_dict())
                row["seconds"] = time.perf_counter() - t0
                history.append({k: float(v) for k, v in row.items()})
            # every rank's RNG states as they are now, so that a resumed run continues each exactly
            rng_per_rank = C.gather_rank_rng() if distributed else None
            # sharded class centers: every rank's, and their optimizer state, on rank 0
            saved_model, saved_opt = pfc.to_save(objective, opt, params)
            if main_proc:
                with runs.interrupts_deferred():  # the row and the checkpoint land together
                    log.write(row)
                    save_checkpoint(
                        out / "checkpoint.pt",
                        model=saved_model,
                        optimizer=saved_opt,
                        scheduler=sched,
                        scaler=scaler,
                        epoch=epoch + 1,
                        step=step,
                        extra={
                            "history": history,
                            "config": cli.config(args),
                            "rng_per_rank": rng_per_rank,
                        },
                    )
                    folder.saved_epoch = epoch + 1
                if tb is not None:
                    for k, v in row.items():
                        tb.add_scalar(k, v, step)
                print(
                    f"epoch {epoch + 1:3d}  loss {row['loss']:.4f}  held-out EER {report.eer:.4f}"
                    f"  TAR@FAR=1e-2 {row['tar@far=0.01']:.4f}  ({row['seconds']:.1f} s)",
                    flush=True,
                )
                if val_table is not None:
                    print(C.format_val_table(val_table, indent="      "), flush=True)
            if distributed:
                dist.barrier()
            if runs.stop_requested(args, epoch + 1, main_proc):
                break

        result = {"history": history}
        if main_proc:
            if report is None:
                report, emb, labels = C.evaluate(objective.backbone, held, args, device)
            if val_sets is not None and val_table is None:
                val_table = evaluate_val_bins(val_sets, objective, device)
            result.update(C.finish(out, args, report, emb, labels, baseline, val_table))
            if tb is not None:
                tb.close()
        if distributed:
            dist.destroy_process_group()
        return result


if __name__ == "__main__":
    raise SystemExit(cli.run(main, SCRIPT))
