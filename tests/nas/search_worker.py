"""Run by the tests as a separate process: a small search on a shared storage.

Arguments: storage (a journal path or a database URL), marker path, mode (``hang``: the 4th evaluation writes
the marker and blocks until the process is killed; ``ok``: no hang), and optionally the study name and seed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from nasforge.nas import run_search
from nasforge.supernets.arch import Dimension, SearchSpace

SPACE = SearchSpace("toy", (Dimension("w", (1, 2, 3, 4), 3), Dimension("r", (8, 16))))
N_TRIALS = 8


def main(storage: str, marker: str, mode: str, study: str = "nasforge", seed: str = "0") -> None:
    calls = 0

    def evaluate(arch):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if mode == "hang" and calls == 4:
            Path(marker).write_text("evaluating")
            time.sleep(120)  # killed here
        w = sum(arch["w"])
        return {"accuracy": w / 12 + arch["r"] / 100, "macs": float(w * arch["r"])}

    run_search(SPACE, evaluate, n_trials=N_TRIALS, sampler="random", storage=storage, study_name=study,
               seed=int(seed), heartbeat=0.2)


if __name__ == "__main__":
    main(*sys.argv[1:6])
