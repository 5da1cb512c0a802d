"""The ``"table"`` latency predictor: a per-device :class:`~nasforge.export.LatencyTable` behind nas's
:class:`~nasforge.nas.LatencyPredictor` interface, so searchers use measured per-segment latencies.

This module imports :mod:`nasforge.nas` (and so PyTorch); ``nasforge.export`` announces it to nas's registry
instead of importing it, and ``get_latency_predictor("table", ...)`` imports it on first use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from nasforge.errors import ConfigError
from nasforge.nas import LatencyPredictor, PredictorReport, register_latency_predictor
from nasforge.supernets import Architecture

from ._latency_table import LatencyTable, error_stats

if TYPE_CHECKING:
    from nasforge.supernets import Supernet

__all__ = ["TableLatencyPredictor"]


@register_latency_predictor("table")
class TableLatencyPredictor(LatencyPredictor):
    """Latency from a table built by ``nasforge latency build-table`` (sum of segments + linear correction).

    Args:
        table: a :class:`~nasforge.export.LatencyTable` or the path of its JSON file.
        net: the supernet the table was built for (its segments name the table's entries).
        seed: seeds the held-out split of :meth:`fit`.
        accept_error: use a table that records no held-out error, or one above the limits
            (:meth:`~nasforge.export.LatencyTable.trust_problems`); otherwise such a table is refused.

    Raises:
        ConfigError: an unreadable table, one built for another supernet, or one that cannot be trusted to rank.
    """

    def __init__(self, table: LatencyTable | str | os.PathLike[str], net: Supernet, *, seed: int = 0,
                 accept_error: bool = False) -> None:
        self.table = table if isinstance(table, LatencyTable) else LatencyTable.load(table)
        self.table.check_fits(net)
        self.table.require_trust(accept=accept_error)
        self.net = net
        self.seed = int(seed)

    def fit(self, archs: Sequence[Architecture], latencies_ms: Sequence[float], *, holdout: float = 0.2
            ) -> PredictorReport:
        """Refit the table's correction on end-to-end measurements (the segment entries stay as measured)."""
        archs = list(archs)
        y, train, held = self.split_measurements(archs, latencies_ms, holdout, self.seed)
        if len(train) < 3:
            raise ConfigError("refitting a latency table's correction needs 3 or more training subnets")
        self.table.fit_correction(self.net, [archs[i] for i in train], y[train].tolist())
        report = self.holdout_report(len(train), self.predict([archs[i] for i in held]), y[held])
        if len(held) >= 3:  # the refitted table's held-out error replaces the recorded one
            self.table.holdout = error_stats(self.predict([archs[i] for i in held]), y[held])
        return report

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        if isinstance(archs, (Architecture, str)):
            raise ConfigError("pass a list of architectures, not a single one")
        return self.table.predict_many(self.net, archs)
