"""Search a trained supernet on its own (``nasforge search``): one process, N local workers, or many machines.

A search job = supernet checkpoint + data + objectives + constraints + sampler + storage. The study lives in
``OUT/study.journal`` unless ``storage`` names another Optuna storage (``sqlite:///...``,
``postgresql://...``); ``study`` names the study to create or join, so machines that run the same command
against one database share it. ``workers=N`` starts N local processes on the same storage; they stop together
at ``trials`` (an NNI sampler, ``nni-evolution`` / ``nni-random`` / ``nni-grid``, runs one sequential worker
whose NNI home, ``nni-experiments``, is ``OUT``). The parent supervises the local workers
(:mod:`nasforge.nas._supervisor`): a worker that dies has its trial failed and retried at once and is replaced,
at most ``workers`` times, after which the search stops with one line. A worker on another machine that dies
leaves a trial that the others (or the next run) fail and retry after its heartbeats stop
(:mod:`nasforge.nas._heartbeat`). The run folder gets ``search.json``,
``trials.csv``, ``pareto.csv``, ``pareto.json`` (front and 2-D hypervolume with its reference point) and
``pareto.png``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from nasforge.config import SEARCH_COMMAND_OBJECTIVES, SearchSection
from nasforge.data import load_data
from nasforge.errors import ConfigError
from nasforge.evaluator import make_subnet_evaluator
from nasforge.io import atomic_write_json, atomic_write_text
from nasforge.nas import (
    SearchResult,
    SearchWorkerError,
    SupervisorReport,
    hypervolume_2d,
    nni_strategy,
    parse_objective,
    plot_pareto,
    redact_storage,
    resolve_storage,
    run_search,
    supervise_workers,
)
from nasforge.runfolder import RunFolder, resolve_run_source
from nasforge.runlock import run_lock
from nasforge.supernets import Architecture, Supernet
from nasforge.supernets.checkpoint import load_supernet

__all__ = ["SearchJob", "make_subnet_evaluator", "resumed_job", "run_search_job", "resolve_source"]


@dataclass(frozen=True)
class SearchJob(SearchSection):
    """Everything a worker needs (plain data, so it crosses process boundaries): the search options of
    :class:`~nasforge.config.SearchSection` (shared with ``nasforge run``'s ``search:`` section, defaults
    included) and what only a standalone search has. ``nasforge search`` builds it with :meth:`for_cli`.

    Its settings are checked when it runs (:func:`run_search_job`), after the output folder, not when built.
    """

    checkpoint: str
    data: str
    out: str
    _: KW_ONLY
    seed: int = 0
    image_size: int | None = None
    heartbeat: float = 10.0
    latency_table: str | None = None
    accept_latency_error: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Nothing: :func:`run_search_job` checks the settings (:meth:`SearchSection.check`)."""

    @classmethod
    def for_cli(cls, **values: Any) -> SearchJob:
        """The job of ``nasforge search``: ``values`` with that command's default objectives
        (:data:`~nasforge.config.SEARCH_COMMAND_OBJECTIVES`) where none are given."""
        return cls(**{"objectives": SEARCH_COMMAND_OBJECTIVES, **values})

    @property
    def storage_url(self) -> str:
        return self.storage_in(self.out)


def resolve_source(source: str | Path) -> tuple[Path, str | None, int | None]:
    """``(checkpoint, data spec or None, image size or None)`` of a checkpoint file or a run folder of
    ``nasforge train`` / ``nasforge run`` (whose recorded data spec is reused); see
    :func:`nasforge.runfolder.resolve_run_source`."""
    return resolve_run_source(source).as_tuple()


