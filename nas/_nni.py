"""The NNI searcher: NNI 3.0's Random, GridSearch or RegularizedEvolution strategy on its sequential engine.

NNI is an optional dependency (``pip install 'nasforge[nni]'``) and is never imported by this module: the search
runs in a child process (``python -m nasforge.nas._nni_runner JOB``) whose ``HOME`` is a work folder, because
NNI keeps its experiments (log, checkpoint, manifest) in ``~/nni-experiments``. The child writes every trial
into the same Optuna study (and storage) as the ``"optuna"`` searcher the moment it finishes, so resuming,
duplicate reuse, the returned :class:`SearchResult` and Optuna's own tools (``optuna trials``) behave alike.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from nasforge.errors import ConfigError, MissingDependencyError
from nasforge.supernets.arch import SearchSpace

from ._base import (
    NNI_SAMPLERS,
    NNI_STRATEGIES,
    Evaluator,
    Progress,
    Searcher,
    SearchSettings,
    nni_strategy,
    register_searcher,
)
from ._objectives import Objective
from ._optuna import _ATTR_ARCH, _ATTR_METRICS, _FINISHED, _quiet_optuna, collect_result, open_study
from ._result import SearchResult, TrialRecord
from ._storage import MEMORY, describe_storage, journal_storage_url

__all__ = ["NNI_SAMPLERS", "NNI_STRATEGIES", "NniMissingError", "NniSearcher", "nni_strategy"]

#: study user attribute: the per-objective scales |s_i| of the folded reward (fixed once, reused on resume)
REWARD_SCALE_ATTR = "nasforge:nni_reward_scale"
#: trial user attributes written by the NNI runner
REWARD_ATTR = "nasforge:nni_reward"
STRATEGY_ATTR = "nasforge:nni_strategy"
EXPERIMENT_ATTR = "nasforge:nni_experiment"
#: the reward a failed evaluation reports to NNI (far below any folded reward)
FAIL_REWARD = -1e12
#: weight of the summed positive constraint violations subtracted from the reward
PENALTY = 10.0
#: stdout line prefix by which the runner reports a finished trial (followed by its record as JSON)
PROGRESS_PREFIX = "@@nasforge-nni-trial "
_MISSING = "the NNI backend needs NNI: pip install 'nasforge[nni]'"
_STDERR_TAIL = 12


class NniMissingError(MissingDependencyError, ConfigError):
    """NNI (or pytorch-lightning, which ``nni.nas`` imports) is not installed; install ``nasforge[nni]``."""


def _require_nni() -> None:
    for name in ("nni", "pytorch_lightning"):
        try:
            missing = importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            raise NniMissingError(_MISSING)


@register_searcher("nni")
class NniSearcher(Searcher):
    """Search with an NNI 3.0 multi-trial strategy on NNI's sequential execution engine, in a child process.

    Each position of each dimension is one ``nni.choice`` (a ``Categorical`` labelled like the Optuna
    parameters: ``ks_0`` ... ``r``);
    a sample is canonicalised into an :class:`Architecture` before it is evaluated, and an architecture already
    in the study reuses its metrics (``duplicate_of``). NNI strategies maximise one number, so the objectives
    are folded into one reward:

    ``reward = sum_i w_i * d_i * v_i / |s_i|  -  10 * sum_j max(0, violation_j)``

    where ``v_i`` is the value of objective ``i``, ``d_i`` is +1 for a maximised and -1 for a minimised one,
    ``w_i`` its weight (``weights``, default 1) and ``s_i`` its value on the first successfully evaluated
    architecture of the study (``|s_i|`` taken as 1 when it is 0). The scales are fixed then and kept in the
    study's user attributes (``nasforge:nni_reward_scale``), so a resumed search folds alike.
    ``violation_j`` is :meth:`Constraint.violation` (relative, ``<= 0`` is feasible). A trial whose evaluation
    fails reports :data:`FAIL_REWARD` to NNI, so the strategy moves on, and is stored as a FAIL trial with its
    error. Trials, their constraint values and the Pareto front are stored and reported exactly as by the
    ``"optuna"`` searcher; the reward only steers NNI (and is kept as ``nasforge:nni_reward``).

    A resumed search runs only the missing trials; the strategy starts from the study: no sample of a complete
    trial is proposed again, and evolution's population is the latest complete trials. An in-memory search
    (``storage=None``) keeps its study in a temporary journal file in ``workdir`` while NNI runs.

    Args:
        strategy: ``"evolution"`` (NNI ``RegularizedEvolution``, default), ``"random"`` (``Random``) or
            ``"grid"`` (``GridSearch``, shuffled; for small spaces: it stops when every sample was tried).
        population_size: evolution's population; ``None`` picks ``n_trials // 2`` clipped to [2, 20] (and to
            ``n_trials``). At most ``n_trials``, else evolution would never start.
        sample_size: evolution's tournament size; ``None`` picks a quarter of the population (at least 1). At
            most the population size.
        weights: weight of each objective in the reward, by objective name (default 1.0 each); >= 0.
        workdir: ``HOME`` of the NNI process (``nni-experiments`` lands there, and NNI's config folder unless
            ``NNI_CONFIG_DIR`` is set). ``None``: the folder of a journal-file storage, else a fresh temporary
            folder that is removed afterwards.
        timeout: seconds of evaluation after which no new trial starts (NNI's sequential-engine budget, the
            initial architectures included); ``None``: no limit.

    Raises:
        ConfigError: on a bad option, or if NNI is not installed (an :class:`NniMissingError` naming the
            ``nasforge[nni]`` extra).
    """

    def __init__(
        self,
        *,
        strategy: str = "evolution",
        population_size: int | None = None,
        sample_size: int | None = None,
        weights: Mapping[str, float] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        _require_nni()
        if strategy not in NNI_STRATEGIES:
            raise ConfigError(f"unknown NNI strategy {strategy!r}; choose one of {list(NNI_STRATEGIES)}")
        for name, value, low in (("population_size", population_size, 2), ("sample_size", sample_size, 1)):
            if value is not None and (_not_int(value) or value < low):
                raise ConfigError(f"{name}={value!r} must be an integer >= {low}, or None")
        if population_size is not None and sample_size is not None and sample_size > population_size:
            raise ConfigError(f"sample_size={sample_size} is larger than population_size={population_size}")
        if weights is not None and not isinstance(weights, Mapping):
            raise ConfigError(f"weights={weights!r} must map objective names to numbers, e.g. {{'macs': 0.5}}")
        checked: dict[str, float] = {}
        for key, value in (weights or {}).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(value, bool) or not math.isfinite(number) or number < 0:
                raise ConfigError(f"weight {value!r} of objective {key!r} must be a finite number >= 0")
            checked[str(key)] = number
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise ConfigError(f"timeout={timeout!r} must be a positive number of seconds, or None")
        self.strategy = strategy
        self.population_size = population_size
        self.sample_size = sample_size
        self.weights = checked
        self.workdir = None if workdir is None else Path(workdir)
        self.timeout = None if timeout is None else float(timeout)

    def run(self, space: SearchSpace, evaluate: Evaluator, settings: SearchSettings) -> SearchResult:
        """See :meth:`Searcher.search`. Runs ``n_trials`` minus the study's finished trials in the NNI process
        (failures of this call count, failures from before are not: a resume retries); stops early if the
        strategy has no new architecture left (grid search of a small space) or the ``timeout`` is spent.

        Raises:
            ConfigError: on a bad option for these objectives / ``n_trials``, an evaluator that cannot be sent to
                the NNI process, or an error the NNI process reports as such.
            RuntimeError: if the NNI process dies; the trials it finished are in the study.
        """
        s = settings
        weights = self._weights_for(s.objectives)
        sizes = self._evolution_sizes(s.n_trials)
        where = describe_storage(s.storage)
        with _quiet_optuna(), self._work_folder(where) as workdir:
            run_storage = where
            if where == MEMORY:  # the child cannot reach this process's memory: a journal file stands in for it
                run_storage = journal_storage_url(workdir / f".nasforge-nni-{uuid.uuid4().hex[:12]}.journal")
            try:
                study = open_study(space, s.objectives, run_storage, s.study_name, s.seed)
                trials = study.get_trials(deepcopy=False)
                finished = sum(t.state in _FINISHED for t in trials)
                if finished < s.n_trials:
                    job = self._job(space, evaluate, s, study, trials, weights, sizes, run_storage)
                    _run_child(job, workdir, s.progress)
                return collect_result(study, s.objectives, s.constraints, where)
            finally:
                if run_storage != where:
                    _remove_journal(run_storage)

    def _job(self, space: SearchSpace, evaluate: Evaluator, s: SearchSettings, study: optuna.Study,
             trials: Sequence[optuna.trial.FrozenTrial], weights: list[float], sizes: tuple[int | None, int | None],
             run_storage: str) -> dict[str, Any]:
        """The job the NNI process runs: the missing trials of ``study``, with what it needs to fold rewards."""
        finished = sum(t.state in _FINISHED for t in trials)
        return {
            "space": space,
            "evaluate": evaluate,
            "objectives": s.objectives,
            "constraints": s.constraints,
            "weights": weights,
            "strategy": self.strategy,
            "population_size": sizes[0],
            "sample_size": sizes[1],
            "timeout": self.timeout,
            "trials": s.n_trials - finished,
            "done_before": finished,
            "n_trials": s.n_trials,
            # A resumed run gets a different seed, so the strategy does not replay the first run.
            "seed": int(np.random.SeedSequence([s.seed, len(trials)]).generate_state(1)[0]),
            "storage": run_storage,
            "study_name": s.study_name,
            "initial": tuple(space.canonical(a) for a in s.initial) if not trials else (),
            "known": _known_metrics(trials),
            "reward_scale": _reward_scale(study, s.objectives),
            "torch_threads": _torch_threads(),
        }

    def _weights_for(self, objectives: tuple[Objective, ...]) -> list[float]:
        names = [o.name for o in objectives]
        unknown = sorted(set(self.weights) - set(names))
        if unknown:
            raise ConfigError(f"weights name {unknown}, which are not objectives; the objectives are {names}")
        weights = [self.weights.get(n, 1.0) for n in names]
        if not any(w > 0 for w in weights):
            raise ConfigError(f"weights {self.weights} are all 0; give at least one objective a positive weight")
        return weights

    def _evolution_sizes(self, n_trials: int) -> tuple[int | None, int | None]:
        if self.strategy != "evolution":
            return None, None
        population = self.population_size or min(n_trials, int(np.clip(n_trials // 2, 2, 20)))
        if population > n_trials:
            raise ConfigError(f"population_size={population} is larger than n_trials={n_trials}: evolution would "
                              "never start; use a smaller population_size or more trials")
        sample = self.sample_size or max(1, population // 4)
        if sample > population:
            raise ConfigError(f"sample_size={sample} is larger than the population ({population}); use a smaller "
                              "sample_size")
        return population, sample

    @contextmanager
    def _work_folder(self, storage: str) -> Iterator[Path]:
        if self.workdir is not None:
            folder = self.workdir.expanduser().resolve()
        elif storage.startswith("journal:"):
            folder = Path(storage[len("journal:") :]).parent
        else:
            folder = Path(tempfile.mkdtemp(prefix="nasforge-nni-"))
            try:
                yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return
        folder.mkdir(parents=True, exist_ok=True)
        yield folder


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _known_metrics(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[str, tuple[int, dict[str, float]]]:
    """Architecture JSON -> (number, metrics) of the earliest complete trial of each architecture."""
    known: dict[str, tuple[int, dict[str, float]]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        arch, metrics = t.user_attrs.get(_ATTR_ARCH), t.user_attrs.get(_ATTR_METRICS)
        if t.state == TrialState.COMPLETE and isinstance(arch, str) and isinstance(metrics, dict):
            known.setdefault(arch, (t.number, {str(k): float(v) for k, v in metrics.items()}))
    return known


def _reward_scale(study: optuna.Study, objectives: tuple[Objective, ...]) -> list[float] | None:
    """The study's reward scales; fixed here from its first complete trial if it has one but no scales yet
    (a study begun by another searcher); ``None`` if nothing was evaluated yet."""
    stored = study.user_attrs.get(REWARD_SCALE_ATTR)
    if isinstance(stored, list) and len(stored) == len(objectives):
        return [float(s) for s in stored]
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        if t.values is not None and len(t.values) == len(objectives):
            scale = [abs(float(v)) or 1.0 for v in t.values]
            study.set_user_attr(REWARD_SCALE_ATTR, scale)
            return scale
    return None


def _torch_threads() -> int | None:
    """This process's torch thread count, which the child copies (None if torch is not in use here)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def _remove_journal(url: str) -> None:
    path = Path(url[len("journal:") :])
    for leftover in (path, path.with_name(path.name + ".lock")):
        leftover.unlink(missing_ok=True)


