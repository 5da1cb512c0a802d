"""What the target can do, read from its fingerprint: which INT8 settings are safe and fast there.

onnxruntime's x86 INT8 kernels without VNNI multiply uint8 activations by int8 weights with ``vpmaddubsw``, which
adds pairs of products into *16-bit* lanes with saturation: two products of 255 x 127 overflow them. Weights
quantized to the full 8-bit range (per-channel makes that the rule, not the exception) then give a visibly
wrong model; 7-bit weights (``reduce_range``) cannot overflow. CPUs with VNNI (AVX512-VNNI, AVX-VNNI, AMX)
accumulate in 32 bits, and Arm's dot-product kernels have no such step, so full range is right there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RangeDecision", "choose_reduce_range", "device_fingerprint", "has_vnni"]

_VNNI = ("avx512_vnni", "avx512vnni", "avx_vnni", "avx_vnni_int8", "amx_int8")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_GPU_BACKENDS = ("ort-cuda", "ort-tensorrt", "tensorrt", "torch-cuda")


def has_vnni(flags: Iterable[str]) -> bool:
    """Whether CPU feature ``flags`` (as in /proc/cpuinfo) include an INT8 dot-product instruction set of x86."""
    names = {f.lower() for f in flags}
    return any(v in names for v in _VNNI)


@dataclass(frozen=True)
class RangeDecision:
    """The ``reduce_range`` chosen for a target, and why (for the report)."""

    reduce_range: bool
    reason: str
    cpu: str = ""
    flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"reduce_range": self.reduce_range, "reason": self.reason, "cpu": self.cpu, "flags": list(self.flags)}


def choose_reduce_range(fingerprint: Mapping[str, Any], *, backend: str = "ort-cpu") -> RangeDecision:
    """Decide ``reduce_range`` from a device fingerprint (:func:`nasforge.export.environment_fingerprint`, or
    the ``fingerprint`` a profiling agent reports).

    On when the target runs onnxruntime on an x86 CPU without VNNI; off on VNNI CPUs, on Arm and on GPU backends.
    """
    cpu = dict(fingerprint.get("cpu") or {})
    flags = tuple(sorted(str(f) for f in cpu.get("flags") or ()))
    model = str(cpu.get("model") or "unknown CPU")
    machine = str(fingerprint.get("machine") or "").lower()
    if backend in _GPU_BACKENDS:
        return RangeDecision(False, f"backend {backend} runs INT8 on the GPU: full 8-bit weights", model, flags)
    x86 = machine in _X86 or any(f.startswith(("avx", "sse")) for f in flags)
    if not x86:
        return RangeDecision(False, f"{model} ({machine or 'non-x86'}) has no 16-bit saturating INT8 step",
                             model, flags)
    if has_vnni(flags):
        found = sorted(set(flags) & set(_VNNI))
        return RangeDecision(False, f"{model} has VNNI ({', '.join(found)}): 32-bit accumulation, full 8-bit "
                             "weights are safe", model, flags)
    return RangeDecision(True, f"{model} lacks VNNI: u8s8 kernels add pairs in 16 bits and 8-bit weights can "
                         "saturate, so weights use 7 bits (reduce_range)", model, flags)


def device_fingerprint(device: Any) -> dict[str, Any]:
    """The fingerprint of a :class:`nasforge.devices.Device`: this machine's, or the board's agent's (``remote``).

    Raises:
        ConfigError: a remote agent cannot be reached (the message says which).
    """
    if device.backend == "remote":
        from nasforge.export import agent_info

        options = device.options
        info = agent_info(options["url"], options.get("token"), token_file=options.get("token_file"))
        return dict(info["fingerprint"])
    from nasforge.export import environment_fingerprint

    return environment_fingerprint(device.threads)
