"""Export a PyTorch module to one self-contained ONNX file, checked against onnxruntime before it is kept."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nasforge.errors import ConfigError, ExportError, MissingDependencyError
from nasforge.io import atomic_write_bytes
from nasforge.runlock import remove_stale_temps, temp_prefix

from ._onnx_io import first_line, open_session
from ._parity import eval_mode, session_parity
from ._rewrite import spatial_means_to_global_pool

if TYPE_CHECKING:
    import onnx

__all__ = ["EXPORTERS", "ExportResult", "export_onnx"]

EXPORTERS = ("dynamo", "torchscript")
_RESERVED_METADATA = (
    "nasforge_version",
    "input_shape",
    "input_name",
    "output_name",
    "dynamic_batch",
    "exporter",
)
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how closely it matches the PyTorch model.

    Attributes:
        path: the written ``.onnx`` file (self-contained, no external data).
        opset: the default-domain opset of the written model.
        max_abs_diff: worst absolute output difference, onnxruntime vs PyTorch, over all parity inputs.
        parity_inputs: how many inputs the parity check ran.
        input_shape: shape of the example input.
        dynamic_batch: whether dim 0 of the input and output is dynamic.
        exporter: ``"dynamo"`` or ``"torchscript"``.
    """

    path: Path
    opset: int
    max_abs_diff: float
    parity_inputs: int
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    exporter: str = "dynamo"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (path as str, shape as list)."""
        return {
            "path": str(self.path),
            "opset": self.opset,
            "max_abs_diff": self.max_abs_diff,
            "parity_inputs": self.parity_inputs,
            "input_shape": list(self.input_shape),
            "dynamic_batch": self.dynamic_batch,
            "exporter": self.exporter,
        }


def export_onnx(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    *,
    opset: int = 18,
    dynamic_batch: bool = False,
    metadata: Mapping[str, str] | None = None,
    check_inputs: Sequence[torch.Tensor] = (),
    atol: float = 1e-4,
    exporter: str = "dynamo",
    input_name: str = "input",
    output_name: str = "logits",
    rewrite: bool = True,
) -> ExportResult:
    """Export ``model`` to ONNX at ``path``, keeping the file only if onnxruntime reproduces PyTorch.

    The model is exported in eval mode (each submodule's mode is restored afterwards) into a temporary folder
    next to ``path`` (named after this process, :func:`nasforge.runlock.temp_prefix`; those of killed exports
    are removed here); the result is validated with ``onnx.checker``, made self-contained (weights inlined),
    tagged with metadata, and compared with PyTorch in onnxruntime (CPU) on the example input, two seeded
    random inputs of its shape, every tensor in ``check_inputs`` and, with ``dynamic_batch``, one input of
    another batch size. Only then is it moved atomically to ``path``; on any failure ``path`` is untouched.

    Args:
        model: a module whose forward takes one tensor and returns one tensor.
        example_input: an input to trace with; its shape is recorded in the metadata.
        path: destination ``.onnx`` file; its folder is created if needed.
        opset: ONNX opset of the default domain.
        dynamic_batch: make dim 0 of the input and output dynamic.
        metadata: extra string key/value pairs for ``metadata_props``, not the keys nasforge writes itself
            (``nasforge_version``, ``input_shape``, ``input_name``, ``output_name``, ``dynamic_batch``, ``exporter``).
        check_inputs: more inputs for the parity check (same shape as ``example_input``, except dim 0 when
            ``dynamic_batch``).
        atol: largest acceptable absolute output difference.
        exporter: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``, needs onnxscript) or ``"torchscript"``.
        input_name, output_name: names of the graph input and output.
        rewrite: apply :func:`~nasforge.export.spatial_means_to_global_pool` (faster in onnxruntime, same values).

    Returns:
        An :class:`ExportResult`.

    Raises:
        ConfigError: an argument is invalid (the message names it and the fix).
        MissingDependencyError: ``exporter="dynamo"`` without onnxscript installed.
        ExportError: the exporter failed, produced an invalid model, or parity exceeds ``atol``.
    """
    path = Path(path)
    _check_export_args(example_input, check_inputs, opset, atol, exporter, dynamic_batch, metadata)
    props = _metadata_props(metadata, example_input, input_name, output_name, dynamic_batch, exporter)
    inputs = _parity_inputs(example_input, check_inputs, dynamic_batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)  # folders left by exports that were killed (never a live one's)
    with _temp_dir(path) as tmp_dir:
        proto = _export_to_proto(
            model, example_input, tmp_dir / path.name, opset, dynamic_batch, exporter, (input_name, output_name)
        )
        _finish(proto, props, rewrite)
        diff = _write_if_parity(model, proto, inputs, path, atol, exporter)
    return ExportResult(path, _opset_of(proto), diff, len(inputs), tuple(example_input.shape), dynamic_batch, exporter)


def _finish(proto: onnx.ModelProto, props: dict[str, str], rewrite: bool) -> None:
    """The runtime-friendly rewrites (same values; checked by the parity check that follows) and the metadata."""
    if rewrite:
        spatial_means_to_global_pool(proto)
    proto.metadata_props.extend(_props(props))


@contextlib.contextmanager
def _temp_dir(path: Path) -> Iterator[Path]:
    """A scratch folder next to ``path``, named after this process, removed on exit."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=".export", dir=path.parent))
    try:
        yield tmp_dir
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _write_if_parity(
    model: torch.nn.Module,
    proto: onnx.ModelProto,
    inputs: Sequence[torch.Tensor],
    path: Path,
    atol: float,
    exporter: str,
) -> float:
    """Write ``proto`` atomically to ``path`` if onnxruntime reproduces ``model`` within ``atol``.

    Returns:
        The largest absolute output difference over ``inputs``.

    Raises:
        ExportError: the difference exceeds ``atol`` (``path`` is not written).
    """
    data = _serialize(proto)
    diff = session_parity(model, open_session(data), inputs)
    if not diff <= atol:
        raise ExportError(
            f"ONNX output differs from PyTorch by {diff:.3g} (max abs diff) > atol {atol:g} over "
            f"{len(inputs)} inputs; '{path}' was not written. Check for data-dependent control flow "
            f"or train-only behaviour, try exporter='{_other(exporter)}', or raise atol"
        )
    atomic_write_bytes(path, data)
    return diff


