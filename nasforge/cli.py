"""The ``nasforge`` command line: a thin layer that parses, builds a config, calls the library, prints a summary.

Errors caused by input (config, architecture, data, checkpoint) print one line and exit with code 2;
``--debug`` shows the traceback instead. Options are checked when the line is parsed (numbers through the types
of :mod:`nasforge.cli_args`), with the same one line and exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasforge._version import __version__
from nasforge.archspec import ARCH_HELP
from nasforge.cli_args import (
    OneLineParser,
    int_between,
    nonneg_int,
    positive_float,
    positive_int,
    positive_ints,
)
from nasforge.errors import ConfigError, NasforgeError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nasforge`` command.

    Building it imports no PyTorch (the board's agent runs without it): the command files import their
    libraries inside the command functions, and registry-backed choices load when used.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser = OneLineParser(prog="nasforge", parents=[common],
                           description="Train a supernet, search its subnets, export and measure them.")
    parser.add_argument("--version", action="version", version=f"nasforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_run(sub, common)
    _add_train(sub, common)
    _add_search(sub, common)
    _add_space(sub, common)
    _add_profile(sub, common)

    from nasforge.cli_agent import add_commands as add_agent_commands
    from nasforge.cli_data import add_commands as add_data_commands
    from nasforge.cli_deploy import add_commands
    from nasforge.cli_prune import add_commands as add_prune_commands
    from nasforge.cli_quantize import add_commands as add_quantize_commands

    add_agent_commands(sub, common)
    add_commands(sub, common)
    add_prune_commands(sub, common)
    add_quantize_commands(sub, common)
    add_data_commands(sub, common)
    return parser


def _add_run(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``nasforge run``."""
    run = sub.add_parser("run", parents=[common], help="train, search, export and measure on one dataset",
                         description="The whole pipeline. Defaults: digits, mbv3-small, 15 epochs, 40 trials.")
    run.add_argument("--config", type=Path, help="YAML config (missing keys take defaults)")
    run.add_argument("--out", type=Path, help="run folder (default: runs/run-<timestamp>)")
    run.add_argument("--epochs", type=positive_int, help="override train.epochs")
    run.add_argument("--trials", type=positive_int, help="override search.trials")
    run.add_argument("--seed", type=nonneg_int, help="override seed")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out after a crash or stop (its config.yaml is used: repeat no "
                          "option, or give --trials N for more trials)")
    run.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
    run.add_argument("--json", action="store_true", help="print the run's summary.json instead of the table")
    run.set_defaults(func=_cmd_run)


