"""The typed configuration of ``nasforge run``: strict loading (unknown keys and bad values are errors),
YAML round-trip, and a schema version saved with every run so a run folder can be reproduced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from nasforge.errors import ConfigError
from nasforge.io import atomic_write_text
from nasforge.runfolder import RunFolder
from nasforge.supernets.trainers import TrainConfig, TrainHyperparams, get_trainer

__all__ = [
    "SCHEMA_VERSION",
    "DataSection",
    "SupernetSection",
    "TrainSection",
    "SearchSection",
    "SEARCH_COMMAND_OBJECTIVES",
    "ExportSection",
    "CompressSection",
    "RunConfig",
    "load_config",
    "save_config",
    "config_from_dict",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DataSection:
    """Which data to train and evaluate on (see :func:`nasforge.data.load_data`).

    ``augment`` (image-file data such as ``folder:DIR`` / ``imagenet:DIR``): the augmentation recipe,
    :class:`nasforge.data.AugmentRecipe` fields or ``preset: ofa|light|none``; ``workers``: loader worker
    processes (``null``: from the CPU count); ``max_bad_images``: unreadable images skipped before the run stops.
    """

    spec: str = "digits"
    image_size: int | None = 16
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    augment: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    max_bad_images: int = 100

    def __post_init__(self) -> None:
        from nasforge.data import AugmentRecipe, LoaderOptions, check_spec
        from nasforge.errors import DataError

        try:
            check_spec(self.spec)
            AugmentRecipe.from_dict(self.augment)
            LoaderOptions(workers=self.workers, max_bad_images=self.max_bad_images)
        except DataError as exc:
            raise ConfigError(str(exc)) from None

    def loading(self) -> Any:
        """The :class:`nasforge.data.LoaderOptions` of this section."""
        from nasforge.data import LoaderOptions

        return LoaderOptions(workers=self.workers, max_bad_images=self.max_bad_images)


@dataclass(frozen=True)
class SupernetSection:
    """Which registered supernet to train, with keyword overrides of its configuration."""

    name: str = "mbv3-small"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from nasforge.supernets import list_supernets

        if self.name not in list_supernets():
            raise ConfigError(f"supernet {self.name!r} is unknown; use one of {list_supernets()} "
                              "(`nasforge space list`)")


@dataclass(frozen=True)
class TrainSection(TrainHyperparams):
    """The training loop's hyper-parameters (:class:`TrainHyperparams`) and which trainer runs them."""

    trainer: str = "sandwich"
    trainer_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.trainer_options, Mapping):
            raise ConfigError(f"trainer_options must be a mapping, got {self.trainer_options!r}")
        get_trainer(self.trainer, self.train_config(0))  # unknown trainer or bad options fail at load time

    def train_config(self, seed: int) -> TrainConfig:
        """The :class:`TrainConfig` of this section with the run's seed."""
        values = {f.name: getattr(self, f.name) for f in fields(TrainHyperparams)}
        return TrainConfig(seed=seed, trainer_options=dict(self.trainer_options), **values)


#: ``nasforge search``'s default objectives (no latency measuring): the one search option whose default differs
#: between the commands; ``nasforge run``'s are :class:`SearchSection`'s own (``accuracy``, ``latency_ms``).
SEARCH_COMMAND_OBJECTIVES: tuple[str, ...] = ("accuracy", "macs")


@dataclass(frozen=True, kw_only=True)
class SearchSection:
    """The search options and their defaults, the one home of both commands' search settings.

    ``nasforge run``'s ``search:`` section is this class, and ``nasforge search``'s job record
    (:class:`nasforge.search.SearchJob`) extends it with what only a standalone search has (checkpoint, data,
    folder, seed, latency table, heartbeat). ``nasforge search`` gives :data:`SEARCH_COMMAND_OBJECTIVES`
    explicitly (:meth:`nasforge.search.SearchJob.for_cli`); latency is timed on ``export.backend`` with
    ``export.threads`` in a run and on ``ort-cpu`` with one thread in a standalone search.

    Attributes:
        trials: finished trials wanted in the study.
        sampler: a searcher name (``nasforge.nas.list_searchers()``, e.g. ``tpe``, ``nsga2``, ``nni-evolution``).
        objectives, constraints: what the search optimises and the bounds a subnet must meet.
        calib_images: training images that recalibrate BN statistics before a subnet is scored.
        storage: an Optuna storage URL; ``None``: the run folder's ``study.journal``.
        study: the study to create or join.
        latency_runs, latency_warmup: the short latency protocol of a trial (timed and warm-up runs).
    """

    trials: int = 40
    sampler: str = "tpe"
    objectives: tuple[str, ...] = ("accuracy", "latency_ms")
    constraints: tuple[str, ...] = ()
    calib_images: int = 500
    storage: str | None = None
    study: str = "nasforge"
    latency_runs: int = 50
    latency_warmup: int = 10

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Fail in one line on an unknown metric, a malformed constraint or an unknown (or not installed) sampler.

        Raises:
            ConfigError: the bad value and what to pass instead.
        """
        from nasforge.nas import check_search_settings

        check_search_settings(self.objectives, self.constraints, self.sampler)

    def needs(self, metric: str) -> bool:
        """Whether an objective or constraint names ``metric`` (``latency`` also matches ``int8_latency_ms``)."""
        return metric in " ".join(self.objectives + self.constraints)

    def storage_in(self, out: str | Path) -> str:
        """The study's storage URL: ``storage``, or the ``study.journal`` of the run folder ``out``."""
        return self.storage or str(RunFolder(out).study)

    def search_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`nasforge.nas.run_search` that this section sets."""
        return {"objectives": self.objectives, "constraints": self.constraints, "n_trials": self.trials,
                "sampler": self.sampler, "study_name": self.study}

    def evaluator_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`nasforge.search.make_subnet_evaluator` that this section sets: what
        each trial measures (latency, INT8) and how."""
        return {"calib_images": self.calib_images, "latency": self.needs("latency"), "int8": self.needs("int8"),
                "latency_runs": self.latency_runs, "latency_warmup": self.latency_warmup}


