"""The NNI process of :class:`~nasforge.nas.NniSearcher`: ``python -m nasforge.nas._nni_runner JOB``.

The parent writes ``JOB`` (see :func:`nasforge.nas._nni._write_job`) and runs this module with ``HOME`` set to
the search's work folder, where NNI keeps ``nni-experiments``. The module evaluates the initial architectures
(if any), then runs the NNI 3.0 strategy on a :class:`NasExperiment` with the sequential execution engine and a
:class:`FunctionalEvaluator`. Each trial is written into the Optuna study as soon as it ends, and announced on
stdout by a :data:`~nasforge.nas._nni.PROGRESS_PREFIX` line. Exit code 2 with a ``nasforge: error:`` line means
a user error; any other non-zero code is a crash (the trials finished before it are in the study).

NNI itself is imported only in :func:`main` (this module imports without it).
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from nasforge.errors import ConfigError, NasforgeError
from nasforge.supernets.arch import Architecture, SearchSpace

from ._nni import (
    EXPERIMENT_ATTR,
    FAIL_REWARD,
    NNI_STRATEGIES,
    PENALTY,
    PROGRESS_PREFIX,
    REWARD_ATTR,
    REWARD_SCALE_ATTR,
    STRATEGY_ATTR,
)
from ._objectives import Constraint, Objective
from ._optuna import (
    _ATTR_ARCH,
    _ATTR_DUPLICATE,
    _ATTR_ERROR,
    _ATTR_METRICS,
    _as_metrics,
    _objective_values,
    _quiet_optuna,
    _TrialFailure,
    architecture_params,
    param_name,
    trial_record,
)
from ._storage import resolve_storage

__all__ = ["main"]

_log = logging.getLogger("nasforge.nas.nni")


def load_job(path: str | Path) -> dict[str, Any]:
    """Read a job file: extend ``sys.path`` with the parent's entries, then unpickle the payload."""
    with Path(path).open("rb") as f:
        outer = pickle.load(f)
    for entry in outer["sys_path"]:
        if entry not in sys.path:
            sys.path.append(entry)
    try:
        return pickle.loads(outer["payload"])
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"the NNI process cannot load the evaluator ({type(exc).__name__}: {exc}); define it in "
                          "an importable module or in the script that runs the search") from None


