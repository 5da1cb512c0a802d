"""Run by the tests as a separate process: :func:`supervise_workers` over 2 toy search workers that crash on purpose.

Arguments: storage (a journal path), mode, trace folder. Modes: ``kill-once``: worker 0 SIGKILLs itself in its
1st evaluation, the others wait for that before they evaluate anything; ``die``: every worker SIGKILLs itself in its 2nd evaluation;
``raise``: every worker raises RuntimeError before it searches; ``user``: every worker raises a ConfigError;
``ok``: no crash. Prints the supervisor's report as JSON on stdout, or ``error: <class>: <text>`` if it raised.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

from nasforge.errors import ConfigError, NasforgeError
from nasforge.nas import run_search
from nasforge.nas._supervisor import supervise_workers
from nasforge.supernets.arch import Architecture, Dimension, SearchSpace

SPACE = SearchSpace("toy", (Dimension("w", (1, 2, 3, 4), 3), Dimension("r", (8, 16))))
N_TRIALS = 8


def target(storage: str, mode: str, trace: str, index: int) -> None:
    if mode == "raise":
        raise RuntimeError(f"worker {index} cannot start\nsecond line")
    if mode == "user":
        raise ConfigError("data spec 'nope' is unknown; pass a real one")
    calls = 0
    killed = Path(trace) / "killed"

    def evaluate(arch: Architecture) -> dict[str, float]:
        nonlocal calls
        calls += 1
        if (mode == "die" and calls == 2) or (mode == "kill-once" and index == 0):
            killed.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # mid-trial; the heartbeat thread sleeps (10 s interval)
        deadline = time.monotonic() + 60
        while mode == "kill-once" and not killed.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # so worker 0 surely gets a trial to die in
        w = sum(arch["w"])
        return {"accuracy": w / 12 + arch["r"] / 100, "macs": float(w * arch["r"])}

    run_search(SPACE, evaluate, n_trials=N_TRIALS, sampler="random", storage=storage, seed=index)


def main(storage: str, mode: str, trace: str) -> int:
    try:
        report = supervise_workers(partial(target, storage, mode, trace), 2, storage=storage, study_name="nasforge",
                                   n_trials=N_TRIALS, log=lambda m: print(m, file=sys.stderr), trace_dir=Path(trace))
    except NasforgeError as exc:
        print(f"error: {type(exc).__name__}: {exc}")
        return 2
    print(json.dumps(asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