def _by_value_modules(evaluate: object) -> list[Any]:
    """Modules of ``evaluate`` that a child process cannot import by name (e.g. a test module that pytest loaded
    in importlib mode, or one made at run time); they are pickled by value. ``__main__`` is pickled by value by
    cloudpickle anyway."""
    names = set()
    for obj in (evaluate, getattr(evaluate, "func", None), type(evaluate)):
        name = getattr(obj, "__module__", None)
        if isinstance(name, str) and name not in ("__main__", "builtins"):
            names.add(name)
    return [sys.modules[n] for n in sorted(names) if n in sys.modules and not _findable(sys.modules[n])]


def _findable(module: Any) -> bool:
    """Whether the import system finds ``module`` by its name at its file (``importlib.util.find_spec`` would
    just return the ``__spec__`` of a module already in ``sys.modules``)."""
    name = module.__name__
    parent, _, _ = name.rpartition(".")
    path = None
    if parent:
        package = sys.modules.get(parent)
        path = getattr(package, "__path__", None)
        if package is None or path is None or not _findable(package):
            return False
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        try:
            spec = find(name, path) if find is not None else None
        except Exception:  # a finder that cannot handle this name
            spec = None
        if spec is None:
            continue
        origin, file = spec.origin, getattr(module, "__file__", None)
        return origin is None or file is None or Path(origin).resolve() == Path(file).resolve()
    return False


