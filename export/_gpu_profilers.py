"""GPU latency backends: ``ort-cuda``, ``ort-tensorrt`` (onnxruntime-gpu), ``torch-cuda`` and ``tensorrt``.

Importing this module registers them; each lives in its own module and follows the protocol of
:class:`~nasforge.export.Profiler`. What differs on a GPU is the clock: ``torch-cuda`` and ``tensorrt`` time
each run with CUDA events recorded on the stream around the work (``timed_runs(..., self_timed=True)``),
waiting for the end event before the next run; the onnxruntime backends time ``run_with_iobinding`` plus a
synchronisation of the outputs with the host clock, since onnxruntime exposes no stream to record events on.
Their fingerprint adds the GPU (name, compute capability, memory, driver) and the CUDA / TensorRT /
onnxruntime-gpu versions (:func:`gpu_fingerprint`, in :mod:`._gpu_info`).

* :mod:`._ort_gpu` — ``ort-cuda``, ``ort-tensorrt``;
* :mod:`._torch_cuda` — ``torch-cuda``;
* :mod:`._trt_profiler` — ``tensorrt`` (engines from :func:`~nasforge.export.build_engine`).

torch, onnxruntime and tensorrt are imported only when a backend measures.
"""

from __future__ import annotations

from ._gpu_info import gpu_fingerprint, gpu_info
from ._ort_gpu import OrtCudaProfiler, OrtTensorrtProfiler
from ._torch_cuda import TorchCudaProfiler
from ._trt_profiler import ENGINE_SUFFIXES, TensorrtProfiler

__all__ = [
    "ENGINE_SUFFIXES",
    "OrtCudaProfiler",
    "OrtTensorrtProfiler",
    "TensorrtProfiler",
    "TorchCudaProfiler",
    "gpu_fingerprint",
    "gpu_info",
]