def _worker(job: SearchJob, worker: int) -> SearchResult:
    torch.set_num_threads(1)
    net, _ = load_supernet(job.checkpoint)
    size = job.image_size or net.resolution(net.space.largest())
    data = load_data(job.data, image_size=size, seed=job.seed)
    cost_fns: dict[str, Callable[[Architecture], float]] = {"macs": net.macs, "params": net.params}
    table_fn = _table_latency(job, net)
    options = job.evaluator_options()
    if table_fn is not None:  # a table predicts FP32 latency_ms only: int8_latency_ms is measured (latency_ms too)
        options["latency"] = job.needs("int8_latency")
    evaluate = make_subnet_evaluator(net, data, scratch=Path(job.out), **options)
    if table_fn is not None:  # latency_ms from the device's latency table instead of measuring every trial
        cost_fns["latency_ms"] = table_fn
        measured = evaluate

        def evaluate(arch: Architecture) -> dict[str, float]:
            metrics = {k: v for k, v in measured(arch).items() if k not in ("latency_cv", "latency_unstable")}
            return {**metrics, "latency_ms": table_fn(arch)}  # a prediction has no measured spread

    sampler: Any = job.sampler
    if sampler == "predictor":  # exact MACs/params (and table latency) instead of predicting them
        from nasforge.nas import PredictorLoopSearcher

        sampler = PredictorLoopSearcher(cost_fns=cost_fns, heartbeat_interval=job.heartbeat)
    elif nni_strategy(sampler) is not None:  # NNI's home (nni-experiments) is the run folder
        from nasforge.nas import NniSearcher

        sampler = NniSearcher(strategy=nni_strategy(sampler), workdir=job.out)
    return run_search(net.space, evaluate, **{**job.search_options(), "sampler": sampler}, storage=job.storage_url,
                      seed=job.seed + 1000 * worker, initial=(net.space.largest(), net.space.smallest()),
                      heartbeat=job.heartbeat)


def _table_latency(job: SearchJob, net: Supernet, warn: Callable[[str], None] | None = None
                   ) -> Callable[[Architecture], float] | None:
    """``arch -> predicted latency_ms`` from ``job.latency_table``, or None without a table.

    The table must fit ``net`` and be trusted to rank subnets (:meth:`LatencyTable.require_trust`: a recorded
    held-out error within bounds and, for a table of this machine's CPU, measured on this machine), unless
    ``job.accept_latency_error`` (then ``warn`` hears why it should not be).
    """
    if job.latency_table is None:
        return None
    from nasforge.export import LatencyTable, environment_fingerprint

    table = LatencyTable.load(job.latency_table)
    table.check_fits(net)
    local = table.device.get("profiler") in _LOCAL_CPU_PROFILERS
    here = environment_fingerprint(int(table.device.get("threads", 1))) if local else None
    table.require_trust(here, accept=job.accept_latency_error, warn=warn)
    return lambda arch: table.predict(net, arch)


#: profilers that time on this machine's CPU: a table of theirs is checked against this machine's fingerprint
_LOCAL_CPU_PROFILERS = frozenset({"ort-cpu", "torch-cpu"})


def _worker_entry(job: SearchJob, worker: int) -> None:
    _worker(job, worker)


def run_search_job(job: SearchJob, *, workers: int = 1, resume: bool = False,
                   log: Callable[[str], None] = print, max_restarts: int | None = None) -> SearchResult:
    """Run ``job`` with ``workers`` local processes (1: in this process) and write the results in ``job.out``.

    Several workers run under a supervisor (:func:`~nasforge.nas._supervisor.supervise_workers`): a worker that
    dies has its running trial failed and retried at once and is replaced, at most ``max_restarts`` times
    (default ``workers``). The results are written whenever the study exists, also when the search stopped.

    Raises:
        ConfigError: bad objectives/constraints/sampler, ``out`` holding another search without ``resume`` or
            ``resume`` without a search in ``out``, workers with an in-memory storage.
        ConfigError: another process is writing ``out`` (the message names its PID).
        SearchWorkerError: workers kept dying (after the results so far are written).
        NasforgeError: the error a worker raised (a bad data spec, say).
    """
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be >= 1")
    with run_lock(job.out, "nasforge search"):  # the parent only: workers run _worker_entry, never this
        return _run_search_job(job, workers=workers, resume=resume, log=log, max_restarts=max_restarts)


def _run_search_job(job: SearchJob, *, workers: int, resume: bool, log: Callable[[str], None],
                    max_restarts: int | None) -> SearchResult:
    """:func:`run_search_job` with ``job.out`` locked against a second writer."""
    _check_out(Path(job.out), resume)  # before the storage is opened: a journal in OUT would create OUT
    if workers > 1 and nni_strategy(job.sampler) is not None:
        raise ConfigError("the NNI backend runs one sequential worker; use --workers 1 or an Optuna sampler")
    # unknown metrics, a malformed constraint, an unknown sampler (or one whose extra is missing) fail before
    # anything is written
    job.check()
    if job.latency_table is not None:  # so does a table that is unreadable, for another supernet or untrusted
        _table_latency(job, load_supernet(job.checkpoint)[0], warn=log)
    resolve_storage(job.storage_url)  # and a missing database driver or an unreachable database
    out = Path(job.out)
    record = RunFolder(out).search_record
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, {**asdict(job), "storage": job.storage and redact_storage(job.storage),
                               "workers": workers})
    if workers == 1:
        result = _worker(job, 0)
        write_results(result, out, job)
        return result
    log(f"starting {workers} workers on {redact_storage(job.storage_url)} (study {job.study!r})")
    report = supervise_workers(partial(_worker_entry, job), workers, storage=job.storage_url, study_name=job.study,
                               n_trials=job.trials, max_restarts=max_restarts, log=log, trace_dir=out)
    return _finish(job, out, report)


