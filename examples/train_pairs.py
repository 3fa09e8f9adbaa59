"""Train on genuine / impostor pairs with a contrastive loss, optionally plus an ArcFace head.

Pairs come from :class:`metricface.samplers.PairSampler` (a genuine pair with probability
``--pos-prob``); each batch holds ``B`` pairs, and :class:`metricface.losses.ContrastiveLoss`
scores exactly those pairs (no mining). ``--arcface-weight w`` adds ``w`` times an ArcFace loss
on the same images, the usual way to give a pair-trained network class structure::

    python examples/train_pairs.py                       # contrastive only
    python examples/train_pairs.py --arcface-weight 1.0  # contrastive + ArcFace

Evaluation is verification on held-out identities, as in ``train_vggface2.py``: every epoch
appends a row to ``log.csv`` and atomically rewrites ``checkpoint.pt`` (``--output DIR
--resume`` continues an interrupted run exactly); the end writes ``report.txt`` and the plots
it lists (``--no-plots`` skips them) into ``--output``.

Multi-GPU (or several CPU processes): ``torchrun --nproc-per-node 2 examples/train_pairs.py``.
Each rank draws its own share of the pairs (``PairSampler`` shards them), DDP averages the
gradients, and rank 0 alone evaluates and writes the run folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli as cli
import _common as C
import _runs as runs

from metricface.checkpoint import save_checkpoint
from metricface.losses import ArcFaceLoss, ContrastiveLoss
from metricface.samplers import PairSampler


class LabelledPairs(Dataset):
    """``(i, j, same)`` from a PairSampler -> ``(image_i, image_j, label_i, label_j, same)``."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, pair):
        i, j, same = pair
        (a, la), (b, lb) = self.dataset[i], self.dataset[j]
        return a, b, la, lb, same


def pair_indices(same: torch.Tensor):
    """Index tuple (a1, p, a2, n) over cat([left, right]): pair k joins k and B + k."""
    b = len(same)
    k = torch.arange(b, device=same.device)
    pos, neg = same.bool(), ~same.bool()
    return k[pos], (k + b)[pos], k[neg], (k + b)[neg]


def contrastive_on_pairs(loss_fn: ContrastiveLoss, emb: torch.Tensor, same: torch.Tensor):
    """``loss_fn`` over exactly the ``B`` pairs ``(k, B + k)`` of ``emb = cat([left, right])``."""
    k = torch.arange(len(same), device=same.device)
    # pseudo-labels consistent with the pairs (the index tuple decides what is scored)
    pseudo = torch.cat([k, torch.where(same.bool(), k, k + len(same))])
    return loss_fn(emb, pseudo, pair_indices(same))


