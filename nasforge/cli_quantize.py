"""``nasforge quantize MODEL.onnx --data SPEC --device NAME --out FILE`` (see :mod:`nasforge.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nasforge.archspec import ARCH_HELP
from nasforge.cli_args import nonneg_int, positive_float, positive_int, positive_ints
from nasforge.errors import ConfigError

__all__ = ["CALIBRATIONS", "GROUPS", "METHODS", "POLICIES", "TARGETS", "add_commands", "infer_qat_source"]

#: ``nasforge.quantize.METHODS``, ``CALIBRATIONS``, ``TARGETS``, ``POLICIES`` and the group names, written out:
#: importing that package (numpy, onnx helpers) is too slow for ``--help``. tests/test_cli_help.py checks them.
METHODS = ("auto", "static", "dynamic", "qat")
CALIBRATIONS = ("minmax", "entropy", "percentile")
TARGETS = ("ort", "tensorrt")
POLICIES = ("selective", "all")
GROUPS = ("stem", "depthwise", "squeeze-excite", "swish", "residual-add", "conv", "linear")


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``quantize`` to the ``nasforge`` subcommands ``sub``."""
    p = sub.add_parser(
        "quantize", parents=[common], help="INT8 quantization of an ONNX model, checked and timed on a device",
        description="Quantize MODEL.onnx to INT8 (onnxruntime QDQ). Activations are calibrated on --calib-samples "
                    "training samples of --data; reduce_range is chosen from the --device's CPU flags (on without "
                    "VNNI). The report compares FP32 and INT8 accuracy on the validation split, the output error "
                    "against FP32 and against simulated quantization (flagging saturation), and latency before/"
                    "after on the device. With --policy selective (the default), operator groups INT8 does not "
                    "speed up on the device stay in float, and the FP32 model is written when no INT8 variant is "
                    "faster at every --batch. The report is written next to --out as .report.json and .report.md.")
    p.add_argument("model", help="FP32 .onnx file (nasforge export / run / prune write one)")
    p.add_argument("--data", help="dataset spec (default: the one recorded in the ONNX file)")
    p.add_argument("--device", default="cpu", help="target device from devices.yaml (default cpu; 'none' = no "
                                                   "latency, decide for this CPU)")
    p.add_argument("--devices", help="devices file (default $NASFORGE_DEVICES or ./devices.yaml)")
    p.add_argument("--method", default="auto", choices=METHODS, metavar="METHOD",
                   help="static (calibrated, QDQ), dynamic (weights only; Linear-heavy models), qat (fake-quant "
                        "finetuning, then static), auto (default: dynamic when MatMul/Gemm hold most weights)")
    p.add_argument("--calibration", default="minmax", choices=CALIBRATIONS, metavar="NAME",
                   help="activation range calibration: %(choices)s (default %(default)s)")
    p.add_argument("--calib-samples", type=positive_int, default=256,
                   help="training samples that calibrate (default 256)")
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor (default per-channel)")
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="7-bit weights: auto (default) = on for x86 CPUs without VNNI")
    p.add_argument("--activation-type", choices=("uint8", "int8"), default="uint8")
    p.add_argument("--target", choices=TARGETS, default="ort", metavar="TARGET",
                   help="%(choices)s (default %(default)s); tensorrt: symmetric int8 Q/DQ graph for TensorRT 11 "
                        "(and TensorRT 10 with the INT8 flag)")
    p.add_argument("--engine", type=Path, help="with --target tensorrt: also build this TensorRT engine (needs "
                                               "TensorRT and a GPU)")
    p.add_argument("--batch", type=positive_ints("1,32"), default=(1,),
                   help="batch sizes to time, comma-separated (default 1; e.g. 1,32); with --policy selective the "
                        "INT8 file must be faster at each of them")
    p.add_argument("--policy", choices=POLICIES, default="selective",
                   help="selective (default): measure on --device which operator groups INT8 speeds up, keep the "
                        "others in float, and keep FP32 when no INT8 variant is faster at every --batch; all: "
                        "quantize everything")
    p.add_argument("--float", dest="float_groups", default="", metavar="GROUPS",
                   help=f"operator groups to keep in float, comma-separated: {', '.join(GROUPS)}")
    p.add_argument("--min-speedup", type=positive_float, default=1.03,
                   help="speed-up over FP32 an INT8 variant needs at every batch size (default 1.03: a margin "
                        "for timing noise)")
    p.add_argument("--source", help="--method qat: the PyTorch model behind MODEL (a pruned model.pt, RUN/subnets/K, "
                                    "a checkpoint with --arch, zoo:NAME with --weights); default: found next to MODEL")
    p.add_argument("--arch", help=f"--method qat with a checkpoint --source: the subnet ({ARCH_HELP})")
    p.add_argument("--weights", help="--method qat with a zoo:NAME --source: its state dict")
    p.add_argument("--model", dest="factory", metavar="FILE.py:FUNCTION",
                   help="--method qat with a model.pt pruned from your own model: the factory that builds it (as "
                        "given to nasforge prune --model)")
    p.add_argument("--qat-epochs", type=positive_int, default=2, help="fake-quant finetuning epochs (default 2)")
    p.add_argument("--qat-lr", type=positive_float, default=1e-3,
                   help="fake-quant finetuning learning rate (default 1e-3)")
    p.add_argument("--out", type=Path, required=True, help="INT8 .onnx file to write")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_quantize)


