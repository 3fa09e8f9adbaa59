"""Train on genuine / impostor pairs with a contrastive loss, optionally plus an ArcFace head.

Pairs come from :class:`metricface.samplers.PairSampler` (a genuine pair with probability
``--pos-prob``); each batch holds ``B`` pairs, and :class:`metricface.losses.ContrastiveLoss`
scores exactly those pairs (no mining). ``--arcface-weight w`` adds ``w`` times an ArcFace loss
on the same images, the usual way to give a pair-trained network class structure::

    python examples/train_pairs.py                       # contrastive only
    python examples/train_pairs.py --arcface-weight 1.0  # contrastive + ArcFace

Evaluation is verification on held-out identities, as in ``train_vggface2.py``: every epoch
appends a row to ``log.csv`` and atomically rewrites ``checkpoint.pt`` (``--output DIR
--resume`` continues an interrupted run exactly); the end writes ``report.txt``, ``roc.png``
and ``embeddings.png`` (``--no-plots`` skips the plots) into ``--output``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

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
RESUME_KEYS = (*C.RESUME_KEYS, "pos_prob", "arcface_weight", "neg_margin")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p, epochs=8, lr=0.05)
    p.add_argument("--pos-prob", type=float, default=0.5, help="probability of a genuine pair")
    p.add_argument("--arcface-weight", type=float, default=0.0, help="0: contrastive only")
    p.add_argument("--neg-margin", type=float, default=1.0, help="contrastive negative margin")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--no-plots", action="store_true")
    C.add_resume_args(p)
    args = C.parse_args(p, argv)
    C.check_resume_args(p, args)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    out = C.output_dir(args, "train_pairs")

    train, held, held_raw = C.build_datasets(args)
    size = held[0][0].shape[-1]
    num_classes = int(train.labels.max()) + 1
    model = C.build_model(args, size).to(device)
    contrastive = ContrastiveLoss(neg_margin=args.neg_margin)
    arcface = ArcFaceLoss(num_classes, args.embedding_dim, scale=32.0).to(device)
    params = list(model.parameters()) + (
        list(arcface.parameters()) if args.arcface_weight > 0 else []
    )
    opt = make_optimizer(params, args, args.lr)
    sampler = PairSampler(train.labels, args.pos_prob, seed=args.seed)
    loader = DataLoader(
        LabelledPairs(train),
        sampler=sampler,
        batch_size=args.batch_size,
        drop_last=True,
        num_workers=args.workers,
    )
    sched = one_cycle(opt, args, C.check_batches(loader, "pairs per epoch"))
    state = nn.ModuleDict({"backbone": model, "arcface": arcface})  # one module to checkpoint
    ckpt = C.resume(
        args, RESUME_KEYS, model=state, optimizer=opt, scheduler=sched, map_location=device
    )
    start_epoch = 0 if ckpt is None else ckpt["epoch"]
    if ckpt is not None:
        print(f"resumed from {ckpt['path']} at epoch {start_epoch}")
    log = C.CsvLog(out / "log.csv", ["epoch", "loss", "lr", "eer", "auc"], keep=start_epoch)
    baseline = C.raw_pixel_report(held_raw, size)
    print(f"raw-pixel baseline EER {baseline.eer:.4f}")
    report = None
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        total = 0.0
        bar = C.progress(loader, len(loader), f"epoch {epoch + 1}", not args.no_progress)
        for a, b, la, lb, same in bar:
            a, b, same = a.to(device), b.to(device), same.to(device)
            emb = model(torch.cat([a, b]))
            loss = contrastive_on_pairs(contrastive, emb, same)
            if args.arcface_weight > 0:
                labels = torch.cat([la, lb]).to(device)
                loss = loss + args.arcface_weight * arcface(emb, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        report, emb, labels = C.evaluate(model, held, args, device)
        row = {"epoch": epoch + 1, "loss": total / len(loader), "lr": opt.param_groups[0]["lr"]}
        log.write({**row, "eer": report.eer, "auc": report.auc})
        print(
            f"epoch {epoch + 1}  loss {row['loss']:.4f}  held-out EER {report.eer:.4f}",
            flush=True,
        )
        save_checkpoint(
            out / "checkpoint.pt",
            model=state,
            optimizer=opt,
            scheduler=sched,
            epoch=epoch + 1,
            step=(epoch + 1) * len(loader),
            extra={"config": vars(args)},
        )
        if args.stop_after_epoch is not None and epoch + 1 >= args.stop_after_epoch:
            print(f"stopping after epoch {epoch + 1} as asked (--stop-after-epoch)")
            break
    if report is None:  # a resumed run with no epoch left
        report, emb, labels = C.evaluate(model, held, args, device)
    (out / "report.txt").write_text(str(report) + "\n")
    print(report)
    if not args.no_plots:
        C.save_plots(out, report, emb, labels)
    print(f"raw-pixel EER {baseline.eer:.4f} -> trained EER {report.eer:.4f}; outputs in {out}")
    return {"eer": report.eer, "baseline_eer": baseline.eer, "output": str(out)}


if __name__ == "__main__":
    main()
