"""``nasforge prune`` and ``nasforge prune meta-train`` (see :mod:`nasforge.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasforge.archspec import ARCH_HELP
from nasforge.cli_args import nonneg_int, positive_float, positive_int, registry_choice

__all__ = ["CRITERIA", "ZOO_MODELS", "add_commands", "rewrite_argv"]

_META = "prune-meta-train"

#: The zoo models and criteria that help lists, written out: printing help must import no PyTorch (the
#: registries live in nasforge.prune). tests/test_cli_help.py checks them against the registries.
ZOO_MODELS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
              "mobilenetv2")
CRITERIA = ("l1", "l2", "taylor", "bn-scale", "lamp", "random", "gmn")


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """``prune meta-train ...`` is parsed as the ``prune-meta-train`` command (a positional SOURCE and a
    subcommand cannot share one argparse parser)."""
    args = list(argv)
    for i, word in enumerate(args):
        if not word.startswith("-"):
            if word == "prune" and i + 1 < len(args) and args[i + 1] == "meta-train":
                return args[:i] + [_META] + args[i + 2 :]
            break
    return args


def _criteria() -> list[str]:
    """The registered criteria (imports PyTorch: called only when ``--criterion`` is checked)."""
    from nasforge.prune import list_criteria

    return list_criteria(include_metanet=True)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``prune`` and ``prune meta-train`` to the ``nasforge`` subcommands ``sub`` (importing no PyTorch,
    neither now nor for ``--help``: the criteria registry is read when a ``prune`` command line is parsed)."""
    _add_prune(sub, common)
    _add_meta_train(sub, common)


def _add_prune(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "prune", parents=[common], help="structured pruning to a MACs/params/latency target, with finetuning",
        description="Prune SOURCE to --target, finetune, and report MACs, params, accuracy and measured latency "
                    "before/after. SOURCE: zoo:NAME[?key=value] (" + ", ".join(ZOO_MODELS) + "; with --weights "
                    "or --train-epochs), a supernet checkpoint or run folder (--arch), a run's subnets/K folder, or a "
                    "model.pt written by nasforge prune. Your own model: no SOURCE, --model FILE.py:FUNCTION (the "
                    "factory that builds it) with --weights or --train-epochs; a model.pt pruned from it needs the "
                    "same --model again. `nasforge prune meta-train --help` trains the graph metanetwork for "
                    "--criterion gmn.")
    p.add_argument("source", nargs="?", help="zoo:NAME | checkpoint | run folder | RUN/subnets/K | pruned model.pt "
                                             "(with --model: none, or a model.pt pruned from it)")
    p.add_argument("--model", metavar="FILE.py:FUNCTION",
                   help="your own model: FILE.py:FUNCTION or package.module:FUNCTION[?key=value&...] (JSON values), "
                        "called with those keywords, plus num_classes/in_channels where it takes them; it runs "
                        "that file. A torch.export .pt2 cannot be pruned")
    p.add_argument("--target", default="macs=0.5", help="macs=0.5 | macs=2x | params=0.5 | latency_ms=3 (default "
                                                        "macs=0.5: keep half the MACs)")
    p.add_argument("--criterion", default="l2", type=registry_choice(_criteria), metavar="NAME",
                   help=f"channel ranking: {', '.join(CRITERIA)} (default %(default)s)")
    p.add_argument("--metanet", help="graph metanetwork file (--criterion gmn)")
    p.add_argument("--data", help="dataset spec (default: the run's own; required for zoo and --model models)")
    p.add_argument("--arch", help=f"subnet of a checkpoint/run: {ARCH_HELP}")
    p.add_argument("--weights", help="state dict for a zoo or --model model (loaded without unpickling)")
    p.add_argument("--train-epochs", type=nonneg_int, default=0,
                   help="train the source first (zoo models from scratch)")
    p.add_argument("--finetune-epochs", type=nonneg_int, default=5,
                   help="after each pruning step (default 5; 0 = none)")
    p.add_argument("--lr", type=positive_float, default=0.01, help="finetuning learning rate (default 0.01)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=1,
                   help="iterative pruning steps (geometric, finetune after each)")
    p.add_argument("--per-layer", action="store_true", help="prune every layer by the same ratio (default: global)")
    p.add_argument("--round-to", type=positive_int, default=4, metavar="N",
                   help="keep channel counts multiples of N (default 4; 1 = any count). onnxruntime's CPU kernels "
                        "slow down on odd counts: a 3x-MACs cut measured 0.68x (slower) unaligned, 1.47x aligned")
    p.add_argument("--allocate", choices=("ratio", "latency"), default="ratio",
                   help="how channels are chosen: 'ratio' (one global ratio by importance, default) or 'latency' "
                        "(where they buy the most measured latency on --device per importance lost, from a "
                        "per-layer latency table; macs and latency_ms targets)")
    p.add_argument("--layer-table", metavar="FILE",
                   help="per-layer latency table to reuse and extend (--allocate latency; default OUT/"
                        "layer_latency.json)")
    p.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="module names to leave alone (fnmatch; repeatable)")
    p.add_argument("--device", default="cpu", help="device whose latency is measured before/after (default cpu; "
                                                   "'none' to skip)")
    p.add_argument("--no-export", action="store_true", help="do not write model.onnx")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_prune)