def _write_job(job: dict[str, Any], path: Path) -> None:
    """Pickle ``job`` with cloudpickle (a dependency of NNI) inside a plain pickle that carries this process's
    ``sys.path``, which the child appends to its own before it unpickles (modules found through it, such as
    test modules, are then importable there too)."""
    import cloudpickle

    modules = _by_value_modules(job["evaluate"])
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        payload = cloudpickle.dumps(job)
    except Exception as exc:
        raise ConfigError(f"the evaluator cannot be sent to the NNI process ({type(exc).__name__}: {exc}); use a "
                          "picklable evaluator, e.g. a module-level function or a closure over picklable data") from exc
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)
    with path.open("wb") as f:
        pickle.dump({"sys_path": [p for p in sys.path if p], "payload": payload}, f)


def _run_child(job: dict[str, Any], workdir: Path, progress: Progress | None) -> None:
    """Run the NNI process on ``job`` with ``HOME=workdir``; report its trials to ``progress``."""
    path = workdir / f"nasforge-nni-job-{uuid.uuid4().hex[:12]}.pkl"
    _write_job(job, path)
    tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
    done = 0
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nasforge.nas._nni_runner", str(path)],
            env=_child_env(workdir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        reader = threading.Thread(target=_pump_stderr, args=(proc, tail), name="nasforge-nni-stderr", daemon=True)
        reader.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.startswith(PROGRESS_PREFIX):
                    sys.stdout.write(line)  # the evaluator's own output
                    continue
                done += 1
                if progress is not None:
                    record = TrialRecord.from_dict(json.loads(line[len(PROGRESS_PREFIX) :]))
                    progress(job["done_before"] + done, job["n_trials"], record)
            code = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        finally:
            reader.join(timeout=10)
    finally:
        path.unlink(missing_ok=True)
    if code != 0:
        _raise_child_error(code, list(tail), done)


def _child_env(workdir: Path) -> dict[str, str]:
    """This process's environment with ``HOME=workdir``; NNI's config folder (in a virtual environment it is
    ``sys.prefix/nni``) moves there too unless ``NNI_CONFIG_DIR`` is set, so NNI writes nothing outside it."""
    env = {**os.environ, "HOME": str(workdir)}
    env.setdefault("NNI_CONFIG_DIR", str(workdir / ".config" / "nni"))
    return env


def _pump_stderr(proc: subprocess.Popen[str], tail: collections.deque[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        if line.strip():
            tail.append(line.rstrip())


def _raise_child_error(code: int, tail: list[str], done: int) -> None:
    prefix = "nasforge: error: "
    last = tail[-1] if tail else ""
    if code == 2 and last.startswith(prefix):
        raise ConfigError(last[len(prefix) :])
    detail = "\n".join(tail[-5:]) or "(no output)"
    raise RuntimeError(f"the NNI search process exited with code {code} after {done} trial(s), which are in the "
                       f"study; its last output:\n{detail}")