#: SearchJob fields a resume may change: more (or fewer) trials wanted; ``workers`` is not part of the job.
RESUMABLE_SEARCH_SETTINGS = frozenset({"trials"})


def resumed_job(out: str | Path, given: dict[str, Any]) -> SearchJob:
    """The search recorded in ``out/search_job.json``, continued with the options ``given`` explicitly.

    A resume repeats no option: every setting comes from the record. A given option that equals the recorded
    one is accepted; ``trials`` may change (it is applied and recorded); any other difference is refused in one
    line, as continuing a study with another sampler, objective or constraint would mix two searches.
    The recorded storage URL hides a database password: pass ``--storage`` again for such a database.

    Raises:
        ConfigError: nothing to resume, an unreadable record, or a given setting that differs from it.
    """
    record = RunFolder(out).search_record
    if not record.is_file():
        raise ConfigError(f"nothing to resume in {out} (no search_job.json); start it without --resume")
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        names = {f for f in SearchJob.__dataclass_fields__}  # "workers" is recorded next to the job, not in it
        job = SearchJob.for_cli(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()
                                   if k in names})
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{record} is unreadable ({exc}); restore it or start a new search in another --out") \
            from None
    changes: dict[str, Any] = {}
    differ = []
    for key, value in given.items():
        recorded = getattr(job, key)
        if key in ("checkpoint", "latency_table") and value is not None and recorded is not None:
            value = value if Path(value).resolve() != Path(recorded).resolve() else recorded
        if key == "storage" and value is not None:
            changes[key] = value  # the record hides a password: compare what it shows
            if redact_storage(value) != recorded:
                differ.append(f"--storage ({recorded!r} recorded, {redact_storage(value)!r} given)")
        elif value is not None and value != recorded:
            if key in RESUMABLE_SEARCH_SETTINGS:
                changes[key] = value
            else:
                differ.append(f"--{key.replace('_', '-')} ({_shown(recorded)} recorded, {_shown(value)} given)")
    if differ:
        raise ConfigError(f"--resume continues the search recorded in {record}; these options differ from it: "
                          f"{', '.join(differ)}; drop them (only --trials and --workers may change) or start a new "
                          "search in another --out")
    job = replace(job, out=str(Path(out)), **changes)
    if "storage" not in changes and "***" in (job.storage or ""):
        raise ConfigError(f"the search in {out} uses a database whose password is not recorded; pass --storage "
                          "URL again with --resume")
    return job


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return repr(",".join(value)) if value else "none"
    return repr(value)


def _check_out(out: Path, resume: bool) -> None:
    record = RunFolder(out).search_record
    if record.exists() and not resume:
        raise ConfigError(f"{out} already holds a search; pass --resume to continue it (or --trials to add "
                          "trials) or choose another --out")
    if resume and not record.exists():
        raise ConfigError(f"nothing to resume in {out} (no search_job.json); start it without --resume")


def _finish(job: SearchJob, out: Path, report: SupervisorReport) -> SearchResult:
    """Write the supervised search's results; raise with one line if its workers kept dying."""
    if report.finished < 0:  # no worker got as far as creating the study
        raise SearchWorkerError(f"{report.gave_up or 'the workers ended before the study was created'}; "
                                f"nothing to write in {out}")
    result = _collect(job)
    write_results(result, out, job)
    if report.gave_up is not None:
        raise SearchWorkerError(f"{report.gave_up}; results so far in {out}; fix the cause and continue with "
                                "--resume")
    return result


def _collect(job: SearchJob) -> SearchResult:
    """The study's trials and front, read back from the storage after the workers finished."""
    import optuna

    from nasforge.nas import collect_result, describe_storage, parse_constraint

    study = optuna.load_study(study_name=job.study, storage=resolve_storage(job.storage_url))
    return collect_result(study, tuple(parse_objective(o) for o in job.objectives),
                          tuple(parse_constraint(c) for c in job.constraints), describe_storage(job.storage_url))


