"""Contract of the latency predictor family: every registered predictor builds from what it needs, predicts one
float64 latency per architecture, refits on measured latencies with a held-out report, and refuses too few
samples with a one-line error."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import nasforge.export  # noqa: F401  (announces the "table" predictor to nas's registry)
from nasforge.errors import ConfigError
from nasforge.nas import LatencyPredictor, PredictorReport, get_latency_predictor, list_latency_predictors
from nasforge.supernets import Supernet, create_supernet

TINY: dict[str, Any] = {
    "num_classes": 4, "in_channels": 1, "stem_width": 8, "first_block_width": 8,
    "stages": [[16, 2, "relu", False], [24, 2, "hswish", True]], "kernel_sizes": [3, 5], "expand_ratios": [2, 4],
    "depths": [1, 2], "resolutions": [12, 16], "final_expand_width": 32, "feature_width": 32,
}


@pytest.fixture(scope="module")
def net() -> Supernet:
    return create_supernet("mbv3-small", **TINY).eval()


def _synthetic_table(net: Supernet) -> Any:
    """A latency table of made-up but fixed segment latencies (no measuring), trusted as if validated."""
    from nasforge.export import LatencyTable, supernet_signature

    keys = {key for arch in net.covering_architectures() for key, _ in net.latency_segments(arch)}
    entries = {key: {"ms": 0.05 + (zlib.crc32(key.encode()) % 1000) / 1e4} for key in sorted(keys)}
    return LatencyTable(space=net.space.name, signature=supernet_signature(net), device={"name": "synthetic"},
                        entries=entries)


#: how the contract builds each registered predictor: what it needs from a supernet
FACTORIES: dict[str, Callable[[Supernet], LatencyPredictor]] = {
    "macs": lambda net: get_latency_predictor("macs", cost_fn=net.macs, seed=0),
    "table": lambda net: get_latency_predictor("table", table=_synthetic_table(net), net=net, accept_error=True),
}


def test_every_registered_predictor_has_a_factory() -> None:
    missing = sorted(set(list_latency_predictors()) - set(FACTORIES))
    assert not missing, f"add a factory for {missing} to FACTORIES (what the predictor needs to be built)"


@pytest.mark.parametrize("name", list_latency_predictors())
def test_predictor_fits_and_predicts(name: str, net: Supernet) -> None:
    if name not in FACTORIES:
        pytest.skip(f"no contract factory for latency predictor {name!r}")
    predictor = FACTORIES[name](net)
    assert isinstance(predictor, LatencyPredictor) and predictor.name == name
    archs = [net.space.sample(i) for i in range(12)]
    truth = np.array([2.0 + net.macs(a) / 1e5 for a in archs])

    report = predictor.fit(archs, truth.tolist(), holdout=0.25)

    assert isinstance(report, PredictorReport) and report.n_train + report.n_holdout == len(archs)
    assert report.n_holdout >= 2 and math.isfinite(report.rmse) and math.isfinite(report.mae)
    pred = predictor.predict(archs)
    assert pred.dtype == np.float64 and pred.shape == (len(archs),) and np.isfinite(pred).all()
    assert np.array_equal(predictor(archs), pred)
    assert predictor.predict([]).shape == (0,)


@pytest.mark.parametrize("name", list_latency_predictors())
def test_predictor_refuses_bad_input(name: str, net: Supernet) -> None:
    if name not in FACTORIES:
        pytest.skip(f"no contract factory for latency predictor {name!r}")
    predictor = FACTORIES[name](net)
    archs = [net.space.sample(i) for i in range(3)]
    with pytest.raises(ConfigError):
        predictor.fit(archs, [1.0, 2.0, 3.0])  # fewer than the 4 samples any fit needs
    with pytest.raises(ConfigError):
        predictor.predict(archs[0])  # type: ignore[arg-type]  # one architecture, not a list


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="macs"):
        get_latency_predictor("no-such-predictor")


def test_table_predictor_lives_at_the_export_layer() -> None:
    """nas does not import the export layer: "table" is registered by ``import nasforge.export``, and the old
    ``nasforge.nas.TableLatencyPredictor`` is a deprecated alias of its new home."""
    import subprocess
    import sys

    import nasforge.nas

    with pytest.warns(DeprecationWarning, match="nasforge.export.TableLatencyPredictor"):
        alias = nasforge.nas.TableLatencyPredictor
    assert alias is nasforge.export.TableLatencyPredictor and "table" in list_latency_predictors()
    code = ("from nasforge.nas import get_latency_predictor\n"
            "try:\n    get_latency_predictor('table')\nexcept Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("ConfigError unknown latency predictor 'table'; import nasforge.export") and out.count("\n") == 1
