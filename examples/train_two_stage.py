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
:func:`metricface.checkpoint.save_checkpoint`.
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p, epochs=6, lr=0.1)
    p.add_argument("--stage2-epochs", type=int, default=3)
    p.add_argument("--stage2-lr", type=float, default=0.01)
    args = C.parse_args(p, argv, stage2_epochs=1)
    if args.data is not None:
        p.error("this example draws distortions with SyntheticFaces; --data is not supported")
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    out = C.output_dir(args, "train_two_stage")
    log = C.CsvLog(out / "log.csv", ["stage", "epoch", "loss"])
    size = args.image_size or 64
    train, _, _ = C.build_datasets(args)
    model = C.build_model(args, size).to(device)

    # stage 1: ArcFace on clean images
    arcface = ArcFaceLoss(int(train.labels.max()) + 1, args.embedding_dim, scale=32.0).to(device)
    opt = make_optimizer([*model.parameters(), *arcface.parameters()], args, args.lr)
    loader = DataLoader(
        train, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers
    )
    sched = one_cycle(opt, args, C.check_batches(loader, "training images per epoch"))
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for x, y in loader:
            loss = arcface(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log.write({"stage": 1, "epoch": epoch + 1, "loss": total / len(loader)})
        print(f"stage 1 epoch {epoch + 1}: loss {total / len(loader):.3f}", flush=True)
    stage1 = nn.ModuleDict({"backbone": model, "arcface": arcface})
    save_checkpoint(
        out / "stage1.pt",
        model=stage1,
        epoch=args.epochs,
        step=args.epochs * len(loader),
        extra={"config": vars(args)},
    )
    top1_stage1 = gallery_top1(model, args, size, device)
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
    loader = DataLoader(
        CleanDistortedPairs(train, distorted),
        sampler=sampler,
        batch_size=args.batch_size,
        drop_last=True,
        num_workers=args.workers,
    )
    contrastive = ContrastiveLoss()
    opt = make_optimizer(model.parameters(), args, args.stage2_lr)
    for epoch in range(args.stage2_epochs):
        sampler.set_epoch(epoch)
        model.train()
        total = 0.0
        for a, b, same in loader:
            same = same.to(device)
            emb = model(torch.cat([a, b]).to(device))
            loss = contrastive_on_pairs(contrastive, emb, same)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        log.write({"stage": 2, "epoch": epoch + 1, "loss": total / len(loader)})
        print(f"stage 2 epoch {epoch + 1}: loss {total / len(loader):.3f}", flush=True)
    stage2 = nn.ModuleDict({"backbone": model})
    save_checkpoint(
        out / "stage2.pt",
        model=stage2,
        epoch=args.stage2_epochs,
        step=args.stage2_epochs * len(loader),
        extra={"config": vars(args)},
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
    main()
