"""Named measurement targets (``devices.yaml``), so every command can take ``--device NAME``.

A device is a profiler backend plus its settings, or an edge-board agent::

    devices:
      laptop:   {backend: ort-cpu, threads: 4}
      gpu:      {backend: ort-cuda}
      pi5:      {backend: remote, url: "http://127.0.0.1:8765", token_file: ~/.nasforge/pi5.token, threads: 4}

The file is ``--devices FILE``, else ``$NASFORGE_DEVICES``, else ``./devices.yaml`` if present. Two devices always
exist unless the file redefines them: ``cpu`` (``ort-cpu``, 1 thread) and ``torch-cpu``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError

__all__ = ["BUILTIN_DEVICES", "Device", "get_device", "load_devices"]

#: device settings that are timing options (passed to ``Profiler.measure``), not backend options
MEASURE_KEYS = ("threads", "batch", "runs", "warmup")
_ALLOWED = {"backend", "description", *MEASURE_KEYS, "url", "token_file", "timeout", "remote_backend", "options"}
BUILTIN_DEVICES: dict[str, dict[str, Any]] = {
    "cpu": {"backend": "ort-cpu", "threads": 1, "description": "this machine's CPU, onnxruntime, 1 thread"},
    "torch-cpu": {"backend": "torch-cpu", "threads": 1, "description": "this machine's CPU, eager PyTorch"},
}


@dataclass(frozen=True)
class Device:
    """One measurement target: a registered profiler backend and its settings."""

    name: str
    backend: str
    threads: int = 1
    batch: int = 1
    runs: int = 200
    warmup: int = 20
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    remote_backend: str = "ort-cpu"

    def profiler(self) -> Any:
        """The configured :class:`~nasforge.export.Profiler` of this device."""
        from nasforge.export import get_profiler

        return get_profiler(self.backend, **self.options)

    def measure_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Profiler.measure`` (``backend`` too for a remote device: what the agent runs)."""
        extra = {"backend": self.remote_backend} if self.backend == "remote" else {}
        return {"threads": self.threads, "runs": self.runs, "warmup": self.warmup, **extra}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "threads": self.threads, "batch": self.batch,
                "runs": self.runs, "warmup": self.warmup, "description": self.description,
                # never write a token itself; a token file's path is fine
                "options": {k: v for k, v in self.options.items() if k != "token"},
                **({"remote_backend": self.remote_backend} if self.backend == "remote" else {})}


def _device(name: str, spec: Any, where: str) -> Device:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: device {name!r} must be a mapping with a 'backend', got {spec!r}")
    unknown = sorted(set(spec) - _ALLOWED)
    if unknown:
        raise ConfigError(f"{where}: device {name!r} has unknown key(s) {unknown}; allowed: {sorted(_ALLOWED)}")
    backend = spec.get("backend")
    if not isinstance(backend, str) or not backend:
        raise ConfigError(f"{where}: device {name!r} needs 'backend' (e.g. ort-cpu, ort-cuda, tensorrt, remote)")
    numbers: dict[str, int] = {}
    for key, low in (("threads", 1), ("batch", 1), ("runs", 1), ("warmup", 0)):
        if key in spec:
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{where}: device {name!r} has {key}={value!r}; use an integer >= {low}")
            numbers[key] = value
    options = dict(spec.get("options") or {})
    if backend == "remote":
        if not isinstance(spec.get("url"), str):
            raise ConfigError(f"{where}: remote device {name!r} needs 'url' (http://HOST:PORT of `nasforge agent "
                              "serve`) and 'token_file'")
        options["url"] = spec["url"]
        if "token_file" in spec:
            options["token_file"] = str(Path(str(spec["token_file"])).expanduser())
        if "timeout" in spec:
            options["timeout"] = float(spec["timeout"])
    return Device(name=name, backend=backend, description=str(spec.get("description", "")), options=options,
                  remote_backend=str(spec.get("remote_backend", "ort-cpu")), **numbers)


def _devices_file(path: str | os.PathLike[str] | None) -> Path | None:
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"no devices file at {file}")
        return file
    env = os.environ.get("NASFORGE_DEVICES")
    if env:
        file = Path(env).expanduser()
        if not file.is_file():
            raise ConfigError(f"NASFORGE_DEVICES names {file}, which does not exist")
        return file
    local = Path("devices.yaml")
    return local if local.is_file() else None


def load_devices(path: str | os.PathLike[str] | None = None) -> dict[str, Device]:
    """The built-in devices, overridden and extended by the devices file (see the module docstring).

    Raises:
        ConfigError: a missing or malformed file, or a malformed device.
    """
    import yaml

    specs: dict[str, Any] = dict(BUILTIN_DEVICES)
    file = _devices_file(path)
    where = "built-in devices"
    if file is not None:
        where = str(file)
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{file} is not a readable devices file: {first}") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("devices", {}), Mapping):
            raise ConfigError(f"{file} must hold a mapping 'devices: {{NAME: {{backend: ...}}}}'")
        specs.update(data.get("devices") or {})
    return {str(name): _device(str(name), spec, where) for name, spec in specs.items()}


def get_device(name: str, path: str | os.PathLike[str] | None = None) -> Device:
    """The device called ``name`` (see :func:`load_devices`).

    Raises:
        ConfigError: no such device (the message lists the known ones).
    """
    devices = load_devices(path)
    if name not in devices:
        raise ConfigError(f"unknown device {name!r}; known devices: {sorted(devices)} (define more in devices.yaml)")
    return devices[name]