def _add_meta_train(sub: Any, common: argparse.ArgumentParser) -> None:
    m = sub.add_parser(_META, parents=[common], prog="nasforge prune meta-train",
                       help="train the graph metanetwork on a family of trained networks (--criterion gmn)",
                       description="Train (or reuse) --networks zoo models of one family on --data, meta-train the "
                                   "graph metanetwork on them, choose its checkpoint on a held-out validation "
                                   "network, and write it to --out.")
    m.add_argument("--model", default="resnet20", help="zoo family, e.g. resnet20 or 'resnet20?widths=[8,16,32]'")
    m.add_argument("--data", required=True, help="dataset spec")
    m.add_argument("--networks", type=positive_int, default=4,
                   help="training networks (plus one validation network)")
    m.add_argument("--train-epochs", type=nonneg_int, default=10, help="epochs to train each network")
    m.add_argument("--meta-steps", type=positive_int, default=200, help="metanetwork optimisation steps")
    m.add_argument("--target", default="macs=0.5", help="the MACs target used to validate checkpoints")
    m.add_argument("--workdir", type=Path, help="folder for the trained networks (default: next to --out)")
    m.add_argument("--out", type=Path, required=True, help="metanetwork file to write (.pt)")
    m.add_argument("--seed", type=nonneg_int, default=0)
    m.set_defaults(func=_cmd_meta_train)


def _cmd_prune(args: argparse.Namespace) -> int:
    from nasforge.prune_job import PruneJob, run_prune_job

    job = PruneJob(source=args.source, out=args.out, target=args.target, criterion=args.criterion, arch=args.arch,
                   data=args.data, weights=args.weights, model=args.model, train_epochs=args.train_epochs,
                   finetune_epochs=args.finetune_epochs, lr=args.lr, batch_size=args.batch_size, steps=args.steps,
                   global_pruning=not args.per_layer, ignore=list(args.ignore),
                   round_to=args.round_to if args.round_to > 1 else None, metanet=args.metanet,
                   allocation=args.allocate, layer_table=args.layer_table,
                   device=None if args.device == "none" else args.device, export=not args.no_export, seed=args.seed)
    quiet = args.json
    result = run_prune_job(job, log=(lambda s: print(s, file=sys.stderr)) if not quiet else (lambda s: None))
    if args.json:
        print(json.dumps(result))
        return 0
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/model.pt" + (", model.onnx" if job.export else "") + ", report.json, report.md, "
          "widths.png")
    return 0


def _cmd_meta_train(args: argparse.Namespace) -> int:
    from nasforge.prune_job import MetaTrainJob, run_meta_train_job

    job = MetaTrainJob(model=args.model, data=args.data, networks=args.networks, train_epochs=args.train_epochs,
                       meta_steps=args.meta_steps, target=args.target, out=args.out, workdir=args.workdir,
                       seed=args.seed)
    summary = run_meta_train_job(job, log=lambda s: print(s, file=sys.stderr))
    print(f"wrote {args.out}: best step {summary['best_step']} (validation accuracy after pruning to "
          f"{job.target}: {summary['best_val_acc']:.4f}; plain group-L2: {summary['baseline_val_acc']:.4f})")
    return 0