def make_optimizer(params, args: argparse.Namespace, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW, as ``--optimizer`` asks."""
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=args.weight_decay)


def one_cycle(opt, args: argparse.Namespace, steps_per_epoch: int):
    """One-cycle schedule whose warm-up lasts ``--warmup-epochs`` (at most half the run)."""
    pct = min(0.5, max(args.warmup_epochs, 1e-3) / max(args.epochs, 1))
    total = max(1, args.epochs * steps_per_epoch)
    if round(pct * total, 6) == 1:  # a one-step warm-up, where OneCycleLR divides by zero
        pct = 0.5 / total
    return torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=total, pct_start=pct)


#: Settings a resumed run must share with its checkpoint, beyond the common ones.
RESUME_KEYS = (*runs.RESUME_KEYS, "pos_prob", "arcface_weight", "neg_margin")
OUTPUTS = ("checkpoint.pt", "log.csv", "report.txt", *C.PLOTS)
SCRIPT = "train_pairs.py"


class PairObjective(nn.Module):
    """Backbone + ArcFace head in one module: one checkpoint, one DDP wrapper."""

    def __init__(self, backbone: nn.Module, arcface: ArcFaceLoss, args) -> None:
        super().__init__()
        self.backbone, self.arcface = backbone, arcface
        self.contrastive = ContrastiveLoss(neg_margin=args.neg_margin)
        self.arcface_weight = args.arcface_weight

    def forward(self, a, b, la, lb, same) -> torch.Tensor:
        emb = self.backbone(torch.cat([a, b]))
        loss = contrastive_on_pairs(self.contrastive, emb, same)
        if self.arcface_weight > 0:
            loss = loss + self.arcface_weight * self.arcface(emb, torch.cat([la, lb]))
        return loss


def build_parser() -> cli.Parser:
    p = cli.Parser(__doc__, SCRIPT)
    cli.add_common_args(p, epochs=8, lr=0.05)
    g = p.add_argument_group("pairs")
    g.add_argument(
        "--pos-prob",
        type=cli.number(float, 0, 1, what="a probability in [0, 1]"),
        default=0.5,
        help="probability that a pair is genuine",
    )
    g.add_argument(
        "--arcface-weight",
        type=cli.NON_NEGATIVE_FLOAT,
        default=0.0,
        help="weight of an added ArcFace loss (0: contrastive only)",
    )
    g.add_argument(
        "--neg-margin", type=float, default=1.0, help="contrastive loss's negative margin"
    )
    g = cli.group(p, "run")
    cli.add_resume_args(g)
    g.add_argument("--no-plots", action="store_true", help="write no plots")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line (raises ``_cli.UsageError`` on a mistake)."""
    return cli.parse_args(build_parser(), argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    folder = runs.RunFolder(args, "train_pairs", OUTPUTS)  # checked before any work
    resumed = runs.read_resume(args, folder)
    runs.check_resume(resumed, args, RESUME_KEYS)
    data = C.open_data(args) if args.data is not None else None

    rank, world, device = C.init_distributed(args)
    distributed, main_proc = world > 1, rank == 0
    # one random stream per rank, so ranks do not flip and crop their i-th images alike;
    # DDP starts every rank from rank 0's initial weights
    torch.manual_seed(args.seed + rank)
    train, held, held_raw = C.build_datasets(args, data)
    num_classes = int(train.labels.max()) + 1
    try:
        sampler = PairSampler(
            train.labels, args.pos_prob, num_replicas=world, rank=rank, seed=args.seed
        )
    except ValueError as exc:
        raise cli.UsageError(f"--pos-prob {args.pos_prob}: {exc}") from None
    loader = DataLoader(
        LabelledPairs(train),
        sampler=sampler,
        batch_size=args.batch_size,
        drop_last=True,
        num_workers=args.workers,
    )
    steps = C.check_batches(loader, "pairs per epoch" + (" on each rank" if distributed else ""))
    model = C.build_model(args)
    arcface = ArcFaceLoss(num_classes, args.embedding_dim, scale=32.0)
    arcface.requires_grad_(args.arcface_weight > 0)  # unused: neither trained nor synchronised
    objective = PairObjective(model, arcface, args).to(device)
    opt = make_optimizer([q for q in objective.parameters() if q.requires_grad], args, args.lr)
    sched = one_cycle(opt, args, steps)
    train_model: nn.Module = objective
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )

    out = folder.create() if main_proc else folder.path
    with runs.guarded(folder, args, world):  # Ctrl-C or an error: keep what is saved, say how on
        start_epoch = 0
        if resumed is not None:
            ckpt = runs.restore(
                resumed,
                folder,
                model=objective,
                optimizer=opt,
                scheduler=sched,
                map_location=device,
                restore_rng=not distributed,  # each rank restores its own state below
            )
            start_epoch = ckpt["epoch"]
            if distributed:
                C.restore_rank_rng(ckpt["extra"].get("rng_per_rank"), rank, world)
            if main_proc:
                print(f"resumed from {resumed.path} at epoch {start_epoch}")
        if main_proc:
            log = C.CsvLog(out / "log.csv", ["epoch", "loss", "lr", "eer", "auc"], start_epoch)
            baseline = C.raw_pixel_report(held_raw, args.image_size)
            print(f"raw-pixel baseline EER {baseline.eer:.4f}")
        report = None
        for epoch in range(start_epoch, args.epochs):
            sampler.set_epoch(epoch)
            train_model.train()
            total = 0.0
            show = main_proc and not args.no_progress
            for batch in C.progress(loader, len(loader), f"epoch {epoch + 1}", show):
                loss = train_model(*(t.to(device) for t in batch))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item()
            rng_per_rank = C.gather_rank_rng() if distributed else None
            if main_proc:
                report, emb, labels = C.evaluate(model, held, args, device)
                row = {"epoch": epoch + 1, "loss": total / steps, "lr": opt.param_groups[0]["lr"]}
                with runs.interrupts_deferred():  # the row and the checkpoint land together
                    log.write({**row, "eer": report.eer, "auc": report.auc})
                    save_checkpoint(
                        out / "checkpoint.pt",
                        model=objective,
                        optimizer=opt,
                        scheduler=sched,
                        epoch=epoch + 1,
                        step=(epoch + 1) * steps,
                        extra={"config": cli.config(args), "rng_per_rank": rng_per_rank},
                    )
                    folder.saved_epoch = epoch + 1
                print(
                    f"epoch {epoch + 1}  loss {row['loss']:.4f}  held-out EER {report.eer:.4f}",
                    flush=True,
                )
            if distributed:
                dist.barrier()
            if runs.stop_requested(args, epoch + 1, main_proc):
                break
        result: dict = {}
        if main_proc:
            if report is None:  # a resumed run with no epoch left
                report, emb, labels = C.evaluate(model, held, args, device)
            result = C.finish(out, args, report, emb, labels, baseline)
        if distributed:
            dist.destroy_process_group()
        return result


if __name__ == "__main__":
    raise SystemExit(cli.run(main, SCRIPT))