def _add_train(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``nasforge train``."""
    train = sub.add_parser(
        "train", parents=[common], help="train a supernet (progressive shrinking, DεpS, SortedNet, sandwich); torchrun-ready",
        description="Train SPACE on --data with --trainer and save checkpoints, history and the final supernet in "
                    "--out. Multi-process: torchrun --nproc_per_node N -m nasforge train ... (gloo on CPU, nccl "
                    "on GPU; --batch-size is the global batch).")
    train.add_argument("space", help="supernet / space name (see `nasforge space list`)")
    train.add_argument("--trainer", default="ps",
                       help="ps (Once-for-All progressive shrinking, default), deps (delayed ε-shrinking), sorted "
                            "(SortedNet), sandwich (BigNAS) or full (the largest model alone); trainer options go "
                            "through --set, e.g. --set shrink_point=0.5 --set ramp_epochs=5 (deps), --set g_acc=4 "
                            "--set sampling=uniform (sorted)")
    train.add_argument("--data", default="digits",
                       help="dataset spec: digits, shapes, cifar10:DIR, folder:DIR (class sub-folders, streamed), "
                            "imagenet:DIR (train/ and val/ of class folders, streamed)")
    train.add_argument("--out", type=Path, help="run folder (default: runs/train-<timestamp>)")
    train.add_argument("--seed", type=nonneg_int, default=0)
    train.add_argument("--scale", type=positive_float, dest="schedule_scale",
                       help="multiply every phase's epochs by this (ps; 1.0 = the reference schedule)")
    train.add_argument("--lr-scale", type=positive_float, dest="lr_scale", help="multiply every phase's learning rate (ps)")
    train.add_argument("--epochs", type=positive_int, help="epochs (single-phase trainers such as sandwich)")
    train.add_argument("--lr", type=positive_float, help="peak learning rate (single-phase trainers)")
    train.add_argument("--batch-size", type=positive_int, dest="batch_size", help="global batch size (default 64)")
    train.add_argument("--micro-batches", type=positive_int, dest="micro_batches",
                       help="split each batch into this many gradient-accumulation chunks")
    train.add_argument("--image-size", type=positive_int, help="stored image size (default: the space's largest resolution)")
    train.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    train.add_argument("--precision", help="fp32 (default), bf16 or fp16 (autocast; fp16 with a gradient scaler)")
    train.add_argument("--workers", type=nonneg_int,
                       help="image-file data: loader worker processes per training process (default: from the CPUs)")
    train.add_argument("--max-bad-images", type=nonneg_int, default=100,
                       help="image-file data: unreadable images skipped (and counted) before the run stops (100)")
    train.add_argument("--init", help="start from these weights: a nasforge checkpoint or a Once-for-All state_dict "
                                      "(e.g. the published ofa_D4_E6_K7 teacher)")
    train.add_argument("--phases", help="ps: run only these phases, e.g. kernel,depth-1 or 2-6 (names: teacher, "
                                        "kernel, depth-1, depth-2, expand-1, expand-2)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other training option, e.g. --set weight_decay=1e-4 (repeatable); augmentation "
                            "of image-file data: --set augment=light or --set augment.scale=[0.35,1]")
    train.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("--json", action="store_true", help="print the result (folder, checkpoint, last epoch) as JSON")
    train.set_defaults(func=_cmd_train)


def _add_search(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``nasforge search``."""
    search = sub.add_parser(
        "search", parents=[common], help="search a trained supernet (Optuna samplers, shared studies, workers)",
        description="Multi-objective search over the subnets of SOURCE (a supernet.pt or a run folder of `nasforge "
                    "train` / `nasforge run`). The study is OUT/study.journal unless --storage names another "
                    "Optuna storage; machines running the same command on one database share the study.")
    search.add_argument("source", help="supernet checkpoint or run folder")
    search.add_argument("--data", help="dataset spec (default: the one the run folder was trained on)")
    search.add_argument("--out", type=Path, help="results folder (default: runs/search-<timestamp>)")
    search.add_argument("--objectives",
                        help="comma-separated: accuracy, macs, params, latency_ms, int8_accuracy, int8_latency_ms "
                             "(name:max / name:min; default accuracy,macs)")
    search.add_argument("--constraint", action="append", help="e.g. macs<=5e6 (repeatable)")
    search.add_argument("--sampler",
                        help="tpe (default), nsga2, nsga3, gp, random (Optuna), nni-evolution, nni-random, nni-grid "
                             "(NNI, one worker; pip install 'nasforge[nni]') or a registered searcher such as "
                             "predictor")
    search.add_argument("--trials", type=positive_int, help="finished trials wanted in the study (default 40)")
    search.add_argument("--storage", help="Optuna storage: a .journal file, sqlite:///FILE, postgresql://...")
    search.add_argument("--study", help="study to create or join (default nasforge)")
    search.add_argument("--workers", type=positive_int, default=1, help="local worker processes on the same study")
    search.add_argument("--seed", type=nonneg_int, help="sampler seed (default 0)")
    search.add_argument("--image-size", type=positive_int, help="stored image size (default: the space's largest)")
    search.add_argument("--latency-table", type=Path,
                        help="latency_ms from this table (`nasforge latency build-table`) instead of measuring")
    search.add_argument("--accept-latency-error", action="store_true", default=None,
                        help="use --latency-table even if its recorded held-out error is above the limit or it was "
                             "measured on another machine (warned)")
    search.add_argument("--resume", action="store_true",
                        help="continue the search in --out with its recorded settings (repeat no option; --trials "
                             "and --workers may change)")
    search.add_argument("--json", action="store_true", help="print the results (pareto.json, with the folder) as JSON")
    search.set_defaults(func=_cmd_search)


def _add_space(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``nasforge space list`` and ``nasforge space describe``."""
    space = sub.add_parser("space", parents=[common], help="list or describe search spaces")
    space_sub = space.add_subparsers(dest="space_command", metavar="ACTION")
    lst = space_sub.add_parser("list", parents=[common], help="registered supernets / spaces")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_cmd_space_list)
    desc = space_sub.add_parser("describe", parents=[common], help="exact params/MACs of an architecture")
    desc.add_argument("space", help="space name (see `nasforge space list`)")
    desc.add_argument("--arch", help=f"architecture: {ARCH_HELP} (default: the largest)")
    desc.add_argument("--resolution", type=int_between(8), help="input resolution (default: the arch's r)")
    desc.add_argument("--num-classes", type=positive_int, help="classifier outputs (default: the space's)")
    desc.add_argument("--in-channels", type=positive_int, help="input channels (default: the space's)")
    desc.add_argument("--json", action="store_true", help="print JSON")
    desc.set_defaults(func=_cmd_space_describe)
    space.set_defaults(func=lambda args: _usage(space))


def _add_profile(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``nasforge profile``."""
    profile = sub.add_parser(
        "profile", parents=[common], help="measure the latency of an ONNX file here or on a board (--remote)",
        description="Time MODEL (an .onnx file) with a latency backend, or send it to a board running "
                    "`nasforge agent serve` with --remote URL --token-file F; --json prints the same result "
                    "either way.")
    profile.add_argument("model", type=Path, help="the .onnx file")
    profile.add_argument("--backend",
                         help="latency backend (default ort-cpu); with --remote, the backend the agent runs")
    profile.add_argument("--remote", metavar="URL", help="agent address, e.g. http://127.0.0.1:8765")
    profile.add_argument("--token-file", type=Path, help="file holding the agent's token (with --remote)")
    profile.add_argument("--device", help="a device of devices.yaml (backend, threads, agent URL...); explicit "
                                           "options override its settings")
    profile.add_argument("--devices", type=Path, help="devices file (default $NASFORGE_DEVICES or ./devices.yaml)")
    profile.add_argument("--batch", type=positive_int, help="batch size (default 1)")
    profile.add_argument("--runs", type=positive_int, help="timed runs per round (default 200)")
    profile.add_argument("--warmup", type=nonneg_int, help="untimed runs first (default 20)")
    profile.add_argument("--threads", type=positive_int, help="intra-op threads (default 1)")
    profile.add_argument("--input-shape", metavar="C,H,W", type=positive_ints("3,32,32"),
                         help="shape of one sample without the batch dim, for models with dynamic dims")
    profile.add_argument("--json", action="store_true", help="print the result as JSON")
    profile.set_defaults(func=_cmd_profile)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    from nasforge.config import RunConfig, load_config
    from nasforge.pipeline import run_pipeline
    from nasforge.progress import ProgressReporter
    from nasforge.report import print_summary

    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out DIR naming the run folder to continue")
    saved = None if args.out is None else args.out / "config.yaml"
    if args.config:
        cfg = load_config(args.config)
    elif args.resume and saved is not None and saved.is_file():
        cfg = load_config(saved)  # the run's own config: only the options given here are checked against it
    else:
        cfg = RunConfig()
    overrides = {key: value for key, value in (("train__epochs", args.epochs), ("search__trials", args.trials),
                                               ("seed", args.seed)) if value is not None}
    cfg = cfg.with_overrides(**overrides) if overrides else cfg
    out = args.out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    reporter = ProgressReporter(enabled=not args.quiet)  # the run folder is announced once its config is checked
    summary = run_pipeline(cfg, out, resume=args.resume, reporter=reporter)
    if args.json:
        print((out / "summary.json").read_text(encoding="utf-8").strip())
        return 0
    print_summary(summary)
    return 0


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        try:
            values[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return values


def _augment_from(values: dict[str, Any]) -> dict[str, Any]:
    """Take ``augment=PRESET`` and ``augment.KEY=VALUE`` out of ``--set`` values."""
    augment: dict[str, Any] = {}
    for key in [k for k in values if k == "augment" or k.startswith("augment.")]:
        value = values.pop(key)
        if key == "augment":
            if isinstance(value, dict):
                augment.update(value)
            else:
                augment["preset"] = value
        else:
            augment[key.split(".", 1)[1]] = value
    return augment


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    from nasforge.train import train_supernet

    hyper = _parse_sets(args.set)
    augment = _augment_from(hyper)
    for key in ("schedule_scale", "lr_scale", "epochs", "lr", "batch_size", "micro_batches", "precision", "phases"):
        if getattr(args, key) is not None:
            hyper[key] = getattr(args, key)
    if args.out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("under torchrun, pass --out so that every process writes to the same run folder")
    out = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    result = train_supernet(args.space, data=args.data, out=out, trainer=args.trainer, seed=args.seed,
                            image_size=args.image_size, device=args.device, resume=args.resume,
                            progress=not args.quiet, init=args.init, augment=augment, workers=args.workers,
                            max_bad_images=args.max_bad_images, **hyper)
    if int(os.environ.get("RANK", "0")) == 0 and args.json:
        print(json.dumps({"out": str(result.out), "checkpoint": str(result.checkpoint), "space": args.space,
                          "trainer": args.trainer, "epochs": len(result.history),
                          "last_epoch": result.history[-1] if result.history else None}))
    elif int(os.environ.get("RANK", "0")) == 0 and result.history:
        last = result.history[-1]
        print(f"trained {args.space} ({args.trainer}) in {result.out}: {len(result.history)} epoch(s), final "
              f"val acc largest {last['val_acc_max']:.4f}, smallest {last['val_acc_min']:.4f}; "
              f"supernet: {result.checkpoint}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from nasforge.search import SearchJob, _split, resolve_source, resumed_job, run_search_job, summary_table

    checkpoint, recorded, size = resolve_source(args.source)
    given = {"checkpoint": str(checkpoint), "data": args.data, "sampler": args.sampler, "trials": args.trials,
             "objectives": _split([args.objectives]) if args.objectives is not None else None,
             "constraints": tuple(args.constraint) if args.constraint is not None else None,
             "storage": args.storage, "study": args.study, "seed": args.seed, "image_size": args.image_size,
             "latency_table": str(args.latency_table.resolve()) if args.latency_table else None,
             "accept_latency_error": args.accept_latency_error}
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out DIR naming the search to continue")
        job = resumed_job(args.out, given)
        print(f"resuming the search in {args.out}: {job.sampler}, objectives {','.join(job.objectives)}"
              + (f", constraints {' '.join(job.constraints)}" if job.constraints else "")
              + f", {job.trials} trials wanted", file=sys.stderr)
    else:
        data = args.data or recorded
        if data is None:
            raise ConfigError(f"{args.source} records no dataset; pass --data SPEC")
        out = args.out or Path("runs") / time.strftime("search-%Y%m%d-%H%M%S")
        settings = {k: v for k, v in given.items() if v is not None}
        job = SearchJob.for_cli(**{**settings, "data": data, "out": str(out),
                                   "image_size": args.image_size or size})
    result = run_search_job(job, workers=args.workers, resume=args.resume,
                            log=lambda m: print(m, file=sys.stderr))
    out = Path(job.out)
    summary = json.loads((out / "pareto.json").read_text())
    if result.n_complete == 0:
        raise ConfigError(f"no trial completed; see the errors in {out / 'trials.csv'}")
    if args.json:
        print(json.dumps({"out": str(out), **summary}))
        return 0
    print(summary_table(summary))
    print(f"results in {out}: pareto.csv, pareto.json, pareto.png, trials.csv, search.json")
    return 0


def _cmd_space_list(args: argparse.Namespace) -> int:
    from nasforge.supernets import get_supernet_entry, list_supernets

    entries = [get_supernet_entry(n) for n in list_supernets()]
    if args.json:
        print(json.dumps([{"name": e.name, "description": e.description} for e in entries], indent=2))
    else:
        width = max(len(e.name) for e in entries)
        for e in entries:
            print(f"{e.name:<{width}}  {e.description}")
    return 0


def _cmd_space_describe(args: argparse.Namespace) -> int:
    from nasforge.archspec import read_arch_spec
    from nasforge.supernets import create_supernet

    options = {}
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    if args.in_channels is not None:
        options["in_channels"] = args.in_channels
    net = create_supernet(args.space, **options)
    arch = read_arch_spec(args.arch, net) if args.arch else net.space.largest()
    r = args.resolution if args.resolution is not None else net.resolution(arch)
    if r < 8:
        raise ConfigError(f"--resolution {r} is too small; use at least 8")
    space = net.space
    resolutions = list(space.dim("r").choices) if "r" in space.names else []
    result = {"space": args.space, "params": net.params(arch), "macs": net.macs(arch, r), "resolution": r,
              "arch": space.canonical(arch).to_dict(), "space_size": space.size(),
              "architectures": space.size(exclude=("r",) if resolutions else ()), "resolutions": resolutions}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"space       {args.space}")
        print(f"archs       {result['architectures']:.3g}  ({result['architectures']:,} without resolution)")
        print(f"  with r    {result['space_size']:.3g}  (x {max(len(resolutions), 1)} resolutions)")
        print(f"resolution  {r}")
        print(f"params      {result['params']:,}")
        print(f"MACs        {result['macs']:,}")
        print(f"arch        {json.dumps(result['arch'], separators=(',', ':'))}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from nasforge.export import get_profiler

    defaults = {"batch": 1, "runs": 200, "warmup": 20, "threads": 1}
    if args.device is not None:
        if args.remote is not None:
            raise ConfigError("--device and --remote both say where to measure; pass one of them")
        from nasforge.devices import get_device

        device = get_device(args.device, args.devices)
        defaults = {"batch": device.batch, **device.measure_options()}
        if device.backend == "remote":
            args.remote = device.options["url"]
            args.token_file = args.token_file or device.options.get("token_file")
            args.backend = args.backend or defaults.pop("backend")
        else:
            args.backend = args.backend or device.backend
    defaults.pop("backend", None)
    args.backend = args.backend or "ort-cpu"
    settings = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in defaults.items()}
    settings["input_shape"] = args.input_shape
    if args.remote is not None:
        if args.token_file is None:
            raise ConfigError("--remote needs --token-file F, the file holding the agent's token")
        profiler = get_profiler("remote", url=args.remote, token_file=args.token_file)
        result = profiler.measure(args.model, backend=args.backend, **settings)
        where = f"the agent at {profiler.url}" + (" (cached result)" if (profiler.last_reply or {}).get("cached")
                                                  else "")
    else:
        if args.token_file is not None:
            raise ConfigError("--token-file goes with --remote URL; drop it to measure on this machine")
        if args.backend == "remote":
            raise ConfigError("to measure on a board pass --remote URL --token-file F (and --backend ort-cpu)")
        if args.backend == "torch-cpu":
            raise ConfigError("torch-cpu measures a PyTorch module, not an .onnx file; use --backend ort-cpu "
                              "(or nasforge.export.measure_latency(module, backend='torch-cpu') in Python)")
        result = get_profiler(args.backend).measure(args.model, **settings)
        where = "this machine"
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    fp = result.fingerprint
    cpu = fp.get("cpu") or {}
    versions = fp.get("versions") or {}
    runtimes = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("onnxruntime", "torch"))
    print(f"{args.model} on {result.backend}: batch {result.batch}, {result.threads} thread(s), "
          f"{result.runs} runs after {result.warmup} warm-up")
    print(f"  p50 {result.median_ms:.4g} ms   p90 {result.p90_ms:.4g} ms   p99 {result.p99_ms:.4g} ms   "
          f"min {result.min_ms:.4g} ms")
    print(f"  CV {result.cv:.3f}, re-measured {result.remeasured} time(s)")
    print(f"  measured on {where}: {cpu.get('model', 'unknown CPU')} ({fp.get('machine', '?')}, flags "
          f"{' '.join(cpu.get('flags') or []) or 'none listed'}){'; ' + runtimes if runtimes else ''}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nasforge`` console script; returns the exit code."""
    from nasforge.cli_prune import rewrite_argv

    parser = build_parser()
    try:
        args = parser.parse_args(rewrite_argv(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help / --version (0) or a usage error, already printed as one line (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except NasforgeError as exc:
        if args.debug:
            raise
        print(f"nasforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasforge: interrupted; continue with the same command plus --resume (and the same --out)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