@dataclass(frozen=True)
class ExportSection:
    """Export of the chosen subnets and their latency measurement."""

    max_subnets: int = 8
    opset: int = 18
    atol: float = 1e-4
    exporter: str = "dynamo"
    dynamic_batch: bool = False
    backend: str = "ort-cpu"
    runs: int = 200
    warmup: int = 20
    threads: int = 1

    def __post_init__(self) -> None:
        from nasforge.export import list_profilers

        if self.backend not in list_profilers() or self.backend == "remote":
            raise ConfigError(f"backend {self.backend!r} is unknown; use one of "
                              f"{[b for b in list_profilers() if b != 'remote']} (a board: `nasforge profile --remote`)")


@dataclass(frozen=True)
class CompressSection:
    """Optional last stage: prune and/or INT8-quantize every exported subnet (``subnets/<k>/compressed/``).

    Attributes:
        prune: a pruning target (``macs=0.7``, ``macs=2x``, ``params=0.5``, ``latency_ms=3`` on
            ``export.backend``); ``None`` prunes nothing.
        criterion: channel-group ranking of the pruning (``nasforge.prune.list_criteria()``; not ``gmn``).
        finetune_epochs: finetuning epochs after pruning (0: none).
        round_to: pruned channel counts stay multiples of this (1: any count).
        quantize: write an INT8 ONNX file (of the pruned model when ``prune`` is set).
        method, calibration: the INT8 settings (:class:`nasforge.quantize.QuantConfig`); an ``int8_accuracy``
            or ``int8_latency_ms`` search objective quantizes with them too (``qat`` as ``static`` there).
        policy: ``selective`` (keep in float the operator groups INT8 does not speed up on ``export.backend``,
            and the FP32 model when no INT8 variant is faster at every batch size) or ``all``.
        batches: comma-separated batch sizes the INT8 file must be faster at (e.g. ``"1,32"``).
    """

    prune: str | None = None
    criterion: str = "l2"
    finetune_epochs: int = 1
    round_to: int = 4
    quantize: bool = False
    method: str = "static"
    calibration: str = "minmax"
    policy: str = "selective"
    batches: str = "1"

    def __post_init__(self) -> None:
        from nasforge.prune import list_criteria, parse_target
        from nasforge.quantize import QuantConfig

        if self.prune is not None:
            parse_target(self.prune)
        if self.criterion not in list_criteria():
            raise ConfigError(f"criterion {self.criterion!r} is unknown; pick one of {list_criteria()} ('gmn' needs "
                              "a metanetwork: use `nasforge prune --criterion gmn`)")
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs={self.finetune_epochs} is invalid; it must be >= 0")
        if self.round_to < 1:
            raise ConfigError(f"round_to={self.round_to} is invalid; it must be >= 1 (1: any channel count)")
        QuantConfig(method=self.method, calibration=self.calibration, policy=self.policy)
        self.batch_sizes  # noqa: B018  (validates)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """``batches`` as integers."""
        try:
            sizes = tuple(int(b) for b in str(self.batches).split(",") if b.strip())
        except ValueError:
            sizes = ()
        if not sizes or min(sizes) < 1:
            raise ConfigError(f"compress.batches={self.batches!r} is invalid; pass comma-separated sizes >= 1 "
                              "(e.g. \"1,32\")")
        return sizes

    def quant_config(self, *, search: bool = False) -> Any:
        """The :class:`nasforge.quantize.QuantConfig` of this stage (``qat`` quantizes as ``static`` in a search)."""
        from nasforge.quantize import QuantConfig

        method = "static" if search and self.method == "qat" else self.method
        return QuantConfig(method=method, calibration=self.calibration, policy=self.policy)

    @property
    def enabled(self) -> bool:
        """Whether the compress stage runs."""
        return self.prune is not None or self.quantize


