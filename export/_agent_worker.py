"""Child process of the profiling agent: measure one ONNX file, print the result as one JSON line.

``python -m nasforge.export._agent_worker MODEL SETTINGS_JSON`` where ``SETTINGS_JSON`` holds ``backend`` and
the keyword arguments of :meth:`Profiler.measure`. On failure the last stderr line says why and the exit code
is 2 (a :class:`NasforgeError`: the model or the settings) or 1 (anything else). PyTorch is never imported.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

__all__ = ["main"]

_SETTINGS = ("batch", "runs", "warmup", "threads", "max_cv", "max_remeasure", "input_shape")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure ``argv = [MODEL, SETTINGS_JSON]``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m nasforge.export._agent_worker MODEL SETTINGS_JSON", file=sys.stderr)
        return 2
    from nasforge.errors import NasforgeError

    from . import _profilers  # noqa: F401  (registers the built-in backends)
    from ._latency import get_profiler
    from ._onnx_io import first_line

    model, raw = args
    try:
        settings = json.loads(raw)
        if not isinstance(settings, dict) or not isinstance(settings.get("backend"), str):
            raise ValueError("SETTINGS_JSON must be an object with a 'backend'")
        kwargs = {key: settings[key] for key in _SETTINGS if key in settings}
        if kwargs.get("input_shape") is not None:
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
        result = get_profiler(settings["backend"]).measure(model, **kwargs)
    except NasforgeError as err:
        print(first_line(err), file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001  (reported to the agent as one line)
        print(f"{type(err).__name__}: {first_line(err)}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
