"""The NNI backend (``nasforge[nni]``): NNI 3.0 strategies on a tiny space, trials in a plain Optuna study.

Each search starts one NNI process (a few seconds of imports), so the module runs a handful of small searches.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("nni", reason="NNI is not installed: pip install 'nasforge[nni]'")
pytest.importorskip("pytorch_lightning", reason="nni.nas needs pytorch-lightning: pip install 'nasforge[nni]'")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from nasforge.errors import ConfigError  # noqa: E402
from nasforge.nas import NniSearcher, get_searcher, run_search  # noqa: E402
from nasforge.nas._nni import REWARD_ATTR, REWARD_SCALE_ATTR, _by_value_modules  # noqa: E402
from nasforge.nas._search import _make_searcher  # noqa: E402
from nasforge.nas._storage import resolve_storage  # noqa: E402
from nasforge.supernets.arch import Architecture, DepthGate, Dimension, SearchSpace  # noqa: E402

TINY = SearchSpace("tiny", (Dimension("w", (1, 2, 3, 4), 2), Dimension("r", (8, 16, 24))))  # 48 architectures
# 18 samples but 12 networks: with depth 1 the second kernel size is inactive (canonically 7)
GATED = SearchSpace("gated", (Dimension("k", (3, 5, 7), 2), Dimension("d", (1, 2), 1)), (DepthGate("d", ("k",), 2),))
REAL_NNI = Path.home() / "nni-experiments"  # read before any test changes HOME
NNI_CONFIG = Path(sys.prefix, "nni") if sys.prefix != sys.base_prefix else Path.home() / ".config" / "nni"


def tiny_metrics(arch: Architecture) -> dict[str, float]:
    if "k" in arch:  # GATED: the active kernel sizes only
        w, r = sum(arch["k"][: arch["d"][0]]), 8
    else:
        w, r = sum(arch["w"]), arch["r"]
    return {"accuracy": 1.0 - 1.0 / (1.0 + w * r / 20), "macs": float(w * w * r)}


class FileEvaluator:
    """Picklable evaluator for the NNI process: appends each evaluated architecture to ``log`` (the calls are
    counted there), raises for ``r == fail_r``, kills its process on call ``die_at`` and takes ``sleep`` s."""

    def __init__(self, log: Path, fail_r: int | None = None, die_at: int | None = None, sleep: float = 0.0) -> None:
        self.log, self.fail_r, self.die_at, self.sleep = str(log), fail_r, die_at, sleep

    def __call__(self, arch: Architecture) -> dict[str, float]:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(arch.to_json() + "\n")
        time.sleep(self.sleep)
        if self.die_at is not None and calls(Path(self.log)) >= self.die_at:
            os._exit(3)
        if self.fail_r is not None and arch["r"] == self.fail_r:
            raise ValueError(f"resolution {arch['r']} is not supported")
        return tiny_metrics(arch)


def calls(log: Path) -> int:
    return len(log.read_text(encoding="utf-8").splitlines()) if log.exists() else 0


def load(storage: Path, name: str = "nasforge") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=resolve_storage(storage))


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's HOME, which must stay free of NNI's files."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.mark.parametrize("sampler", ["nni-random", "nni-grid", "nni-evolution"])
def test_each_strategy_runs_the_wanted_trials(sampler: str, tmp_path: Path, fake_home: Path) -> None:
    existed, config_existed = REAL_NNI.exists(), NNI_CONFIG.exists()
    storage, log, seen = tmp_path / "run" / "study.journal", tmp_path / "calls.log", []
    result = run_search(TINY, FileEvaluator(log), n_trials=10, sampler=sampler, storage=storage,
                        constraints=["macs<=1e6"], progress=lambda done, total, rec: seen.append((done, total, rec)))

    assert [t.number for t in result.trials] == list(range(10))
    assert all(t.state == "complete" and t.feasible for t in result.trials)
    assert result.front and {t.number for t in result.front} <= set(range(10))
    assert len({t.arch for t in result.trials}) == 10  # NNI dedups its samples; no gates, so no duplicates
    assert calls(log) == 10
    assert [(d, n, r.number) for d, n, r in seen] == [(i + 1, 10, i) for i in range(10)]
    assert [r for _, _, r in seen] == result.trials

    study = load(storage)  # a plain Optuna study, readable without nasforge's help
    trials = study.get_trials()
    assert len(trials) == 10 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(set(t.params) == {"w_0", "w_1", "r"} for t in trials)
    assert all(t.constraints == {"macs<=1000000": pytest.approx(tiny_metrics(Architecture.from_json(
        t.user_attrs["arch"]))["macs"] / 1e6 - 1)} for t in trials)
    assert study.user_attrs[REWARD_SCALE_ATTR] == pytest.approx([abs(v) for v in trials[0].values])

    # NNI's home is the journal's folder; neither this process's HOME nor the real one gets nni-experiments
    assert (tmp_path / "run" / "nni-experiments").is_dir()
    assert not (fake_home / "nni-experiments").exists()
    assert REAL_NNI.exists() == existed and NNI_CONFIG.exists() == config_existed
    assert (tmp_path / "run" / ".config" / "nni").is_dir()  # NNI's config folder moved there too
    assert not list((tmp_path / "run").glob("nasforge-nni-job-*"))  # the job file is removed


def test_resume_adds_only_missing_trials_and_keeps_the_reward_scale(tmp_path: Path, fake_home: Path) -> None:
    storage, log = tmp_path / "study.log", tmp_path / "calls.log"
    searcher = NniSearcher(strategy="evolution", population_size=4)

    def search(n: int):
        return run_search(GATED, FileEvaluator(log), n_trials=n, sampler=searcher, storage=storage,
                          initial=(GATED.largest(), GATED.smallest()))

    first = search(5)
    assert [t.number for t in first.trials] == list(range(5))
    assert [t.arch for t in first.trials[:2]] == [GATED.largest(), GATED.smallest()]  # initial ones first
    scale = load(storage).user_attrs[REWARD_SCALE_ATTR]
    largest = tiny_metrics(GATED.largest())
    assert scale == pytest.approx([largest["accuracy"], largest["macs"]])  # the first evaluated architecture

    second = search(9)
    assert [t.number for t in second.trials] == list(range(9))
    assert second.trials[:5] == first.trials
    assert load(storage).user_attrs[REWARD_SCALE_ATTR] == scale
    # a sample whose network was evaluated before reuses its metrics instead of evaluating again
    duplicates = [t for t in second.trials if t.duplicate_of is not None]
    assert calls(log) == 9 - len(duplicates)
    for t in duplicates:
        assert second.trials[t.duplicate_of].arch == t.arch and second.trials[t.duplicate_of].metrics == t.metrics
    for t in load(storage).get_trials():  # every trial folds its objectives with the stored scales
        acc, macs = t.values
        assert t.user_attrs[REWARD_ATTR] == pytest.approx(acc / scale[0] - macs / scale[1])

    assert len(list((tmp_path / "nni-experiments").iterdir())) == 3  # two experiments and their manifest
    third = search(9)  # nothing missing: no NNI process
    assert third.trials == second.trials and calls(log) == 9 - len(duplicates)
    assert len(list((tmp_path / "nni-experiments").iterdir())) == 3


def test_failures_and_constraints_in_memory(tmp_path: Path, fake_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    bound = 200.0
    searcher = NniSearcher(strategy="random", weights={"macs": 0.5})
    result = run_search(TINY, FileEvaluator(tmp_path / "calls.log", fail_r=24), n_trials=12, sampler=searcher,
                        constraints=[f"macs<={bound}"], seed=3)

    assert result.storage == "memory" and len(result.trials) == 12  # failures of this run use up the budget
    failed = [t for t in result.trials if t.state == "fail"]
    assert failed and all(t.arch["r"] == 24 for t in failed)
    assert all("ValueError: resolution 24 is not supported" in (t.error or "") for t in failed)
    complete = [t for t in result.trials if t.state == "complete"]
    infeasible = [t for t in complete if t.metrics["macs"] > bound]
    assert complete and infeasible, "seed 3 should draw some architectures over the bound"
    assert all(not t.feasible for t in infeasible) and all(t.feasible for t in complete if t not in infeasible)
    assert result.front and all(t.feasible for t in result.front)
    assert not {t.number for t in infeasible} & {t.number for t in result.front}
    assert list(scratch.iterdir()) == []  # the temporary NNI home and study are gone
    assert not (fake_home / "nni-experiments").exists()


def test_a_dead_nni_process_keeps_its_finished_trials(tmp_path: Path, fake_home: Path) -> None:
    storage = tmp_path / "study.journal"
    with pytest.raises(RuntimeError, match=r"exited with code 3 after 2 trial\(s\)"):
        run_search(TINY, FileEvaluator(tmp_path / "calls.log", die_at=3), n_trials=6, sampler="nni-random",
                   storage=storage)
    trials = load(storage).get_trials()
    assert [t.number for t in trials] == [0, 1] and all(t.state == TrialState.COMPLETE for t in trials)


def test_timeout_stops_starting_trials(tmp_path: Path, fake_home: Path) -> None:
    log = tmp_path / "calls.log"
    result = run_search(TINY, FileEvaluator(log, sleep=0.4), n_trials=10, storage=tmp_path / "study.journal",
                        sampler=NniSearcher(strategy="random", timeout=1.0))
    assert 2 <= len(result.trials) == calls(log) <= 4  # 0.4 s each: the budget of 1 s is spent after the 3rd
    assert all(t.state == "complete" for t in result.trials)


def test_options_are_checked(tmp_path: Path) -> None:
    assert _make_searcher("nni-grid").strategy == "grid"
    assert _make_searcher("nni").strategy == "evolution" == get_searcher("nni").strategy
    for options, needle in (({"strategy": "bayes"}, "unknown NNI strategy"), ({"population_size": 1}, "population"),
                            ({"population_size": 4, "sample_size": 5}, "sample_size"),
                            ({"weights": {"macs": -1}}, "weight"), ({"weights": [1.0]}, "weights"),
                            ({"timeout": 0}, "timeout")):
        with pytest.raises(ConfigError, match=needle):
            NniSearcher(**options)
    for searcher, n, needle in ((NniSearcher(population_size=8), 5, "population_size=8 is larger than n_trials=5"),
                                (NniSearcher(weights={"latency_ms": 1}), 5, "not objectives"),
                                (NniSearcher(weights={"accuracy": 0, "macs": 0}), 5, "all 0")):
        with pytest.raises(ConfigError, match=needle):
            run_search(TINY, tiny_metrics, n_trials=n, sampler=searcher, storage=tmp_path / "s.journal")
    assert not (tmp_path / "nni-experiments").exists()  # refused before any NNI process started


def test_evaluators_that_cannot_travel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a module made at run time cannot be imported by the NNI process: it is pickled by value
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("made_at_run_time", loader=None))
    exec("def evaluate(arch):\n    return {'accuracy': 1.0, 'macs': 1.0}\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "made_at_run_time", module)
    assert _by_value_modules(module.evaluate) == [module]
    assert _by_value_modules(FileEvaluator(tmp_path / "log")) == []  # this module is found (by sys.path)
    assert _by_value_modules(tiny_metrics) == [] and _by_value_modules(len) == []

    lock = threading.Lock()
    with pytest.raises(ConfigError, match="the evaluator cannot be sent to the NNI process"):
        run_search(TINY, lambda arch: lock and tiny_metrics(arch), n_trials=2, sampler="nni-random",
                   storage=tmp_path / "study.journal")
    assert not list(tmp_path.glob("nasforge-nni-job-*")) and not (tmp_path / "nni-experiments").exists()