@dataclass(frozen=True)
class RunConfig:
    """Everything ``nasforge run`` needs; saved as ``config.yaml`` in the run folder."""

    schema_version: int = SCHEMA_VERSION
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    supernet: SupernetSection = field(default_factory=SupernetSection)
    train: TrainSection = field(default_factory=TrainSection)
    search: SearchSection = field(default_factory=SearchSection)
    export: ExportSection = field(default_factory=ExportSection)
    compress: CompressSection = field(default_factory=CompressSection)

    def __post_init__(self) -> None:
        _check_values(self)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def with_overrides(self, **dotted: Any) -> RunConfig:
        """A copy with ``section__key=value`` (or top-level ``seed=``) overrides, validated."""
        data = self.to_dict()
        for key, value in dotted.items():
            parts = key.split("__")
            node = data
            for p in parts[:-1]:
                node = node[p]
            node[parts[-1]] = value
        return config_from_dict(data)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


_SECTIONS: dict[str, type] = {
    "data": DataSection, "supernet": SupernetSection, "train": TrainSection, "search": SearchSection,
    "export": ExportSection, "compress": CompressSection,
}


def config_from_dict(data: Mapping[str, Any] | None) -> RunConfig:
    """Build a :class:`RunConfig` from plain data; :class:`ConfigError` names any unknown key or bad value."""
    data = dict(data or {})
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ConfigError(f"config schema_version {version!r} is not supported; this nasforge reads {SCHEMA_VERSION}")
    top = {f.name for f in fields(RunConfig)}
    _reject_unknown(data, top, "")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
            kwargs[name] = _build_section(_SECTIONS[name], value, name)
        else:
            kwargs[name] = _coerce(name, value, getattr(RunConfig(), name))
    return RunConfig(**kwargs)


def _reject_unknown(data: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(str(k) for k in set(data) - allowed)
    if unknown:
        where = f"in section {prefix!r} " if prefix else ""
        raise ConfigError(f"unknown config key(s) {unknown} {where}(allowed: {', '.join(sorted(allowed))})")


def _build_section(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    defaults = cls()
    _reject_unknown(data, {f.name for f in fields(cls)}, prefix)
    values = {k: _coerce(f"{prefix}.{k}", v, getattr(defaults, k)) for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"config section {prefix!r}: {exc}") from None


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the field's default (None-able fields accept None)."""
    if value is None and (default is None or key in _NULLABLE):
        return None
    expected = type(default) if default is not None else _NULLABLE.get(key, type(value))
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    elif expected is dict:
        ok = isinstance(value, Mapping)
        value = dict(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"config key {key!r} must be {_TYPE_NAMES.get(expected, expected.__name__)}, got {value!r}")
    return value


_NULLABLE: dict[str, type] = {"data.image_size": int, "data.workers": int, "search.storage": str,
                              "compress.prune": str}
_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", tuple: "a list of strings",
               dict: "a mapping", str: "a string"}


def _check_values(cfg: RunConfig) -> None:
    rules = [
        ("search.trials", cfg.search.trials >= 1, ">= 1"),
        ("search.objectives", len(cfg.search.objectives) in (1, 2, 3), "1 to 3 objectives"),
        ("search.latency_runs", cfg.search.latency_runs >= 1, ">= 1"),
        ("export.max_subnets", cfg.export.max_subnets >= 1, ">= 1"),
        ("export.runs", cfg.export.runs >= 1, ">= 1"),
        ("export.threads", cfg.export.threads >= 1, ">= 1"),
        ("export.atol", cfg.export.atol > 0, "> 0"),
        ("export.exporter", cfg.export.exporter in ("dynamo", "torchscript"), "'dynamo' or 'torchscript'"),
        ("data.val_fraction", 0 < cfg.data.val_fraction < 0.5, "between 0 and 0.5"),
        ("data.test_fraction", 0 < cfg.data.test_fraction < 0.5, "between 0 and 0.5"),
        ("seed", cfg.seed >= 0, ">= 0"),
    ]
    for key, ok, want in rules:
        if not ok:
            value = cfg.seed if key == "seed" else getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])
            raise ConfigError(f"config key {key!r} = {value!r} is invalid; it must be {want}")


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config file (missing keys take their defaults).

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8 text (e.g. an image), not YAML, or holds an
            unknown key or a bad value (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                          "pass a YAML file such as the config.yaml of a run folder") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror or exc}); check its permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return config_from_dict(data)


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """Atomically write ``cfg`` as YAML (every key, so the file alone reproduces the run)."""
    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
