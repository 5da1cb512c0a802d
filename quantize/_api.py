"""``quantize()``: one FP32 ONNX file in, one INT8 ONNX file out, with the checks and a report."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasforge.errors import ConfigError, ExportError
from nasforge.io import atomic_write_json, atomic_write_text
from nasforge.onnx_io import InputSpec, single_input_spec
from nasforge.runlock import file_lock, remove_stale_temps

from ._capabilities import RangeDecision, choose_reduce_range, device_fingerprint
from ._checks import OutputCheck, check_outputs
from ._config import QuantConfig
from ._inputs import fit_inputs
from ._methods import QuantJob, QuantMethod, get_method
from ._ort import OrtQuantization, ensure_onnx_path, quantize_onnx
from ._selective import Selection, Trial, run_selection
from ._targets import get_target

if TYPE_CHECKING:
    import torch

    from nasforge.data import DataSplits
    from nasforge.devices import Device

__all__ = ["QuantReport", "quantize", "report_paths"]


@dataclass
class QuantReport:
    """Everything :func:`quantize` decided and measured (saved as ``<out>.report.json`` and ``.md``).

    Attributes:
        source, output: the FP32 and INT8 ONNX files.
        config: the settings asked for; ``method``: the method used (``auto`` resolved).
        range_decision: ``reduce_range`` and why (the target CPU's flags, or the user's choice).
        settings: what onnxruntime's quantizer was given.
        check: FP32 vs INT8 (and the simulated reference) on the validation split.
        latency: per batch size, p50 of FP32 and INT8 on the device, and the speed-up.
        device: the device's settings.
        tensorrt: for target ``tensorrt``: problems TensorRT would have with the Q/DQ graph (none expected) and
            the TensorRT 10 / 11 build plans.
        qat: for method ``qat``: the finetuning record.
        selection: for policy ``selective`` on a device: what stayed in float and why, every variant measured
            (:class:`nasforge.quantize._selective.Selection`).
        seconds: wall time.
    """

    source: str
    output: str
    config: dict[str, Any]
    method: str
    range_decision: dict[str, Any]
    settings: dict[str, Any]
    check: dict[str, Any]
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] | None = None
    qat: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def choice(self) -> str:
        """``"int8"``, ``"mixed"`` (some operator groups in float) or ``"fp32"`` (INT8 did not pay; the FP32 model
        was written); ``"int8"`` when nothing was measured."""
        return str((self.selection or {}).get("choice", "int8"))

    @property
    def saturation(self) -> bool:
        return bool(self.check.get("saturation"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        """The human-readable report."""
        c = self.check
        lines = [f"# INT8 quantization of `{Path(self.source).name}`", "",
                 f"- output: `{self.output}`", f"- method: {self.method}"
                 + (f", calibration {self.settings.get('calibration')} on {self.settings.get('calib_samples')} "
                    "training samples" if self.method == "static" else ""),
                 f"- weights: {'per-channel' if self.settings.get('per_channel') else 'per-tensor'}, "
                 f"reduce_range={self.range_decision['reduce_range']} ({self.range_decision['reason']})",
                 f"- compute nodes quantized: {self.settings.get('quantized_nodes')}, left in float: "
                 f"{self.settings.get('float_nodes')}",
                 f"- device: {self.device.get('name', '?')} ({self.device.get('backend', '?')})", "",
                 "| check | FP32 | INT8 | simulated INT8 |", "|---|---|---|---|"]
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| accuracy ({c['samples']} validation samples) | {fmt(c['fp32_accuracy'])} | "
                     f"{fmt(c['int8_accuracy'])} | {fmt(c['simulated_accuracy'])} |")
        lines.append(f"| relative L2 error vs FP32 | 0 | {c['rel_l2']:.4f} | {c['simulated_rel_l2']:.4f} |")
        lines.append("")
        if self.saturation:
            lines.append("**Saturation:** the INT8 kernels' error is far above the simulated quantization's; the "
                         "integer arithmetic overflows on this CPU. Quantize with reduce_range (the default on CPUs "
                         "without VNNI) or per-tensor weights.")
        else:
            lines.append("No saturation: the INT8 kernels' error is in line with simulated quantization.")
        if self.latency:
            lines += ["", "| batch | FP32 p50 ms | INT8 p50 ms | speed-up |", "|---|---|---|---|"]
            for b, row in self.latency.items():
                lines.append(f"| {b} | {row['fp32_ms']:.4f} | {row['int8_ms']:.4f} | {row['speedup']:.2f}x |")
        if self.selection is not None:
            lines += _selection_markdown(self.selection)
        elif self.config.get("policy") == "selective" and not self.latency:
            lines += ["", "Selective quantization needs a device to measure on (--device); every operator group "
                      "was quantized."]
        if self.tensorrt is not None:
            probs = self.tensorrt["problems"]
            lines += ["", "INT8 accuracy and error above are those of simulated quantization: TensorRT's "
                      "kernels accumulate in 32 bits, onnxruntime's CPU kernels are not what it runs."]
            lines += ["", "TensorRT: " + ("Q/DQ graph fits explicit quantization (int8, zero point 0); "
                                          if not probs else f"{len(probs)} problem(s): {probs[0]}; ")
                      + "TensorRT 10 builds it with builder flags "
                      f"{self.tensorrt['plans']['tensorrt10']['builder_flags']}, TensorRT 11 strongly typed."]
        if self.qat is not None:
            lines += ["", f"QAT: {self.qat.get('epochs')} epoch(s) of fake-quant finetuning; validation accuracy "
                      f"of the finetuned FP32 model {fmt(self.qat.get('fp32_accuracy_after'))}."]
        return "\n".join(lines) + "\n"


def _selection_markdown(selection: dict[str, Any]) -> list[str]:
    trials = [Trial(tuple(t["float_groups"]), t["latency"], t.get("error", "")) for t in selection.get("trials", [])]
    fields = {k: selection[k] for k in ("choice", "reason", "groups", "float_groups", "min_speedup")}
    return Selection(**fields, trials=trials).markdown()


def report_paths(output: str | Path) -> tuple[Path, Path]:
    """``(<output stem>.report.json, <output stem>.report.md)`` next to the INT8 file."""
    output = Path(output)
    stem = output.with_suffix("")
    return stem.with_name(stem.name + ".report.json"), stem.with_name(stem.name + ".report.md")


def _resolve_device(device: str | Device | None, devices_file: str | Path | None) -> Device | None:
    if device is None or device == "none":
        return None
    if isinstance(device, str):
        from nasforge.devices import get_device

        return get_device(device, devices_file)
    return device


def decide_range(config: QuantConfig, device: Device | None, fingerprint: dict[str, Any] | None) -> RangeDecision:
    """The ``reduce_range`` of this quantization: the user's, else from the target's fingerprint."""
    fixed = get_target(config.target).fixed_range()
    if fixed is not None:
        return fixed
    if config.reduce_range is not None:
        return RangeDecision(config.reduce_range, "set explicitly")
    backend = "ort-cpu"
    if device is not None:
        backend = device.remote_backend if device.backend == "remote" else device.backend
    if fingerprint is None:
        if device is None:
            from nasforge.export import environment_fingerprint

            fingerprint = environment_fingerprint(1)
        else:
            fingerprint = device_fingerprint(device)
    return choose_reduce_range(fingerprint, backend=backend)


def _runnable_batches(batches: Sequence[int], batch_dim: int | str | None, src: Path,
                      say: Callable[[str], None]) -> tuple[int, ...]:
    """The asked batch sizes that ``src`` can run: a file exported with a fixed batch runs that batch only. The
    others are named in one line; none left is an error (before any work)."""
    if not isinstance(batch_dim, int):
        return tuple(batches)
    kept = tuple(b for b in batches if b == batch_dim)
    skipped = [b for b in batches if b != batch_dim]
    hint = "export it with --dynamic-batch (`nasforge export ... --dynamic-batch`) to time other batch sizes"
    if not kept:
        raise ConfigError(f"{src.name} has a fixed batch of {batch_dim}, so --batch {','.join(map(str, batches))} "
                          f"cannot be timed; pass --batch {batch_dim} or {hint}")
    if skipped:
        say(f"{src.name} has a fixed batch of {batch_dim}: batch {', '.join(map(str, skipped))} skipped; {hint}")
    return kept


def _measure(device: Device, fp32: Path, int8: Path, batches: Sequence[int],
             batch_dim: int | None, screening: bool = False) -> dict[str, dict[str, float]]:
    """p50 of both files per batch (only batches the file can run: any for a dynamic ``batch_dim``), measured
    alternately (FP32, INT8, FP32, INT8) with the better round kept; ``screening``: a quarter of the device's
    timed runs (at least 20)."""
    profiler = device.profiler()
    opts = device.measure_options()
    if screening:
        opts["runs"] = max(20, opts["runs"] // 4)
    out: dict[str, dict[str, float]] = {}
    for b in batches:
        if batch_dim is not None and b != batch_dim:
            continue
        best = {"fp32_ms": float("inf"), "int8_ms": float("inf")}
        for _ in range(2):
            for key, path in (("fp32_ms", fp32), ("int8_ms", int8)):
                best[key] = min(best[key], profiler.measure(path, batch=b, **opts).median_ms)
        out[str(b)] = {**best, "speedup": best["fp32_ms"] / best["int8_ms"]}
    return out


def quantize(
    model: str | Path, out: str | Path, *, data: DataSplits | None = None, config: QuantConfig | None = None,
    device: str | Device | None = "cpu", devices_file: str | Path | None = None, batches: Sequence[int] = (1,),
    check_samples: int = 1000, fingerprint: dict[str, Any] | None = None, torch_model: torch.nn.Module | None = None,
    qat_options: dict[str, Any] | None = None, write_report: bool = True, log: Callable[[str], None] | None = None,
) -> QuantReport:
    """Quantize the FP32 ONNX file ``model`` to INT8 at ``out``, check it and measure it.

    Args:
        model: an FP32 ``.onnx`` file (``nasforge export``, ``nasforge run``'s subnets, ``nasforge prune``).
        out: the INT8 ``.onnx`` file to write; the report goes next to it (:func:`report_paths`).
        data: the task's data: ``config.calib_samples`` training samples calibrate, the validation split checks.
            Needed by static quantization and QAT; optional for dynamic (the checks then use random inputs and
            report no accuracy).
        config: the settings (:class:`QuantConfig`; default: auto method, MinMax, per-channel, auto reduce_range).
        device: the target (a name in ``devices.yaml`` or a :class:`~nasforge.devices.Device`): its CPU decides
            ``reduce_range`` and latency is measured on it; ``None`` or ``"none"`` measures nothing.
        batches: batch sizes to time (sizes the file cannot run are skipped).
        check_samples: at most this many validation samples in the checks.
        fingerprint: the target's fingerprint, instead of asking the device (tests, offline decisions).
        torch_model: the PyTorch model the ONNX file was exported from; required by ``method="qat"``.
        qat_options: keyword arguments of :func:`nasforge.quantize.qat_finetune`.

    Returns:
        A :class:`QuantReport` (also written as JSON and Markdown next to ``out`` unless ``write_report=False``).

    Raises:
        ExportError: ``model`` is missing or not ONNX, or onnxruntime cannot quantize it.
        ConfigError: bad settings, ``out`` equal to ``model``, static quantization or QAT without data, or
            another process writing ``out`` (:func:`nasforge.runlock.file_lock`; temporary folders of killed
            quantizations next to ``out`` are removed).
        DataError: the data does not fit the model's input.
    """
    started = time.perf_counter()
    config = config or QuantConfig()
    say = log or (lambda _msg: None)
    src, dst, spec = _check_files(Path(model), Path(out))
    method = get_method(config.method)
    method.check(data, torch_model)
    dev = _resolve_device(device, devices_file)
    if dev is not None:
        batches = _runnable_batches(batches, spec.dims[0], src, say)
    decision = decide_range(config, dev, fingerprint)
    say(f"reduce_range={decision.reduce_range}: {decision.reason}")
    job = QuantJob(src, dst, config, decision.reduce_range, spec.dims, data, torch_model, qat_options or {}, say)
    with file_lock(dst, "nasforge quantize"):  # one writer per INT8 file and its report
        remove_stale_temps(dst.parent)
        report = _run(job, method, spec, dev, batches, decision, check_samples)
        report.seconds = time.perf_counter() - started
        if write_report:
            json_path, md_path = report_paths(dst)
            atomic_write_json(json_path, report.to_dict())
            atomic_write_text(md_path, report.to_markdown())
    return report


def _check_files(src: Path, dst: Path) -> tuple[Path, Path, InputSpec]:
    """Check the FP32 file and the output path; ``(src, dst, the model's input)``."""
    proto = ensure_onnx_path(src)
    if dst.suffix != ".onnx":
        raise ConfigError(f"--out {dst} should be an .onnx file (e.g. model.int8.onnx)")
    if dst.resolve() == src.resolve():
        raise ConfigError(f"--out {dst} is the input file; write the INT8 model to another file")
    return src, dst, single_input_spec(proto, src)


def _run(job: QuantJob, method: QuantMethod, spec: InputSpec, dev: Device | None, batches: Sequence[int],
         decision: RangeDecision, check_samples: int) -> QuantReport:
    """Quantize, check and measure (the caller holds the lock on ``job.dst``); the report without timing."""
    config, src, dst, say = job.config, job.src, job.dst, job.log
    calib, val_x, val_y = _check_inputs(job.data, config, spec, src, check_samples)
    fp32_for_int8, qat_record = method.fp32_source(job)
    say(f"quantizing {src.name} ({config.method}) ...")
    target = get_target(config.target)

    def write(out: Path, cfg: QuantConfig) -> OrtQuantization:
        return quantize_onnx(fp32_for_int8, out, cfg, reduce_range=decision.reduce_range, calib_x=calib)

    latency: dict[str, dict[str, float]] = {}
    selection: Selection | None = None
    if dev is not None and config.policy == "selective" and target.onnxruntime_kernels:
        say(f"selective quantization: measuring on {dev.name} which operator groups INT8 speeds up ...")
        def measure(path: Path, screening: bool) -> dict[str, dict[str, float]]:
            return _measure(dev, src, path, batches, spec.dims[0], screening)

        result, latency, selection = run_selection(src, dst, config, write, measure, say)
    else:
        result = write(dst, config)
        if dev is not None:
            say(f"measuring FP32 and INT8 on {dev.name} ...")
            latency = _measure(dev, src, dst, batches, spec.dims[0])
    check: OutputCheck = check_outputs(src, dst, val_x, val_y, factor=config.saturation_factor,
                                       margin=config.saturation_margin, kernels=target.onnxruntime_kernels)
    return QuantReport(source=str(src), output=str(dst), config=config.to_dict(), method=result.method,
                       range_decision=decision.to_dict(), settings=result.settings, check=check.to_dict(),
                       latency=latency, device={} if dev is None else dev.to_dict(), tensorrt=target.report(dst),
                       qat=qat_record, selection=None if selection is None else selection.to_dict())


def _check_inputs(data: DataSplits | None, config: QuantConfig, spec: InputSpec, src: Path, check_samples: int
                  ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """``(calibration inputs, check inputs, check labels)`` shaped for the model; without data: no calibration,
    64 seeded random check inputs and no labels."""
    if data is None:
        rng = np.random.default_rng(0)
        shape = [d or 1 for d in spec.dims[1:]]
        return None, rng.standard_normal((64, *shape)).astype(np.float32), None
    calib = fit_inputs(data.train.head(config.calib_samples), spec.dims, f"'{src.name}'")
    val_x = fit_inputs(data.val.head(check_samples), spec.dims, f"'{src.name}'")
    return calib, val_x, data.val.y[:check_samples].numpy()


def read_report(path: str | Path) -> dict[str, Any]:
    """A saved report (JSON).

    Raises:
        ExportError: missing or unreadable.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read quantization report {path}: {err}") from None
