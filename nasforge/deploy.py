"""``nasforge export``: one subnet of a trained supernet as a verified, self-describing ONNX file.

The source is a supernet checkpoint, a run folder (``nasforge train`` / ``nasforge run``; its recorded dataset is
reused) or one exported subnet folder of a run (``RUN/subnets/K``, whose ``arch.json`` names the architecture).
The subnet's BatchNorm statistics are recalibrated on training images, the file is checked with
``onnx.checker`` and against PyTorch in onnxruntime on random *and* real validation images, and it carries its
architecture, input shape, normalisation, nasforge version and the checkpoint's SHA-256 as metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nasforge.archspec import read_arch_spec
from nasforge.data import load_data
from nasforge.errors import ConfigError
from nasforge.export import ExportResult, export_onnx, get_export_format, list_export_formats
from nasforge.io import sha256_file
from nasforge.runfolder import resolve_run_source
from nasforge.runlock import file_lock
from nasforge.supernets import Architecture, Supernet
from nasforge.supernets.checkpoint import load_supernet
from nasforge.supernets.evaluate import calibrated_subnet, resize

__all__ = ["ExportedSubnet", "SubnetMetadata", "export_subnet", "read_arch_spec", "resolve_export_source",
           "write_subnet_onnx"]

FORMATS = tuple(list_export_formats())  #: ``nasforge export --format`` names (the export-format registry)


@dataclass
class ExportedSubnet:
    """What :func:`export_subnet` wrote and checked."""

    path: Path
    arch: Architecture
    input_shape: tuple[int, ...]
    max_abs_diff: float
    parity_inputs: int
    real_inputs: int
    metadata: dict[str, str] = field(default_factory=dict)
    slimmed: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None
    dynamic_batch: bool = False

    @property
    def input_dims(self) -> list[int | str]:
        """The file's input dims, ``"batch"`` where the batch is dynamic (``input_shape`` is the example's)."""
        return ["batch" if i == 0 and self.dynamic_batch else d for i, d in enumerate(self.input_shape)]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "arch": self.arch.to_dict(), "input_shape": list(self.input_shape),
                "input_dims": self.input_dims, "dynamic_batch": self.dynamic_batch,
                "max_abs_diff": self.max_abs_diff, "parity_inputs": self.parity_inputs,
                "real_inputs": self.real_inputs, "metadata": dict(self.metadata), "slimmed": self.slimmed,
                "engine": self.engine}


@dataclass(frozen=True)
class SubnetMetadata:
    """The one metadata schema of every subnet deliverable (``nasforge export``, ``run``, ``prune``).

    :meth:`to_dict` gives the ONNX ``metadata_props``; a field left ``None`` is omitted, never renamed.
    :func:`~nasforge.export.export_onnx` adds ``nasforge_version``, ``input_shape`` and the other keys it reserves.
    """

    dataset: str
    mean: Sequence[float]
    std: Sequence[float]
    resolution: int | None = None
    arch: Architecture | None = None
    supernet: str | None = None
    checkpoint: Path | None = None
    checkpoint_sha256: str | None = None
    source: str | None = None
    base_model: Mapping[str, Any] | None = None
    pruning_target: str | None = None
    criterion: str | None = None

    def to_dict(self) -> dict[str, str]:
        """The ``metadata_props`` keys and string values (normalisation as JSON lists)."""
        values: dict[str, str | None] = {
            "architecture": self.arch.to_json() if self.arch is not None else None,
            "supernet": self.supernet,
            "dataset": self.dataset,
            "resolution": str(self.resolution) if self.resolution is not None else None,
            "normalization_mean": json.dumps([float(v) for v in self.mean]),
            "normalization_std": json.dumps([float(v) for v in self.std]),
            "source_checkpoint": self.checkpoint.name if self.checkpoint is not None else None,
            "source_checkpoint_sha256": self.checkpoint_sha256,
            "source": self.source,
            "base_model": json.dumps(self.base_model, sort_keys=True) if self.base_model is not None else None,
            "pruning_target": self.pruning_target,
            "criterion": self.criterion,
        }
        return {key: value for key, value in values.items() if value is not None}


def write_subnet_onnx(model: torch.nn.Module, out: str | Path, example: torch.Tensor, metadata: SubnetMetadata, *,
                      check_inputs: Sequence[torch.Tensor] = (), opset: int = 18, dynamic_batch: bool = False,
                      atol: float = 1e-4, exporter: str = "dynamo") -> ExportResult:
    """Export one subnet deliverable (a subnet, or a pruned model) to ``out`` with the :class:`SubnetMetadata`
    schema; the one exporter of ``nasforge export``, ``nasforge run`` and ``nasforge prune``.

    Args:
        model: the module to export (eval mode).
        out: the ``.onnx`` file (written atomically, only if parity holds).
        example: the traced input (its shape is recorded).
        metadata: what the file says about itself.
        check_inputs: more inputs for the parity check against PyTorch.
        opset: ONNX opset.
        dynamic_batch: a symbolic batch dimension.
        atol: largest allowed absolute difference to PyTorch.
        exporter: ``"dynamo"`` or ``"torchscript"``.

    Raises:
        ExportError: export or parity failed (nothing is written).
    """
    return export_onnx(model, example, out, opset=opset, dynamic_batch=dynamic_batch, metadata=metadata.to_dict(),
                       check_inputs=check_inputs, atol=atol, exporter=exporter)


def resolve_export_source(source: str | Path) -> tuple[Path, str | None, int | None, Path | None]:
    """``(checkpoint, recorded data spec, recorded image size, arch.json of a subnet folder or None)``; see
    :func:`nasforge.runfolder.resolve_run_source`."""
    found = resolve_run_source(source, subnet_folders=True)
    return found.checkpoint, found.data, found.image_size, found.arch_file


def _with_resolution(net: Supernet, arch: Architecture, resolution: int | None) -> Architecture:
    if resolution is None:
        return arch
    space = net.space
    if "r" in space.names:
        choices = space.dim("r").choices
        if resolution not in choices:
            raise ConfigError(f"--resolution {resolution} is not one of this space's resolutions {list(choices)}")
        return space.canonical(arch.replace(r=resolution))
    if resolution != net.resolution(arch):
        raise ConfigError(f"space {space.name!r} has the fixed input resolution {net.resolution(arch)}; "
                          "drop --resolution")
    return arch


def export_subnet(
    source: str | Path,
    out: str | Path,
    *,
    arch: str | Architecture | Mapping[str, Any] | None = None,
    fmt: str = "onnx",
    data: str | None = None,
    dynamic_batch: bool = False,
    opset: int = 18,
    resolution: int | None = None,
    atol: float = 1e-4,
    calib_images: int = 500,
    real_inputs: int = 16,
    slim: bool = False,
    exporter: str = "dynamo",
    seed: int = 0,
) -> ExportedSubnet:
    """Export one subnet of ``source`` to ``out`` (``.onnx``) after BN recalibration and parity checks.

    Args:
        source: a supernet checkpoint, a run folder, or a run's ``subnets/K`` folder.
        out: the ``.onnx`` file to write (atomically; nothing is written if a check fails).
        arch: ``"largest"``, ``"smallest"``, JSON text, a ``.json`` file, an :class:`Architecture` or a mapping;
            default: the subnet folder's ``arch.json``, else the largest subnet.
        fmt: ``"onnx"``, or ``"tensorrt"`` (the ONNX file plus an engine next to it; needs ``nasforge[tensorrt]``
            and a GPU).
        data: dataset spec for BN recalibration and the real-input parity check (default: the run's own).
        dynamic_batch: a symbolic batch dimension (checked at two batch sizes).
        opset: ONNX opset.
        resolution: input resolution (one of the space's, if it searches resolution).
        atol: largest allowed absolute difference to PyTorch.
        calib_images: training images for BN recalibration.
        real_inputs: validation images checked one by one (and as one batch with ``dynamic_batch``).
        slim: also try onnxruntime's hardware-independent graph optimisations and keep them if they remove nodes
            and parity still holds.
        exporter: ``"dynamo"`` or ``"torchscript"``.
        seed: data split seed.

    Raises:
        ConfigError: bad options, a source without data and no ``data`` given, or another process exporting to
            ``out`` (:func:`nasforge.runlock.file_lock`; the message names it).
        ArchitectureError: an architecture outside the space.
        CheckpointError: a damaged checkpoint.
        ExportError: export or parity failed (the file is not written).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is unknown; choose one of {list(FORMATS)}")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out} must end in .onnx (a TensorRT engine is written next to it)")
    if real_inputs < 1 or calib_images < 1:
        raise ConfigError("real_inputs and calib_images must be >= 1")
    # One writer per destination: the .onnx file, its in-place slimming and its engine belong together.
    with file_lock(out, "nasforge export"):
        return _export_locked(source, out, arch=arch, fmt=fmt, data=data, dynamic_batch=dynamic_batch, opset=opset,
                              resolution=resolution, atol=atol, calib_images=calib_images,
                              real_inputs=real_inputs, slim=slim, exporter=exporter, seed=seed)


def _export_locked(source: str | Path, out: Path, *, arch: str | Architecture | Mapping[str, Any] | None, fmt: str,
                   data: str | None, dynamic_batch: bool, opset: int, resolution: int | None, atol: float,
                   calib_images: int, real_inputs: int, slim: bool, exporter: str, seed: int) -> ExportedSubnet:
    """:func:`export_subnet` once its arguments are checked and ``out`` is locked."""
    checkpoint, recorded_data, recorded_size, arch_file = resolve_export_source(source)
    net, _ = load_supernet(checkpoint)
    if arch is None:
        chosen = read_arch_spec(str(arch_file), net) if arch_file is not None else net.space.largest()
    elif isinstance(arch, str):
        chosen = read_arch_spec(arch, net)
    else:
        chosen = net.space.canonical(arch)
    chosen = _with_resolution(net, chosen, resolution)
    spec = data or recorded_data
    if spec is None:
        raise ConfigError(f"{source} records no dataset: pass --data SPEC (BatchNorm is recalibrated on its "
                          "training images and parity is checked on its validation images)")
    size = recorded_size or net.resolution(net.space.largest())
    splits = load_data(spec, image_size=size, seed=seed)
    if splits.train.x.shape[1] != net.input_shape(chosen)[0]:
        raise ConfigError(f"dataset {spec!r} has {splits.train.x.shape[1]} channels but the supernet expects "
                          f"{net.input_shape(chosen)[0]}")
    r = net.resolution(chosen)
    torch.manual_seed(seed)
    sub = calibrated_subnet(net, chosen, splits.train.head(calib_images), calib_images)
    val = resize(splits.val.head(real_inputs), r)
    checks = [val[i : i + 1] for i in range(len(val))]
    if dynamic_batch and len(val) > 1:
        checks.append(val)
    meta = SubnetMetadata(dataset=spec, mean=splits.mean, std=splits.std, resolution=r, arch=chosen,
                          supernet=net.space.name, checkpoint=checkpoint, checkpoint_sha256=sha256_file(checkpoint))
    result = write_subnet_onnx(sub, out, checks[0], meta, check_inputs=checks[1:], opset=opset,
                               dynamic_batch=dynamic_batch, atol=atol, exporter=exporter)
    metadata = meta.to_dict()
    exported = ExportedSubnet(path=out, arch=chosen, input_shape=tuple(checks[0].shape), metadata=metadata,
                              max_abs_diff=result.max_abs_diff, parity_inputs=result.parity_inputs,
                              real_inputs=len(checks), dynamic_batch=dynamic_batch)
    if slim:
        from nasforge.export import slim_onnx

        exported.slimmed = slim_onnx(out, [c.numpy() for c in checks], atol=atol)
    exported.engine = get_export_format(fmt).finish(out)  # the format's artefact beside the ONNX file
    return exported
