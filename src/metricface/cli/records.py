"""``pack-rec`` and ``unpack-rec``: convert between an identity-folder tree and a RecordIO pack.

``python -m metricface unpack-rec PACK DST_ROOT`` writes every image of an InsightFace pack
(:class:`~metricface.data.records.RecordFaces`) to ``DST_ROOT/<identity>/<key>.<ext>``: the
identity is its label zero-padded to one width (:meth:`RecordFaces.identity_name
<metricface.data.records.RecordFaces.identity_name>`), the file name the record key
zero-padded, so :class:`~metricface.data.folder.IdentityFolder` lists the images in pack order
with the pack's labels. Each file is written under a hidden temporary name and renamed when
complete; a second run skips the files that are already there, so an interrupted run is
continued by running the same command again.

``python -m metricface pack-rec SRC_ROOT PACK`` writes the images of an
:class:`~metricface.data.folder.IdentityFolder` tree, identity by identity in its label order,
as a pack (:func:`~metricface.data.records.write_record_pack`) with the header record, the
identity records and ``property``. The pack cannot hold identity names: the labels are the
folder's (sorted names), which ``IdentityFolder(SRC_ROOT).save_label_map`` records.

Neither direction re-encodes an image: the bytes are copied, so a round trip gives identical
files. JPEG, PNG and WebP files are stored as they are (every decoder of packs, Pillow, OpenCV
and MXNet alike, reads all three; the extension ``unpack-rec`` writes follows the bytes); a file
in another format stops ``pack-rec`` with an error naming it, and records in another format
are left out by ``unpack-rec``, which names them at the end and exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from metricface.cli.support import Progress

HELP = {
    "pack-rec": "write an identity-folder tree as an InsightFace RecordIO pack (no re-encoding)",
    "unpack-rec": "write an InsightFace RecordIO pack as an identity-folder tree (resumable)",
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "pack-rec":
        parser.add_argument("src_root", metavar="SRC_ROOT", help="root/<identity>/<image> tree")
        parser.add_argument(
            "pack", metavar="PACK", help="the .rec file to write, or a folder for PACK/train.rec"
        )
        parser.add_argument(
            "--no-header",
            action="store_true",
            help="write a plain pack: no header record and no identity records",
        )
        parser.add_argument("--force", action="store_true", help="replace an existing pack")
    else:
        parser.add_argument(
            "pack", metavar="PACK", help="the .rec file, or a folder holding train.rec"
        )
        parser.add_argument("dst_root", metavar="DST_ROOT", help="where the tree is written")
        parser.add_argument("--idx", help="the index file (default: PACK with the suffix .idx)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    return _pack(args) if args.command == "pack-rec" else _unpack(args)


def _image_extension(data: bytes) -> str | None:
    """``.jpg``, ``.png`` or ``.webp`` from an image's first bytes; ``None`` for other data."""
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return None


def _rec_path(pack: str, *, create: bool) -> Path:
    path = Path(pack)
    if path.suffix == ".rec":
        return path
    if path.is_dir() or create:
        return path / "train.rec"
    raise FileNotFoundError(f"PACK {pack!r} is neither a .rec file nor a folder")


def _pack(args: argparse.Namespace) -> int:
    from metricface.cli import CommandError
    from metricface.data import IdentityFolder, write_record_pack

    rec = _rec_path(args.pack, create=True)
    if not args.force:
        existing = [p for p in (rec, rec.with_suffix(".idx")) if p.exists()]
        if existing:
            raise CommandError(f"{str(existing[0])!r} exists; pass --force to replace the pack")
        prop = rec.parent / "property"
        if prop.exists():  # one per folder: another pack's classes and image size
            raise CommandError(
                f"{str(prop)!r} exists (it describes the pack already in that folder); write "
                "this pack to its own folder, or pass --force to replace it"
            )
    tree = IdentityFolder(args.src_root)

    def items() -> Iterator[tuple[bytes, int]]:
        for path, label in tree.samples:
            data = Path(path).read_bytes()
            if _image_extension(data) is None:
                raise CommandError(
                    f"{path!r} is not a JPEG, PNG or WebP file (it starts with {data[:8]!r}); "
                    "packs store image files unchanged, so convert or remove it"
                )
            yield data, label

    rec.parent.mkdir(parents=True, exist_ok=True)
    count = write_record_pack(
        rec,
        Progress(len(tree), "pack-rec", enabled=not args.quiet).track(items()),
        header=not args.no_header,
        num_classes=tree.num_classes,
    )
    print(
        f"wrote {count} images of {len(tree.label_map)} identities to {str(rec)!r} "
        f"(with {rec.with_suffix('.idx').name} and property)"
    )
    return 0


def _unpack(args: argparse.Namespace) -> int:
    from metricface.data import RecordFaces

    rec = _rec_path(args.pack, create=False)
    faces = RecordFaces(rec, args.idx)
    root = Path(args.dst_root)
    root.mkdir(parents=True, exist_ok=True)
    width = len(str(int(faces.keys.max())))
    done: set[tuple[str, str]] = set()  # (identity, file stem) already written
    with os.scandir(root) as it:
        folders = [e.name for e in it if e.is_dir()]
    for name in folders:
        with os.scandir(root / name) as it:
            done.update((name, e.name.split(".")[0]) for e in it if not e.name.startswith("."))
    made: set[str] = set(folders)
    written, skipped, unknown = 0, 0, []
    try:
        progress = Progress(len(faces), "unpack-rec", enabled=not args.quiet)
        for i in progress.track(range(len(faces))):
            name = faces.identity_name(faces.labels[i])
            stem = f"{int(faces.keys[i]):0{width}d}"
            if (name, stem) in done:
                skipped += 1
                continue
            data, _ = faces.raw(i)
            ext = _image_extension(data)
            if ext is None:
                unknown.append(stem)
                continue
            if name not in made:
                (root / name).mkdir(exist_ok=True)
                made.add(name)
            tmp = root / name / f".{stem}{ext}.partial"
            tmp.write_bytes(data)
            os.replace(tmp, root / name / f"{stem}{ext}")
            written += 1
    except KeyboardInterrupt:
        print(
            f"\nunpack-rec: {written} images written; run the same command to continue",
            file=sys.stderr,
        )
        raise
    print(
        f"wrote {written} images to {str(root)!r} ({len(made)} identity folders)"
        + (f"; {skipped} were already there" if skipped else "")
    )
    if unknown:
        print(
            f"unpack-rec: {len(unknown)} records hold neither JPEG, PNG nor WebP bytes and were "
            f"left out (keys {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''})",
            file=sys.stderr,
        )
        return 1
    return 0
