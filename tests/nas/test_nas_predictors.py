"""Accuracy/latency predictors and evolution on predicted scores, on the mbv3-small space with synthetic targets."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from nasforge.errors import ConfigError
from nasforge.nas import (
    AccuracyPredictor,
    LatencyPredictor,
    MacsLatencyPredictor,
    PredictorReport,
    _predictors,
    evolve_on_predictors,
    get_latency_predictor,
    list_latency_predictors,
    register_latency_predictor,
)
from nasforge.supernets import create_supernet
from nasforge.supernets.arch import Architecture

N_SAMPLES = 300


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def net():
    return create_supernet("mbv3-small")


@pytest.fixture(scope="module")
def space(net):
    return net.space


@pytest.fixture(scope="module")
def truth(space):
    """A smooth ground truth of the encoding: sigmoid of a fixed random linear function, mapped to [0.5, 0.8]."""
    w = np.random.default_rng(1).normal(size=space.encoding_size)
    rng = random.Random(99)
    ref = np.stack([space.encode(space.sample(rng)) for _ in range(500)]) @ w
    mu, sd = float(ref.mean()), float(ref.std())

    def accuracy(archs: list[Architecture]) -> np.ndarray:
        z = (np.stack([space.encode(a) for a in archs]) @ w - mu) / sd
        return 0.5 + 0.3 / (1.0 + np.exp(-z))

    return accuracy


@pytest.fixture(scope="module")
def dataset(space, truth):
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(N_SAMPLES)]
    acc = truth(archs) + np.random.default_rng(2).normal(0.0, 0.005, size=N_SAMPLES)
    return archs, acc


@pytest.fixture(scope="module")
def fitted(space, dataset):
    archs, acc = dataset
    pred = AccuracyPredictor(space, seed=0)
    report = pred.fit(archs, acc, holdout=0.2)
    return pred, report


# -- accuracy predictor -------------------------------------------------------------------------------------
def test_accuracy_predictor_ranks_held_out_architectures(fitted, dataset):
    pred, report = fitted
    _, acc = dataset
    assert isinstance(report, PredictorReport)
    assert (report.n_train, report.n_holdout) == (240, 60)
    assert report.kendall_tau > 0.6, report
    assert report.spearman > 0.75, report
    assert report.rmse < float(np.std(acc)), report
    assert 0 < report.mae <= report.rmse
    assert 0 < report.mape < 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.rmse = 0.0  # type: ignore[misc]
    assert pred.hidden == (400, 400, 400)


def test_held_out_targets_do_not_affect_training(space, dataset):
    archs, acc = dataset
    _, held = _predictors._split(len(acc), 0.2, seed=3)
    changed = acc.copy()
    changed[held] = 0.0  # only the held-out targets differ
    a, b = AccuracyPredictor(space, seed=3), AccuracyPredictor(space, seed=3)
    ra, rb = a.fit(archs, acc), b.fit(archs, changed)
    probe = archs[:20]
    np.testing.assert_array_equal(a.predict(probe), b.predict(probe))
    assert ra.n_train == rb.n_train and rb.rmse > ra.rmse  # the report is computed on the held-out targets


def test_accuracy_predictor_is_deterministic_per_seed(space, dataset, fitted):
    archs, acc = dataset
    pred, report = fitted
    again = AccuracyPredictor(space, seed=0)
    assert again.fit(archs, acc) == report
    probe = archs[:50]
    out = pred.predict(probe)
    assert out.dtype == np.float64 and out.shape == (50,)
    np.testing.assert_array_equal(again.predict(probe), out)
    other = AccuracyPredictor(space, seed=1, epochs=5)
    other.fit(archs, acc)
    assert not np.array_equal(other.predict(probe), out)
    assert pred.predict([]).shape == (0,)


def test_holdout_zero_trains_on_everything_and_reports_nan(space, dataset):
    archs, acc = dataset
    pred = AccuracyPredictor(space, hidden=(32,), epochs=3, seed=0)
    report = pred.fit(archs[:40], acc[:40], holdout=0)
    assert (report.n_train, report.n_holdout) == (40, 0)
    assert all(math.isnan(v) for v in (report.rmse, report.mae, report.mape, report.kendall_tau, report.spearman))
    assert pred.predict(archs[:3]).shape == (3,)


def test_save_load_round_trip(space, dataset, fitted, tmp_path):
    archs, _ = dataset
    pred, _ = fitted
    path = pred.save(tmp_path / "sub" / "acc.pt")
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    assert state["config"]["hidden"] == [400, 400, 400]
    loaded = AccuracyPredictor.load(path, space)
    np.testing.assert_array_equal(loaded.predict(archs), pred.predict(archs))
    fresh = AccuracyPredictor(space)
    fresh.load_state_dict(pred.state_dict())
    np.testing.assert_array_equal(fresh.predict(archs[:10]), pred.predict(archs[:10]))


def test_load_rejects_other_space_and_bad_files(fitted, toy_space, tmp_path):
    pred, _ = fitted
    path = pred.save(tmp_path / "acc.pt")
    with pytest.raises(ConfigError, match="space"):
        AccuracyPredictor.load(path, toy_space)
    with pytest.raises(ConfigError, match="does not exist"):
        AccuracyPredictor.load(tmp_path / "missing.pt", toy_space)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt"):
        AccuracyPredictor.load(junk, pred.space)
    with pytest.raises(ConfigError, match="hidden"):
        AccuracyPredictor(pred.space, hidden=(8,)).load_state_dict(pred.state_dict())


def test_accuracy_predictor_bad_inputs(space, dataset, toy_space):
    archs, acc = dataset
    pred = AccuracyPredictor(space, hidden=(16,), epochs=1)
    with pytest.raises(ConfigError, match="before fit"):
        pred.predict(archs[:2])
    with pytest.raises(ConfigError, match="not been fitted"):
        pred.state_dict()
    with pytest.raises(ConfigError, match="at least 4"):
        pred.fit(archs[:3], acc[:3])
    with pytest.raises(ConfigError, match="3 accuracies"):
        pred.fit(archs[:10], acc[:3])
    with pytest.raises(ConfigError, match="not in space"):
        pred.fit([toy_space.sample(0)] + archs[:9], acc[:10])
    bad = archs[0].replace(r=9)
    with pytest.raises(ConfigError, match="#4"):
        pred.fit(archs[:4] + [bad], acc[:5])
    with pytest.raises(ConfigError, match="NaN"):
        pred.fit(archs[:10], np.r_[acc[:9], np.nan])
    with pytest.raises(ConfigError, match="holdout"):
        pred.fit(archs[:10], acc[:10], holdout=1.0)
    with pytest.raises(ConfigError, match="single"):
        pred.fit(archs[0], acc[:1])  # type: ignore[arg-type]
    for kwargs in ({"hidden": (0,)}, {"epochs": 0}, {"lr": 0.0}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            AccuracyPredictor(space, **kwargs)


# -- latency predictors -------------------------------------------------------------------------------------
def test_macs_latency_predictor_recovers_line(net, space):
    rng = random.Random(5)
    archs = [space.sample(rng) for _ in range(200)]
    macs = np.array([net.macs(a) for a in archs], dtype=np.float64)
    lat = 1e-6 * macs + 0.3 + np.random.default_rng(6).normal(0.0, 0.01, size=len(macs))
    pred = get_latency_predictor("macs", cost_fn=net.macs)
    assert isinstance(pred, MacsLatencyPredictor) and isinstance(pred, LatencyPredictor)
    report = pred.fit(archs, lat)
    assert (report.n_train, report.n_holdout) == (160, 40)
    assert pred.slope == pytest.approx(1e-6, rel=0.05)
    assert pred.intercept == pytest.approx(0.3, rel=0.05)
    assert report.mape < 0.02 and report.rmse < 0.03 and report.kendall_tau > 0.9
    np.testing.assert_allclose(pred.predict(archs[:5]), pred.slope * macs[:5] + pred.intercept)


def test_macs_latency_predictor_errors(net, space):
    archs = [space.sample(i) for i in range(6)]
    pred = MacsLatencyPredictor(net.macs)
    with pytest.raises(ConfigError, match="before fit"):
        pred.predict(archs)
    with pytest.raises(ConfigError, match="at least 4"):
        pred.fit(archs[:2], [1.0, 2.0])
    with pytest.raises(ConfigError, match="same MACs"):
        pred.fit([space.smallest()] * 6, [1.0] * 6)
    with pytest.raises(ConfigError, match="callable"):
        MacsLatencyPredictor(3)  # type: ignore[arg-type]


def test_latency_registry(monkeypatch):
    assert "macs" in list_latency_predictors()
    with pytest.raises(ConfigError, match="macs"):
        get_latency_predictor("no-such-device")
    monkeypatch.setattr(_predictors, "_LATENCY", _predictors._LATENCY.copy())

    @register_latency_predictor("constant")
    class Constant(LatencyPredictor):
        def fit(self, archs, latencies_ms, *, holdout=0.2):
            return PredictorReport(len(archs), 0, *(math.nan,) * 5)

        def predict(self, archs):
            return np.ones(len(archs))

    assert Constant.name == "constant" and "constant" in list_latency_predictors()
    assert get_latency_predictor("constant").predict([1, 2]).tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError, match="already registered"):
        register_latency_predictor("macs")(Constant)
    with pytest.raises(ConfigError, match="LatencyPredictor subclass"):
        register_latency_predictor("bad")(int)  # type: ignore[arg-type]


# -- evolution ----------------------------------------------------------------------------------------------
SMALL = {"population": 40, "generations": 8, "parents": 10, "mutants": 20, "crossovers": 20}


@pytest.fixture(scope="module")
def two_objectives(net, truth):
    def score(archs: list[Architecture]) -> np.ndarray:
        return np.column_stack([-np.array([net.macs(a) for a in archs], dtype=np.float64), truth(archs)])

    return score


def _assert_non_dominated(scores: np.ndarray) -> None:
    for i, row in enumerate(scores):
        others = np.delete(scores, i, axis=0)
        dominated = np.all(others >= row, axis=1) & np.any(others > row, axis=1)
        assert not dominated.any(), f"returned architecture {i} is dominated"


def test_evolve_two_objectives_returns_a_constrained_front(net, space, two_objectives):
    budget = float(np.median([net.macs(space.sample(i)) for i in range(200)]))
    kwargs = dict(SMALL, constraint=lambda a: net.macs(a) <= budget, seed=0)
    front = evolve_on_predictors(space, two_objectives, **kwargs)
    assert len(front) >= 3
    assert len(set(front)) == len(front) and all(space.canonical(a) == a for a in front)
    assert all(net.macs(a) <= budget for a in front)
    scores = two_objectives(front)
    _assert_non_dominated(scores)
    assert np.all(np.diff(scores[:, 0]) <= 0)  # sorted by the first objective, best first
    assert evolve_on_predictors(space, two_objectives, **kwargs) == front  # deterministic per seed
    assert evolve_on_predictors(space, two_objectives, **dict(kwargs, seed=1)) != front


def test_evolve_single_objective_on_a_fitted_predictor(space, fitted, truth):
    pred, _ = fitted
    best = evolve_on_predictors(space, pred, **SMALL, seed=0)
    assert len(best) == SMALL["parents"] and len(set(best)) == len(best)
    predicted = pred.predict(best)
    assert np.all(np.diff(predicted) <= 0)
    rng = random.Random(7)
    random_pick = [space.sample(rng) for _ in range(SMALL["population"])]
    assert predicted[0] >= pred.predict(random_pick).max()
    assert truth(best).mean() > truth(random_pick).mean()  # the predicted optimum is truly good


def test_evolve_impossible_constraint_gives_up_after_a_bounded_number_of_draws(net, space, two_objectives):
    calls = {"macs": 0, "never": 0}

    def tiny_macs(arch) -> bool:
        calls["macs"] += 1
        return net.macs(arch) < 1.0

    def never(arch) -> bool:
        calls["never"] += 1
        return False

    with pytest.raises(ConfigError, match="too strict"):
        evolve_on_predictors(space, two_objectives, constraint=tiny_macs, seed=0)
    with pytest.raises(ConfigError, match="too strict"):
        evolve_on_predictors(space, two_objectives, constraint=never, population=100, max_tries=20)
    assert calls == {"macs": 100 * 50, "never": 100 * 20}  # population * max_tries draws, then it gives up


def test_evolve_bad_arguments(space, two_objectives):
    with pytest.raises(ConfigError, match="parents"):
        evolve_on_predictors(space, two_objectives, population=5, parents=6)
    with pytest.raises(ConfigError, match="mutate_prob"):
        evolve_on_predictors(space, two_objectives, mutate_prob=1.5)
    with pytest.raises(ConfigError, match="generations"):
        evolve_on_predictors(space, two_objectives, generations=-1)
    with pytest.raises(ConfigError, match="shape"):
        evolve_on_predictors(space, lambda archs: np.zeros((len(archs) + 1, 2)), population=4, parents=2)