def _other(exporter: str) -> str:
    """The exporter to suggest when ``exporter`` failed."""
    return "torchscript" if exporter == "dynamo" else "dynamo"


def _check_export_args(
    example: torch.Tensor,
    check_inputs: Sequence[torch.Tensor],
    opset: int,
    atol: float,
    exporter: str,
    dynamic_batch: bool,
    metadata: Mapping[str, str] | None,
) -> None:
    """Raise ConfigError on the first invalid export argument (MissingDependencyError: dynamo, no onnxscript)."""
    import onnx

    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter {exporter!r} is unknown; choose one of {EXPORTERS}")
    if not isinstance(opset, int) or not 7 <= opset <= onnx.defs.onnx_opset_version():
        raise ConfigError(
            f"opset {opset!r} is unsupported; choose an int in [7, {onnx.defs.onnx_opset_version()}]"
        )
    if not atol >= 0:
        raise ConfigError(f"atol {atol!r} must be >= 0")
    if not isinstance(example, torch.Tensor) or example.numel() == 0:
        raise ConfigError(f"example_input must be a non-empty tensor, got {_describe(example)}")
    for i, x in enumerate(check_inputs):
        if not _compatible(example, x, dynamic_batch):
            raise ConfigError(
                f"check_inputs[{i}] is {_describe(x)} but example_input is {_describe(example)}; "
                "pass inputs of the same dtype and shape" + (" (dim 0 may differ)" if dynamic_batch else "")
            )
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(
                f"metadata {key!r}: {value!r} is not str -> str; convert keys and values to str"
            )
        if key in _RESERVED_METADATA:
            raise ConfigError(f"metadata key {key!r} is reserved by nasforge; rename it")
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise MissingDependencyError(
            "exporter='dynamo' needs onnxscript: pip install onnxscript (or use exporter='torchscript')"
        )


def _describe(x: object) -> str:
    """Short description of a tensor (dtype and shape) or of any other object."""
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def _compatible(example: torch.Tensor, x: object, dynamic_batch: bool) -> bool:
    """Whether ``x`` can be fed to a model exported from ``example``."""
    if not isinstance(x, torch.Tensor) or x.dtype != example.dtype or x.dim() != example.dim():
        return False
    start = 1 if dynamic_batch else 0
    return tuple(x.shape[start:]) == tuple(example.shape[start:]) and x.shape[0] >= 1


def _metadata_props(
    metadata: Mapping[str, str] | None,
    example: torch.Tensor,
    input_name: str,
    output_name: str,
    dynamic_batch: bool,
    exporter: str,
) -> dict[str, str]:
    """The user's metadata plus what nasforge records about the export."""
    from nasforge import __version__

    props = dict(metadata or {})
    props.update(
        nasforge_version=__version__,
        input_shape=json.dumps(list(example.shape)),
        input_name=input_name,
        output_name=output_name,
        dynamic_batch=json.dumps(dynamic_batch),
        exporter=exporter,
    )
    return props


def _props(props: Mapping[str, str]) -> list[onnx.StringStringEntryProto]:
    """``metadata_props`` entries for a dict."""
    import onnx

    return [onnx.StringStringEntryProto(key=key, value=value) for key, value in props.items()]