def reference_point(result: SearchResult) -> tuple[float, float] | None:
    """A stated hypervolume reference for two objectives: the worst complete value of each, pushed 10% further."""
    if len(result.objectives) != 2:
        return None
    done = [t for t in result.trials if t.state == "complete"]
    if not done:
        return None
    ref = []
    for o in result.objectives:
        values = [t.metrics[o.name] for t in done]
        worst = min(values) if o.direction == "maximize" else max(values)
        span = (max(values) - min(values)) or abs(worst) or 1.0
        ref.append(worst - 0.1 * span if o.direction == "maximize" else worst + 0.1 * span)
    return ref[0], ref[1]


def write_results(result: SearchResult, out: Path, job: SearchJob) -> dict[str, Any]:
    """``search.json``, ``trials.csv``, ``pareto.csv``/``pareto.json`` and ``pareto.png``; returns the summary."""
    result.to_json(out / "search.json")
    result.to_csv(out / "trials.csv")
    names = [o.name for o in result.objectives]
    cvs = [k for k in _CV_KEYS if any(k in t.metrics for t in result.front)]
    stability = [*cvs, "unstable"] if cvs else []
    rows = [{"trial": t.number, **{k: t.metrics.get(k) for k in names}, **_stability(t.metrics, cvs),
             "arch": json.dumps(t.arch.to_dict())} for t in result.front]
    header = ["trial", *names, *stability, "arch"]
    lines = [",".join(header)] + [",".join(_csv(r[h]) for h in header) for r in rows]
    atomic_write_text(out / "pareto.csv", "\n".join(lines) + "\n")
    summary: dict[str, Any] = {"study": result.study_name, "storage": result.storage,
                               "objectives": [f"{o.name}:{o.direction[:3]}" for o in result.objectives],
                               "constraints": [str(c) for c in result.constraints],
                               "complete": result.n_complete, "trials": len(result.trials), "front": rows}
    ref = reference_point(result)
    if ref is not None and result.front:
        points = [[t.metrics[n] for n in names] for t in result.front]
        summary["hypervolume"] = hypervolume_2d(points, [o.direction for o in result.objectives], ref)
        summary["hypervolume_reference"] = list(ref)
        plot_pareto([t.metrics for t in result.trials if t.state == "complete"], [t.metrics for t in result.front],
                    names[1], names[0], out / "pareto.png", title=f"{job.sampler} search: {result.n_complete} trials")
    atomic_write_json(out / "pareto.json", summary)
    return summary


#: Coefficients of variation the subnet evaluator records next to its measured latencies.
_CV_KEYS = ("latency_cv", "int8_latency_cv")


def _stability(metrics: dict[str, float], cvs: Sequence[str]) -> dict[str, Any]:
    """The front row's latency CVs and ``unstable``: whether any measured latency stayed above the CV bound."""
    if not cvs:
        return {}
    flags = [metrics.get(k.replace("_cv", "_unstable")) for k in cvs]
    return {**{k: metrics.get(k) for k in cvs}, "unstable": any(f == 1.0 for f in flags)}


def _csv(value: Any) -> str:
    text = "" if value is None else str(value)
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


def summary_table(summary: dict[str, Any], limit: int = 12) -> str:
    """The front as a small text table (what ``nasforge search`` prints)."""
    names = [o.split(":")[0] for o in summary["objectives"]]
    lines = [f"{summary['complete']} complete trials of {summary['trials']}; front of {len(summary['front'])}"
             + (f"; hypervolume {summary['hypervolume']:.4g} (reference {summary['hypervolume_reference']})"
                if "hypervolume" in summary else "")]
    flagged = any("unstable" in r for r in summary["front"])
    extra = ["latency_cv"] if flagged else []
    lines.append("  ".join(f"{h:>12}" for h in ["trial", *names, *extra]))
    for r in summary["front"][:limit]:
        cells = [r["trial"], *(r.get(n) for n in names), *(r.get(k) for k in extra)]
        line = "  ".join(f"{v:>12.6g}" if isinstance(v, float) else f"{v!s:>12}" for v in cells)
        lines.append(line + ("  ! unstable" if r.get("unstable") else ""))
    if flagged:
        lines.append(_stability_line(summary["front"]))
    return "\n".join(lines)


def _stability_line(front: Sequence[dict[str, Any]]) -> str:
    """One line counting the front's unstable latencies (coefficient of variation above the bound)."""
    bad = [r for r in front if r.get("unstable")]
    if not bad:
        return f"all {len(front)} front latencies are stable (CV <= 0.1 after re-measuring)"
    return (f"{len(bad)} of {len(front)} front latencies are unstable (CV > 0.1 after re-measuring, marked !): "
            "the machine was busy; re-run the search on an idle machine before trusting them")


def _split(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())