class _Recorder:
    """Evaluates (or reuses) one architecture, stores its trial in the study, and folds its reward."""

    def __init__(self, study: optuna.Study, job: Mapping[str, Any]) -> None:
        self.study = study
        self.space: SearchSpace = job["space"]
        self.evaluate = job["evaluate"]
        self.objectives: tuple[Objective, ...] = tuple(job["objectives"])
        self.constraints: tuple[Constraint, ...] = tuple(job["constraints"])
        self.weights: list[float] = list(job["weights"])
        self.signs = [1.0 if o.direction == "maximize" else -1.0 for o in self.objectives]
        self.scale: list[float] | None = job["reward_scale"]
        self.known: dict[str, tuple[int, dict[str, float]]] = dict(job["known"])
        self.strategy: str = job["strategy"]
        self.done_before: int = job["done_before"]
        self.experiment: str | None = None
        self.count = 0
        self.distributions = {
            param_name(d.name, None if d.is_scalar else i): CategoricalDistribution(list(d.choices))
            for d in self.space.dims
            for i in range(d.positions)
        }

    # -- one trial --------------------------------------------------------------------------------------------
    def run(self, arch: Architecture) -> float:
        """Run one trial of the canonical ``arch`` to its end (COMPLETE or FAIL); returns its reward."""
        key = arch.to_json()
        attrs: dict[str, Any] = {_ATTR_ARCH: key, STRATEGY_ATTR: self.strategy}
        if self.experiment is not None:
            attrs[EXPERIMENT_ATTR] = self.experiment
        params = architecture_params(self.space, arch)
        try:
            if key in self.known:
                number, metrics = self.known[key]
                attrs[_ATTR_DUPLICATE] = number
                metrics = dict(metrics)
            else:
                metrics = self._evaluate(arch)
            attrs[_ATTR_METRICS] = metrics
            values = _objective_values(metrics, self.objectives)
            violations = self._violations(metrics)
        except _TrialFailure as exc:
            attrs[_ATTR_ERROR] = str(exc)
            stored = self._add(create_trial(state=TrialState.FAIL, params=params, distributions=self.distributions,
                                            user_attrs=attrs), key)
            _log.warning("trial %d failed: %s", stored.number, exc)
            self._announce(stored)
            return FAIL_REWARD
        if self.scale is None:  # the first successful evaluation of the study fixes the scales
            self.scale = [abs(float(v)) or 1.0 for v in values]
            self.study.set_user_attr(REWARD_SCALE_ATTR, self.scale)
        reward = self.fold(values, violations.values())
        attrs[REWARD_ATTR] = reward
        stored = self._add(create_trial(values=values, params=params, distributions=self.distributions,
                                        user_attrs=attrs, constraints=violations or None), key)
        self.known.setdefault(key, (stored.number, metrics))
        self._announce(stored)
        return reward

    def fold(self, values: Sequence[float], violations: Any) -> float:
        """The reward: weighted, signed, scaled objectives minus the penalised positive violations."""
        assert self.scale is not None
        reward = sum(w * d * float(v) / s for w, d, v, s in zip(self.weights, self.signs, values, self.scale,
                                                                 strict=True))
        return float(reward - PENALTY * sum(max(0.0, float(v)) for v in violations))

    def _evaluate(self, arch: Architecture) -> dict[str, float]:
        try:
            # Any error of the user's evaluator fails this trial only; the search goes on.
            raw = self.evaluate(arch)
        except Exception as exc:
            raise _TrialFailure(f"evaluator raised {type(exc).__name__}: {exc}") from exc
        return _as_metrics(raw)

    def _violations(self, metrics: Mapping[str, float]) -> dict[str, float]:
        violations = {}
        for constraint in self.constraints:
            try:
                violations[str(constraint)] = float(constraint.violation(metrics))
            except ConfigError as exc:
                raise _TrialFailure(str(exc)) from None
        return violations

    def _add(self, trial: FrozenTrial, key: str) -> FrozenTrial:
        """Store ``trial`` and return it as stored (with its number). Assumes no other writer adds a trial of the
        same architecture at the same moment (the NNI backend is one sequential worker)."""
        self.study.add_trial(trial)
        self.count += 1
        mine = [t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get(_ATTR_ARCH) == key]
        return max(mine, key=lambda t: t.number)

    def _announce(self, trial: FrozenTrial) -> None:
        record = trial_record(trial, self.objectives, self.constraints)
        print(PROGRESS_PREFIX + json.dumps(record.to_dict()), flush=True)

    # -- NNI side -----------------------------------------------------------------------------------------------
    def architecture(self, sample: Mapping[str, Any]) -> Architecture:
        """The canonical architecture of an NNI sample (one label per position, as the Optuna parameters)."""
        genes: dict[str, int | list[int]] = {}
        for d in self.space.dims:
            if d.is_scalar:
                genes[d.name] = int(sample[param_name(d.name, None)])
            else:
                genes[d.name] = [int(sample[param_name(d.name, i)]) for i in range(d.positions)]
        return self.space.canonical(genes)

    def history(self) -> list[tuple[dict[str, int], float]]:
        """(parameters, reward) of the study's complete trials, oldest first: the strategy's warm start."""
        out = []
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for t in sorted(trials, key=lambda t: t.number):
            arch, metrics = t.user_attrs.get(_ATTR_ARCH), t.user_attrs.get(_ATTR_METRICS)
            if not isinstance(arch, str) or not isinstance(metrics, dict) or t.values is None or self.scale is None:
                continue
            try:
                params = architecture_params(self.space, Architecture.from_json(arch))
                violations = self._violations({str(k): float(v) for k, v in metrics.items()})
            except (NasforgeError, _TrialFailure):
                continue
            out.append((params, self.fold(t.values, violations.values())))
        return out


def _import_nni() -> Any:
    """Import NNI quietly: its torch-version RuntimeWarnings at import are noise, and its INFO console log too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import nni
        import nni.nas.experiment
        import nni.nas.strategy
        from nni.runtime.log import silence_stdout
    silence_stdout()  # NNI logs INFO and up to stdout; keep WARNING and up, on stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("nni %(levelname)s: %(message)s"))
    logging.getLogger("nni").addHandler(handler)
    return nni


def _run_strategy(recorder: _Recorder, job: Mapping[str, Any], budget: int, seconds: float | None) -> None:
    """Run the job's NNI strategy for at most ``budget`` trials / ``seconds`` of evaluation."""
    import nni
    from nni.mutable import Categorical, MutableDict
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperimentConfig

    arch_model_space, experiment_class = _nni_classes()

    def trial(sample: dict[str, Any]) -> None:
        nni.report_final_result(recorder.run(recorder.architecture(sample)))

    labels = {label: dist.choices for label, dist in recorder.distributions.items()}  # ks_0 ... ks_11, r
    mutables = MutableDict({label: Categorical(list(choices), label=label) for label, choices in labels.items()})
    evaluator = FunctionalEvaluator(trial)
    strategy = _strategy(recorder, job)
    config = NasExperimentConfig("sequential", "raw")
    config.experiment_name = f"nasforge {job['study_name']}"
    config.max_trial_number = budget
    config.execution_engine.max_model_count = budget
    config.execution_engine.max_duration = seconds
    experiment = experiment_class(arch_model_space(mutables, evaluator), evaluator, strategy, config)
    recorder.experiment = experiment.id
    try:
        experiment.run(port=8080)  # a sequential experiment starts no NNI manager and opens no port
    finally:
        experiment.stop()


