"""``nasforge export`` and ``nasforge latency``: the deployment commands of the CLI (see :mod:`nasforge.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nasforge.archspec import ARCH_HELP
from nasforge.cli_args import nonneg_int, positive_float, positive_int
from nasforge.errors import ConfigError
from nasforge.options import parse_key_values

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``export`` and ``latency`` to the ``nasforge`` subcommands ``sub``."""
    export = sub.add_parser(
        "export", parents=[common], help="export one subnet as a verified ONNX file (or a TensorRT engine)",
        description="Export --arch of SOURCE (a supernet checkpoint, a run folder, or a run's subnets/K folder) "
                    "after BatchNorm recalibration; the file is checked with onnx.checker and against PyTorch in "
                    "onnxruntime on random and real validation images, and carries its architecture, input shape, "
                    "normalisation, nasforge version and the checkpoint's SHA-256.")
    export.add_argument("source", help="checkpoint, run folder, or RUN/subnets/K")
    export.add_argument("--arch", help=f"{ARCH_HELP} (default: the subnet folder's arch.json, else largest)")
    export.add_argument("--format", dest="fmt", default="onnx", type=_export_format,
                        help="a registered export format: onnx (default), or tensorrt (an engine beside the ONNX file)")
    export.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    export.add_argument("--data", help="dataset spec for BN recalibration and parity (default: the run's own)")
    export.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension")
    export.add_argument("--opset", type=positive_int, default=18, help="ONNX opset of the default domain (18)")
    export.add_argument("--resolution", type=positive_int, help="input resolution (one of the space's)")
    export.add_argument("--atol", type=positive_float, default=1e-4, help="largest allowed difference to PyTorch")
    export.add_argument("--slim", action="store_true",
                        help="apply onnxruntime's portable graph optimisations when they remove nodes")
    export.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    export.add_argument("--json", action="store_true", help="print the result as JSON")
    export.set_defaults(func=_cmd_export)

    latency = sub.add_parser("latency", parents=[common], help="per-device latency tables and their error",
                             description="Build a latency table of a supernet's segments on a device, or validate "
                                         "one against subnets measured end to end.")
    lat_sub = latency.add_subparsers(dest="latency_command", metavar="ACTION")
    build = lat_sub.add_parser("build-table", parents=[common], help="measure every distinct segment of SOURCE",
                               description="SOURCE is a space name (untrained weights: latency does not depend on "
                                           "them), a checkpoint or a run folder.")
    _source_and_device(build)
    build.add_argument("--out", type=Path, help="table file (default: latency-<device>-<space>.json)")
    build.add_argument("--calibration", type=nonneg_int, default=20,
                       help="subnets measured end to end to fit the correction (default 20)")
    build.add_argument("--holdout", type=nonneg_int, default=10,
                       help="other subnets measured end to end to record the table's held-out error (default 10; "
                            "search refuses a table that cannot rank them)")
    build.add_argument("--repeats", type=positive_int, default=2,
                       help="interleaved measurements of each calibration and held-out subnet (default 2)")
    build.add_argument("--runs", type=positive_int, help="timed runs per segment (default 100)")
    build.add_argument("--seed", type=nonneg_int, default=0)
    build.set_defaults(func=_cmd_build_table)
    validate = lat_sub.add_parser("validate", parents=[common],
                                  help="MAPE and Kendall tau of a table on fresh subnets measured end to end")
    _source_and_device(validate)
    validate.add_argument("--table", type=Path, required=True, help="the table file")
    validate.add_argument("--samples", type=positive_int, default=30, help="random subnets to measure (default 30)")
    validate.add_argument("--repeats", type=positive_int, default=3,
                          help="interleaved measurements of each subnet; the median counts (default 3)")
    validate.add_argument("--resolution", type=positive_int, help="validate on subnets of this resolution only")
    validate.add_argument("--seed", type=nonneg_int, default=12345)
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.set_defaults(func=_cmd_validate_table)
    latency.set_defaults(func=lambda args: _usage(latency))


def _export_format(name: str) -> str:
    """``--format``: a name in the export-format registry (imported only when the option is given)."""
    from nasforge.export import list_export_formats

    if name not in list_export_formats():
        raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(list_export_formats())})")
    return name


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _source_and_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="space name (`nasforge space list`), checkpoint or run folder")
    parser.add_argument("--device", default="cpu", help="device from devices.yaml (default cpu: ort-cpu, 1 thread)")
    parser.add_argument("--devices", type=Path, help="devices file (default $NASFORGE_DEVICES or ./devices.yaml)")
    parser.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="supernet option when SOURCE is a space name (JSON value), e.g. --set num_classes=10")