def _random_like(example: torch.Tensor, gen: torch.Generator, batch: int | None = None) -> torch.Tensor:
    """A seeded random tensor like ``example`` (optionally with another batch size)."""
    shape = (batch, *example.shape[1:]) if batch is not None else tuple(example.shape)
    if example.is_floating_point():
        return torch.randn(shape, generator=gen, dtype=example.dtype).to(example.device)
    low, high = int(example.min()), int(example.max()) + 1
    return torch.randint(low, high, shape, generator=gen).to(example.dtype).to(example.device)


def _parity_inputs(
    example: torch.Tensor, check_inputs: Sequence[torch.Tensor], dynamic_batch: bool
) -> list[torch.Tensor]:
    """Example input, two seeded random ones, another batch size when dynamic, and the user's inputs."""
    gen = torch.Generator().manual_seed(0)
    inputs = [example, _random_like(example, gen), _random_like(example, gen)]
    if dynamic_batch:
        inputs.append(_random_like(example, gen, batch=example.shape[0] + 2))
    return inputs + list(check_inputs)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Contain the exporters' prints, log lines and warnings; restore everything afterwards.

    torch's own log handlers keep a reference to the original stderr, so redirecting it does not reach them:
    the level of the ``torch`` logger (which its sub-loggers inherit) is raised for the duration instead.
    """
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _batch_arg_name(model: torch.nn.Module) -> str | None:
    """Name of forward's first parameter (``None`` when it is ``*args``)."""
    params = list(inspect.signature(model.forward).parameters.values())
    if not params or params[0].kind is inspect.Parameter.VAR_POSITIONAL:
        return None
    return params[0].name


def _dynamic_kwargs(
    model: torch.nn.Module, dynamic_batch: bool, exporter: str, names: tuple[str, str]
) -> dict:
    """Exporter keyword arguments that make dim 0 dynamic."""
    if not dynamic_batch:
        return {}
    if exporter == "torchscript":
        return {"dynamic_axes": {name: {0: "batch"} for name in names}}
    dims = {0: torch.export.Dim("batch")}
    arg = _batch_arg_name(model)
    return {"dynamic_shapes": {arg: dims} if arg is not None else (dims,)}


def _export_to_proto(
    model: torch.nn.Module,
    example: torch.Tensor,
    tmp_file: Path,
    opset: int,
    dynamic_batch: bool,
    exporter: str,
    names: tuple[str, str],
) -> onnx.ModelProto:
    """Run the exporter into ``tmp_file`` and load the result with any external data inlined."""
    kwargs = _dynamic_kwargs(model, dynamic_batch, exporter, names)
    if dynamic_batch and exporter == "dynamo" and example.shape[0] == 1:
        # torch.export specialises a size-1 dim to the constant 1 ("Invalid ranges [2:1]"): trace with two rows
        example = torch.cat([example, example])
    try:
        with eval_mode(model), _quiet_exporter():
            torch.onnx.export(
                model,
                (example,),
                str(tmp_file),
                dynamo=exporter == "dynamo",
                opset_version=opset,
                input_names=[names[0]],
                output_names=[names[1]],
                verbose=False,
                **kwargs,
            )
    except torch.onnx.errors.OnnxExporterError as err:
        raise ExportError(
            f"the {exporter} exporter failed: {_root_cause(err)}; try exporter='{_other(exporter)}'"
        ) from err
    return _load_exported(tmp_file, exporter)


def _root_cause(err: BaseException) -> str:
    """``Type: first line`` of the innermost cause (the dynamo exporter wraps torch.export's error)."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    return first_line(root) if root is err else f"{type(root).__name__}: {first_line(root)}"


def _load_exported(tmp_file: Path, exporter: str) -> onnx.ModelProto:
    """Load and check the exporter's output; weights in side files are read into the model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(tmp_file), load_external_data=True)
        if proto.ByteSize() > _PROTOBUF_LIMIT:
            raise ExportError(
                f"the model is {proto.ByteSize() / 2**30:.2f} GiB, over protobuf's 2 GiB limit for a "
                "self-contained ONNX file; shrink the model (e.g. prune or quantize it) before export"
            )
        onnx.checker.check_model(proto)
    except (DecodeError, onnx.checker.ValidationError, OSError) as err:
        raise ExportError(
            f"the {exporter} exporter wrote an invalid model: {first_line(err)}; "
            f"try exporter='{_other(exporter)}'"
        ) from err
    return proto


def _serialize(proto: onnx.ModelProto) -> bytes:
    """Serialize a self-contained model (every tensor stored inline)."""
    import onnx

    for tensor in proto.graph.initializer:
        assert tensor.data_location != onnx.TensorProto.EXTERNAL, "external data was not inlined"
    return proto.SerializeToString()


def _opset_of(proto: onnx.ModelProto) -> int:
    """The default-domain opset version of ``proto``."""
    return next((op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")), 0)