def _strategy(recorder: _Recorder, job: Mapping[str, Any]) -> Any:
    """The job's NNI strategy, warm-started from the study: it never proposes a complete trial's architecture
    again, and evolution evolves from the latest complete trials."""
    from nni.nas.strategy import GridSearch, Random, RegularizedEvolution
    from nni.nas.strategy.evolution import Individual
    from nni.nas.strategy.utils import DeduplicationHelper

    name, seed = job["strategy"], job["seed"]
    if name == "evolution":
        strategy: Any = RegularizedEvolution(population_size=job["population_size"], sample_size=job["sample_size"],
                                             seed=seed)
    elif name == "grid":
        strategy = GridSearch(shuffle=True, seed=seed)
    else:
        strategy = Random(seed=seed)
    history = recorder.history()
    state = strategy.state_dict()
    dedup = DeduplicationHelper()
    for params, _ in history:
        dedup.dedup(params)
    state.update(dedup.state_dict())
    if name == "evolution":
        state["population"] = [Individual(p, r) for p, r in history[-job["population_size"] :]]
        state["individual_counter"] = len(history)
    strategy.load_state_dict(state)
    return strategy


def _nni_classes() -> tuple[Any, Any]:
    """NNI's view of the search (made here, since their bases come from NNI): ``(model space class, experiment
    class)``."""
    from nni.mutable import MutableDict
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment
    from nni.nas.space import ExecutableModelSpace, ModelStatus

    class ArchModelSpace(ExecutableModelSpace):
        """The search space as NNI sees it: one categorical per position; a frozen model is its sample."""

        def __init__(self, mutables: MutableDict, evaluator: FunctionalEvaluator) -> None:
            super().__init__()
            self.mutables, self.evaluator, self.sample = mutables, evaluator, None

        def freeze(self, sample: dict[str, Any]) -> ArchModelSpace:
            self.validate(sample)
            model = ArchModelSpace(self.mutables, self.evaluator)
            model.sample = dict(sample)  # a copy: NNI's grid search reuses one dict for all its samples
            model.status = ModelStatus.Frozen
            return model

        def check_contains(self, sample: dict[str, Any]) -> Any:
            return self.mutables.check_contains(sample)

        def leaf_mutables(self, is_leaf: Any) -> Any:
            yield from self.mutables.leaf_mutables(is_leaf)

        def executable_model(self) -> dict[str, Any]:
            if not self.status.frozen() or self.sample is None:
                raise RuntimeError("the NNI model space is not frozen")
            return dict(self.sample)

        def extra_repr(self) -> str:
            return f"{self.sample!r}, status={self.status.value!r}"

    class Experiment(NasExperiment):
        """A NAS experiment whose model space is already executable (not a PyTorch module)."""

        def executable_model_factory(self, config: Any) -> ExecutableModelSpace:
            return self.model_space

    return ArchModelSpace, Experiment


def run_job(job: Mapping[str, Any]) -> int:
    """Run one job; returns the number of trials it ran."""
    if job["strategy"] not in NNI_STRATEGIES:
        raise ConfigError(f"unknown NNI strategy {job['strategy']!r}")
    if job.get("torch_threads"):
        import torch

        torch.set_num_threads(int(job["torch_threads"]))
    _import_nni()
    with _quiet_optuna():
        study = optuna.load_study(study_name=job["study_name"], storage=resolve_storage(job["storage"]))
        recorder = _Recorder(study, job)
        start = time.monotonic()  # the timeout counts from here: NNI's imports are not the search's time
        wanted: int = job["trials"]
        timeout: float | None = job["timeout"]
        for arch in job["initial"][:wanted]:
            if timeout is not None and time.monotonic() - start >= timeout:
                break
            recorder.run(arch)
        left = wanted - recorder.count
        seconds = None if timeout is None else timeout - (time.monotonic() - start)
        if left > 0 and (seconds is None or seconds > 0):
            _run_strategy(recorder, job, left, seconds)
    if recorder.count < wanted:
        spent = timeout is not None and time.monotonic() - start >= timeout
        _log.warning("the NNI %s strategy stopped after %d of %d trials: %s", job["strategy"], recorder.count,
                     wanted, f"the timeout of {timeout:g} s is spent" if spent
                     else "it found no architecture it had not tried")
    return recorder.count


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m nasforge.nas._nni_runner JOB``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m nasforge.nas._nni_runner JOB", file=sys.stderr)
        return 2
    try:
        run_job(load_job(args[0]))
    except NasforgeError as exc:
        print(f"nasforge: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
