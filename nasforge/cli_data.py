"""``nasforge data pack`` and ``nasforge data describe`` (see :mod:`nasforge.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from nasforge.cli_args import finite_float, nonneg_int, positive_int

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``data pack`` and ``data describe`` to the ``nasforge`` subcommands ``sub``."""
    data = sub.add_parser("data", parents=[common], help="pack image folders into shards; describe datasets",
                          description="Pack an image folder into WebDataset tar shards (read as shards:DIR), or "
                                      "print what a dataset spec holds.")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    pack = actions.add_parser(
        "pack", parents=[common], help="pack folder:/imagenet: images into WebDataset tar shards + index.json",
        description="Write SOURCE (DIR/<class>/ or DIR/train/<class>/ + DIR/val/<class>/) as tar shards of about "
                    "--shard-mb MiB each, samples in a seeded random order, with an index for random access; "
                    "train on them with --data shards:OUT. Needs pip install 'nasforge[shards]'.")
    pack.add_argument("source", type=Path, help="image folder: DIR/<class>/... or DIR/train/<class>/...")
    pack.add_argument("--out", type=Path, required=True, help="output folder (new, empty, or an earlier pack of "
                                                              "SOURCE, which is overwritten)")
    pack.add_argument("--shard-mb", type=finite_float(above=0.0, hint="a size in MiB, e.g. 256"), default=256.0,
                      help="image MiB per shard (default 256)")
    pack.add_argument("--seed", type=nonneg_int, default=0, help="order of the samples across shards (default 0)")
    pack.add_argument("--quiet", action="store_true", help="no progress bar, only the summary")
    pack.set_defaults(func=_cmd_pack)
    describe = actions.add_parser(
        "describe", parents=[common], help="print a dataset's classes and split sizes as JSON",
        description="Load SPEC (e.g. digits, folder:DIR, imagenet:DIR, shards:DIR) as training would and print "
                    "its classes, split sizes and class counts as JSON. Image folders are listed, not decoded.")
    describe.add_argument("spec", help="dataset spec NAME[:PATH][?key=value&...]")
    describe.add_argument("--image-size", type=positive_int, help="image side (default: the dataset's)")
    describe.add_argument("--seed", type=nonneg_int, default=0, help="split seed (default 0)")
    describe.set_defaults(func=_cmd_describe)
    data.set_defaults(func=lambda args: _usage(data))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _cmd_pack(args: argparse.Namespace) -> int:
    from nasforge.data import pack_shards
    from nasforge.progress import ProgressReporter

    reporter = ProgressReporter(enabled=not args.quiet)
    with ExitStack() as stack:
        bars: list[Any] = []

        def progress(done: int, total: int) -> None:
            if not bars:  # the image count is known once pack_shards has listed the source
                bars.append(stack.enter_context(reporter.task("pack", total)))
            bars[0].update(done, log=done * 20 // total > (done - 1) * 20 // total)  # <= 20 lines off a terminal

        summary = pack_shards(args.source, args.out, shard_mb=args.shard_mb, seed=args.seed, progress=progress)
    splits = ", ".join(f"{count} {name}" for name, count in summary["splits"].items())
    print(f"packed {summary['images']} images of {summary['classes']} classes into {summary['shards']} shards "
          f"({splits}; {summary['bytes'] / 2**20:.1f} MiB) in {summary['out']}; train with --data "
          f"shards:{summary['out']}")
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from nasforge.data import load_data

    data = load_data(args.spec, image_size=args.image_size, seed=args.seed)
    print(json.dumps(data.describe(), indent=2))
    return 0