def _load_net(source: str, options: list[str]) -> Any:
    from nasforge.supernets import create_supernet, list_supernets

    if source in list_supernets():
        parsed = parse_key_values(options, lambda item: f"--set {item!r} must be KEY=VALUE")
        return create_supernet(source, **parsed).eval()
    if options:
        raise ConfigError("--set only applies when SOURCE is a space name; a checkpoint fixes the supernet")
    from nasforge.search import resolve_source
    from nasforge.supernets.checkpoint import load_supernet

    checkpoint, _, _ = resolve_source(source)
    return load_supernet(checkpoint)[0].eval()


def _progress(quiet: bool = False) -> Any:
    last: dict[str, int] = {}

    def report(phase: str, done: int, total: int) -> None:
        step = max(1, total // 10)
        if quiet or (done % step and done != total) or last.get(phase) == done:
            return
        last[phase] = done
        print(f"  {phase}: {done}/{total}", file=sys.stderr, flush=True)

    return report


def _cmd_export(args: argparse.Namespace) -> int:
    from nasforge.deploy import export_subnet

    result = export_subnet(args.source, args.out, arch=args.arch, fmt=args.fmt, data=args.data,
                           dynamic_batch=args.dynamic_batch, opset=args.opset, resolution=args.resolution,
                           atol=args.atol, slim=args.slim, exporter=args.exporter)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"wrote {result.path}: input [{', '.join(map(str, result.input_dims))}], max |onnx - torch| {result.max_abs_diff:.2e} "
          f"over {result.parity_inputs} inputs ({result.real_inputs} of them real images)")
    if result.slimmed is not None:
        print(f"slimming: {'kept, ' if result.slimmed['kept'] else 'not kept: '}{result.slimmed['reason']}")
    if result.engine is not None:
        print(f"TensorRT engine: {result.engine.get('path', args.out.with_suffix('.engine'))}")
    return 0


def _cmd_build_table(args: argparse.Namespace) -> int:
    from nasforge.devices import get_device
    from nasforge.export import SEGMENT_RUNS, build_latency_table

    device = get_device(args.device, args.devices)
    net = _load_net(args.source, args.options)
    out = args.out or Path(f"latency-{device.name}-{net.space.name}.json")
    runs = args.runs or SEGMENT_RUNS
    print(f"measuring the segments of {net.space.name} on {device.name} ({device.backend}, "
          f"{device.threads} thread(s), batch {device.batch})", file=sys.stderr)
    table = build_latency_table(net, device.profiler(), device=device.to_dict(), batch=device.batch,
                                threads=device.threads, runs=runs, warmup=min(device.warmup, runs),
                                calibration=args.calibration, holdout=args.holdout, repeats=args.repeats,
                                seed=args.seed,
                                progress=_progress())
    table.save(out)
    corr = table.correction
    fit = f"; correction fitted on {int(corr['n'])} subnets (fit MAPE {corr['fit_mape']:.1%})" if corr else ""
    print(f"wrote {out}: {len(table.entries)} segments{fit}")
    h = table.holdout
    if h:
        print(f"held-out error on {int(h['n'])} subnets: MAPE {h['mape']:.1%} (max {h['max_ape']:.1%}), "
              f"{h['within_10']:.0%} within 10%, Kendall tau {h['kendall_tau']:.3f}")
    problems = table.trust_problems()
    if problems:
        print(f"warning: search will refuse this table ({'; '.join(problems)}); on fast subnets timing noise can "
              "outweigh their differences: measure latency in the search instead, or rebuild with more --runs on "
              "a quiet machine", file=sys.stderr)
    return 0


def _cmd_validate_table(args: argparse.Namespace) -> int:
    from nasforge.devices import get_device
    from nasforge.export import LatencyTable, validate_latency_table

    device = get_device(args.device, args.devices)
    table = LatencyTable.load(args.table)
    net = _load_net(args.source, args.options)
    report = validate_latency_table(table, net, device.profiler(), samples=args.samples, seed=args.seed,
                                    repeats=args.repeats, resolution=args.resolution, progress=_progress())
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['samples']} subnets on {device.name}: MAPE {report['mape']:.1%} (max {report['max_ape']:.1%}), "
              f"{report['within_10']:.0%} within 10%, Kendall tau {report['kendall_tau']:.3f}; uncorrected segment "
              f"sum MAPE {report['sum_mape']:.1%}")
        rep = report["repeatability"]
        if rep:
            print(f"the measurement itself repeats to MAPE {rep['mape']:.1%}, Kendall tau {rep['kendall_tau']:.3f} "
                  "(a second round against the first): no predictor can be judged more finely")
    return 0