def _image_size(proto: Any, model: Path) -> int | None:
    """The square image side of an image model's input (the data is loaded at it), else None."""
    from nasforge.export import single_input_spec

    dims = single_input_spec(proto, model).dims
    return dims[-1] if len(dims) == 4 and isinstance(dims[-1], int) and dims[-1] == dims[-2] else None


def infer_qat_source(model: Path) -> str:
    """Where the PyTorch model of an exported ONNX file lives: a pruned ``model.pt`` or a ``RUN/subnets/K``
    folder next to it.

    Raises:
        ConfigError: neither is there (the message says to pass --source).
    """
    folder = model.resolve().parent
    if (folder / "model.pt").is_file():
        return str(folder / "model.pt")
    if (folder / "arch.json").is_file():
        return str(folder)
    raise ConfigError(f"--method qat finetunes the PyTorch model behind {model}, and none is next to it; pass "
                      "--source (a pruned model.pt, RUN/subnets/K, a checkpoint with --arch, or zoo:NAME)")


def _cmd_quantize(args: argparse.Namespace) -> int:
    from nasforge.data import load_data
    from nasforge.quantize import QuantConfig, ensure_onnx_path, quantize

    say = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr))
    if args.engine is not None and args.target != "tensorrt":
        raise ConfigError("--engine builds a TensorRT engine; add --target tensorrt")
    config = QuantConfig(method=args.method, calibration=args.calibration, calib_samples=args.calib_samples,
                         per_channel=not args.per_tensor,
                         reduce_range={"auto": None, "on": True, "off": False}[args.reduce_range],
                         activation_type=args.activation_type, target=args.target, policy=args.policy,
                         float_groups=tuple(g.strip() for g in args.float_groups.split(",") if g.strip()),
                         min_speedup=args.min_speedup)
    batches = tuple(args.batch)
    model = Path(args.model)
    proto = ensure_onnx_path(model)
    spec = args.data or {p.key: p.value for p in proto.metadata_props}.get("dataset")
    data = None
    if spec:
        data = load_data(spec, image_size=_image_size(proto, model), seed=args.seed)
    elif config.method != "dynamic":
        raise ConfigError(f"{model} records no dataset and --data is missing; pass --data SPEC (the task's data "
                          "calibrates the activation ranges), or --method dynamic")
    torch_model = None
    if config.method == "qat":
        from nasforge.prune_job import resolve_prune_source

        source = args.source or infer_qat_source(model)
        torch_model = resolve_prune_source(source, arch=args.arch, data=spec, weights=args.weights,
                                           seed=args.seed, model=args.factory).model
    report = quantize(model, args.out, data=data, config=config, device=args.device, devices_file=args.devices,
                      batches=batches, torch_model=torch_model,
                      qat_options={"epochs": args.qat_epochs, "lr": args.qat_lr, "seed": args.seed}, log=say)
    if args.engine is not None:
        from nasforge.export import TrtBuildConfig, build_engine

        info = build_engine(args.out, args.engine, TrtBuildConfig(precision="int8"))
        say(f"built TensorRT {info.tensorrt_version} engine {args.engine} ({info.engine_bytes} bytes)")
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(report.to_markdown())
    if report.choice == "fp32":
        print(f"INT8 did not pay on {args.device}: {args.out} holds the FP32 model (see the report)")
    print(f"wrote {args.out} and its report ({Path(args.out).with_suffix('').name}.report.json / .md)")
    return 1 if report.saturation else 0
