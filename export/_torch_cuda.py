"""The ``torch-cuda`` latency backend: PyTorch eager (or a CUDA graph) on a GPU, timed with CUDA events.

The protocol is :class:`~nasforge.export.Profiler`'s; each run is timed with CUDA events recorded on a
dedicated stream around the work (:func:`~nasforge.export._gpu_info.event_timer`). torch is imported only
when the backend measures.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from nasforge.errors import ConfigError

from ._gpu_info import check_device, event_timer, gpu_fingerprint, require_cuda
from ._latency import MeasureSettings, ModelKind, PreparedRun, Profiler, register_profiler
from ._onnx_io import first_line

if TYPE_CHECKING:
    import torch

__all__ = ["TorchCudaProfiler"]


def _float_dtype(model: torch.nn.Module) -> Any:
    """Floating dtype of the module's parameters (float32 if it has none)."""
    import torch

    dtype = torch.float32
    for param in model.parameters():
        if param.is_floating_point():
            dtype = param.dtype
    return dtype


@register_profiler("torch-cuda")
class TorchCudaProfiler(Profiler):
    """PyTorch eager on a CUDA device, each run timed with CUDA events on a dedicated stream.

    It times ``model(x)`` on the GPU, ``x`` random of shape ``(batch, *input_shape)``. A copy of the module is
    moved to the GPU and put in eval mode (``model`` itself is left untouched); the thread count is restored
    afterwards. Without a CUDA device :meth:`measure` raises a one-line :class:`ConfigError`, also when the
    forward cannot be captured in a graph.

    Options: ``cuda_graphs`` (capture the forward in a ``torch.cuda.CUDAGraph`` after warm-up and time its
    replays: no per-kernel launch overhead), ``device`` (CUDA device index).
    """

    model_kind = ModelKind.MODULE
    model_hint = "use backend='ort-cuda' or 'tensorrt' for .onnx files"
    needs_input_shape = True

    def __init__(self, *, cuda_graphs: bool = False, device: int = 0) -> None:
        if not isinstance(cuda_graphs, bool):
            raise ConfigError(f"torch-cuda cuda_graphs={cuda_graphs!r} is invalid; pass True or False")
        self.cuda_graphs = cuda_graphs
        self.device = check_device("torch-cuda", device)

    @contextmanager
    def prepare(self, model: torch.nn.Module, settings: MeasureSettings) -> Iterator[PreparedRun]:
        """Copy the module to the GPU, make the input, and run on a dedicated stream without autograd."""
        torch = require_cuda(self.name, self.device, "torch-cpu")
        assert settings.input_shape is not None  # needs_input_shape
        device = torch.device("cuda", self.device)
        net = copy.deepcopy(model).to(device).eval()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((settings.batch, *settings.input_shape), generator=gen, dtype=_float_dtype(net))
        x = x.to(device)
        previous = torch.get_num_threads()
        torch.set_num_threads(settings.threads)
        try:
            with torch.cuda.device(device), self._on_stream(torch, device) as stream:
                if self.cuda_graphs:
                    run = self._capture(torch, net, x, settings.warmup, stream)
                else:

                    def run() -> None:
                        net(x)

                yield PreparedRun(
                    event_timer(torch, run, stream),
                    self_timed=True,
                    fingerprint=lambda: gpu_fingerprint(
                        settings.threads, self.device, timer="cuda-events", cuda_graphs=self.cuda_graphs
                    ),
                )
        finally:
            torch.set_num_threads(previous)

    @contextmanager
    def _on_stream(self, torch_mod: Any, device: Any) -> Iterator[Any]:
        """A new stream made current, with autograd off (inference mode; plain no_grad for graph capture)."""
        stream = torch_mod.cuda.Stream(device)
        stream.wait_stream(torch_mod.cuda.current_stream(device))
        grad_off = torch_mod.no_grad() if self.cuda_graphs else torch_mod.inference_mode()
        with torch_mod.cuda.stream(stream), grad_off:
            yield stream

    def _capture(self, torch_mod: Any, net: Any, x: Any, warmup: int, stream: Any) -> Callable[[], object]:
        """Warm up eagerly on ``stream``, capture one forward in a CUDA graph, return its ``replay``."""
        graph = torch_mod.cuda.CUDAGraph()
        try:
            for _ in range(max(warmup, 3)):  # cuDNN autotuning and allocator warm-up before capture
                net(x)
            stream.synchronize()
            with torch_mod.cuda.graph(graph, stream=stream):
                net(x)
        except RuntimeError as err:
            raise ConfigError(
                f"{self.name} cannot capture the model in a CUDA graph ({first_line(err)}); "
                "measure with cuda_graphs=False"
            ) from err
        return graph.replay
