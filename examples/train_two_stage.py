"""Two-stage training for robustness to capture distortions.

Stage 1 trains ArcFace on clean synthetic faces. Stage 2 fine-tunes the backbone with a
contrastive loss on (clean, distorted) pairs: blur, fog, low light, sensor noise and
occlusion, drawn by :class:`metricface.data.SyntheticFaces`. Both stages are evaluated by
identification on held-out people: a gallery of one clean image per person, probed with
distorted images of the same people (top-1 accuracy)::

    python examples/train_two_stage.py

``--output`` receives ``log.csv`` (one row per epoch of either stage), ``report.txt`` (top-1
accuracy after each stage) and the model after each stage, ``stage1.pt`` (backbone and ArcFace
head) and ``stage2.pt`` (backbone), written atomically by
:func:`metricface.checkpoint.save_checkpoint`; ``checkpoint.pt``, rewritten every epoch of
either stage, lets ``--output DIR --resume`` continue an interrupted run exactly.

This example trains in one process; under torchrun it refuses to start (see ``train_pairs.py``
for a pair-trained example that runs under DDP).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli as cli
import _common as C
import _runs as runs
from train_pairs import contrastive_on_pairs, make_optimizer, one_cycle

from metricface.checkpoint import save_checkpoint
from metricface.data import DISTORTIONS, SyntheticFaces, eval_transform, train_transform
from metricface.inference import embed
from metricface.losses import ArcFaceLoss, ContrastiveLoss
from metricface.metrics import top_k_accuracy
from metricface.samplers import PairSampler


class CleanDistortedPairs(Dataset):
    """``(i, j, same)`` -> ``(clean image i, distorted image j, same)``."""

    def __init__(self, clean, distorted) -> None:
        self.clean, self.distorted = clean, distorted

    def __getitem__(self, pair):
        i, j, same = pair
        return self.clean[i][0], self.distorted[j][0], same


def gallery_top1(model, args, size: int, device) -> float:
    """Gallery: image 0 of each held-out person, clean. Probes: their other images, distorted."""
    kw = dict(
        image_size=size,
        seed=args.seed,
        identity_offset=args.identities,
        transform=eval_transform(size),
    )
    n, m = args.eval_identities, args.eval_images
    clean = SyntheticFaces(n, m, **kw)
    distorted = SyntheticFaces(n, m, distortions=DISTORTIONS, distortion_prob=0.6, **kw)
    gal_idx = [i * m for i in range(n)]
    probe_idx = [i * m + j for i in range(n) for j in range(1, m)]
    g, gl = embed(model, DataLoader(torch.utils.data.Subset(clean, gal_idx), 256), device=device)
    p, pl = embed(
        model, DataLoader(torch.utils.data.Subset(distorted, probe_idx), 256), device=device
    )
    return top_k_accuracy(p, pl, g, gl, k=1)


SCRIPT = "train_two_stage.py"
#: Settings a resumed run must share with its checkpoint.
RESUME_KEYS = (*runs.RESUME_KEYS, "stage2_epochs", "stage2_lr")
OUTPUTS = ("checkpoint.pt", "stage1.pt", "stage2.pt", "log.csv", "report.txt")


def build_parser() -> cli.Parser:
    p = cli.Parser(__doc__, SCRIPT)
    cli.add_common_args(p, epochs=6, lr=0.1, folder_data=False)
    g = p.add_argument_group("stage 2")
    g.add_argument(
        "--stage2-epochs",
        type=cli.POSITIVE_INT,
        default=3,
        help="epochs of contrastive fine-tuning on (clean, distorted) pairs after the "
        "--epochs of ArcFace (--tiny: 1)",
    )
    g.add_argument(
        "--stage2-lr",
        type=cli.POSITIVE_FLOAT,
        default=0.01,
        help="learning rate of stage 2 (constant; stage 1 uses --lr, one-cycle)",
    )
    g = cli.group(p, "run")
    cli.add_resume_args(g)
    return p


def parse_args(argv=None):
    """Parse and check the command line (raises ``_cli.UsageError`` on a mistake)."""
    p = build_parser()
    args = cli.parse_args(p, argv, {}, stage2_epochs=1)
    if C.env_rank()[1] > 1:
        p.error(
            f"{SCRIPT} trains in one process: start it with python, not torchrun "
            f"(WORLD_SIZE={C.env_rank()[1]}); train_pairs.py and train_vggface2.py run under DDP"
        )
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    folder = runs.RunFolder(args, "train_two_stage", OUTPUTS)  # checked before any work
    resumed = runs.read_resume(args, folder)
    runs.check_resume(resumed, args, RESUME_KEYS)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    size = args.image_size
    train, _, _ = C.build_datasets(args)
    loader1 = DataLoader(
        train, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers
    )
    steps1 = C.check_batches(loader1, "training images per epoch")
    model = C.build_model(args).to(device)
    arcface = ArcFaceLoss(int(train.labels.max()) + 1, args.embedding_dim, scale=32.0).to(device)
    both = nn.ModuleDict({"backbone": model, "arcface": arcface})  # what checkpoint.pt holds
    opt = make_optimizer([*model.parameters(), *arcface.parameters()], args, args.lr)
    sched = one_cycle(opt, args, steps1)
    e1, e2 = args.epochs, args.stage2_epochs

    out = folder.create()
    with runs.guarded(folder, args):  # Ctrl-C or an error: keep what is saved, say how on
        start = 0 if resumed is None else resumed.epoch
        if resumed is not None:
            if start <= e1:  # stage 1 state: its optimizer and schedule
                runs.restore(resumed, folder, model=both, optimizer=opt, scheduler=sched)
            print(f"resumed from {resumed.path} after {start} of {e1} + {e2} epochs")
        log = C.CsvLog(out / "log.csv", ["stage", "epoch", "loss"], keep=start)

        def save(epoch: int, step: int, optimizer, scheduler=None, **extra) -> None:
            with runs.interrupts_deferred():  # the checkpoint is written whole, Ctrl-C or not
                save_checkpoint(
                    out / "checkpoint.pt",
                    model=both,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    epoch=epoch,
                    step=step,
                    extra={"config": cli.config(args), **extra},
                )
                folder.saved_epoch = epoch

        # stage 1: ArcFace on clean images
        for epoch in range(min(start, e1), e1):
            model.train()
            total = 0.0
            for x, y in loader1:
                loss = arcface(model(x.to(device)), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item()
            log.write({"stage": 1, "epoch": epoch + 1, "loss": total / steps1})
            save(epoch + 1, (epoch + 1) * steps1, opt, sched)
            print(f"stage 1 epoch {epoch + 1}: loss {total / steps1:.3f}", flush=True)
            if runs.stop_requested(args, epoch + 1):
                return {"stopped_after": epoch + 1, "output": str(out)}
        if start <= e1:
            save_checkpoint(
                out / "stage1.pt",
                model=both,
                epoch=e1,
                step=e1 * steps1,
                extra={"config": cli.config(args)},
            )
            top1_stage1 = gallery_top1(model, args, size, device)
        else:  # measured before stage 2 changed the model
            top1_stage1 = resumed.extra["top1_stage1"]
        print(f"after stage 1 (ArcFace, clean): top-1 on distorted probes {top1_stage1:.4f}")

        # stage 2: contrastive on clean / distorted pairs
        distorted = SyntheticFaces(
            args.identities,
            args.images_per_identity,
            image_size=size,
            seed=args.seed,
            distortions=DISTORTIONS,
            distortion_prob=0.6,
            transform=train_transform(size),
            cache=True,
        )
        sampler = PairSampler(train.labels, 0.5, seed=args.seed)
        loader2 = DataLoader(
            CleanDistortedPairs(train, distorted),
            sampler=sampler,
            batch_size=args.batch_size,
            drop_last=True,
            num_workers=args.workers,
        )
        contrastive = ContrastiveLoss()
        opt2 = make_optimizer(model.parameters(), args, args.stage2_lr)
        if start > e1:  # stage 2 state
            runs.restore(resumed, folder, model=both, optimizer=opt2)
        for epoch in range(max(start - e1, 0), e2):
            sampler.set_epoch(epoch)
            model.train()
            total = 0.0
            for a, b, same in loader2:
                same = same.to(device)
                emb = model(torch.cat([a, b]).to(device))
                loss = contrastive_on_pairs(contrastive, emb, same)
                opt2.zero_grad(set_to_none=True)
                loss.backward()
                opt2.step()
                total += loss.item()
            log.write({"stage": 2, "epoch": epoch + 1, "loss": total / len(loader2)})
            step = e1 * steps1 + (epoch + 1) * len(loader2)
            save(e1 + epoch + 1, step, opt2, top1_stage1=top1_stage1)
            print(f"stage 2 epoch {epoch + 1}: loss {total / len(loader2):.3f}", flush=True)
            if epoch + 1 < e2 and runs.stop_requested(args, e1 + epoch + 1):
                return {"stopped_after": e1 + epoch + 1, "output": str(out)}
        save_checkpoint(
            out / "stage2.pt",
            model=nn.ModuleDict({"backbone": model}),
            epoch=e2,
            step=e2 * len(loader2),
            extra={"config": cli.config(args)},
        )
        top1_stage2 = gallery_top1(model, args, size, device)
        summary = (
            f"top-1 on distorted probes, clean gallery ({args.eval_identities} held-out people)\n"
            f"after stage 1 (ArcFace, clean):              {top1_stage1:.4f}\n"
            f"after stage 2 (contrastive, clean/distorted): {top1_stage2:.4f}\n"
        )
        (out / "report.txt").write_text(summary)
        print(summary + f"outputs in {out}")
        return {"top1_stage1": top1_stage1, "top1_stage2": top1_stage2, "output": str(out)}


if __name__ == "__main__":
    raise SystemExit(cli.run(main, SCRIPT))
