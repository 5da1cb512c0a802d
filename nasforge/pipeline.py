"""``nasforge run``: train a supernet, search its subnets, export the best ones, measure them, optionally prune
and quantize them (``compress:``), report.

Every stage writes into the run folder and can be resumed: training continues from the last epoch's
checkpoint, the search continues its Optuna journal, and export/measurement and compression are redone (they
are cheap and overwrite atomically).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasforge._version import __version__
from nasforge.config import RunConfig, load_config, save_config
from nasforge.data import DataSplits, Split, load_data
from nasforge.deploy import SubnetMetadata, write_subnet_onnx
from nasforge.errors import ConfigError
from nasforge.export import measure_latency
from nasforge.io import atomic_write_json, sha256_file
from nasforge.nas import SearchResult, TrialRecord, hypervolume_2d, pareto_front, run_search
from nasforge.progress import ProgressReporter
from nasforge.report import write_report
from nasforge.runfolder import RunFolder
from nasforge.runlock import run_lock
from nasforge.supernets import Architecture, Supernet, create_supernet
from nasforge.supernets.checkpoint import load_supernet, save_checkpoint
from nasforge.supernets.evaluate import accuracy, calibrated_subnet, resize
from nasforge.supernets.trainers import get_trainer
from nasforge.train import fit_with_progress

__all__ = ["RunSummary", "SubnetExport", "run_pipeline", "prepare_run_dir", "make_evaluator"]


@dataclass
class RunSummary:
    """What a finished run produced (also saved as ``summary.json``)."""

    out: Path
    subnets: list[dict[str, Any]]
    history: list[dict[str, Any]]
    search: SearchResult
    timings: dict[str, float] = field(default_factory=dict)
    hypervolume: float = 0.0
    hypervolume_reference: tuple[float, float] = (0.0, 0.0)


def prepare_run_dir(out: Path, cfg: RunConfig, resume: bool,
                    log: Callable[[str], None] | None = None) -> RunConfig:
    """Check the run folder (nothing is written); returns the config the run will use.

    A folder that already holds a run is never overwritten: without ``resume`` that is an error. With it, the
    saved ``config.yaml`` is the base: ``cfg`` may change ``search.trials`` and the settings of stages that have
    not started (``export`` and ``compress`` always, as they are redone; ``search`` until its study exists;
    ``data``, ``supernet``, ``train`` and ``seed`` until training has written a checkpoint). Any other
    difference is refused in one line. Applied changes are reported through ``log`` (and saved by the run).
    The CLI builds ``cfg`` from the saved file plus the options given with ``--resume`` (or from ``--config``),
    so a resume repeats no option.
    """
    saved_path = RunFolder(out).config
    if saved_path.exists() and not resume:
        raise ConfigError(f"run folder {out} already holds a run; pass --resume to continue it or choose another --out")
    if not resume:
        return cfg
    if not saved_path.exists():
        raise ConfigError(f"nothing to resume: {out} has no config.yaml; start the run without --resume")
    saved = load_config(saved_path)
    diff = _differences(saved.to_dict(), cfg.to_dict())
    open_sections = _unstarted_sections(out)
    frozen = [d for d in diff if d.split(".", 1)[0].split(" ", 1)[0] not in open_sections and
              not d.startswith("search.trials ")]
    if frozen:
        raise ConfigError(f"--resume keeps the settings of the stages that already ran ({saved_path}); these "
                          f"differ: {', '.join(frozen)}; drop the options or --config that change them (--trials "
                          "may change, so may the sections of stages not yet started: "
                          f"{', '.join(sorted(open_sections))}), or start a new run in another --out")
    if diff and log is not None:
        log(f"--resume: applying changed settings: {', '.join(diff)}")
    return cfg


#: Sections whose stage is redone on every resume, so their settings may always change.
_REDONE_SECTIONS = frozenset({"export", "compress", "schema_version"})


def _unstarted_sections(out: Path) -> set[str]:
    """Config sections whose settings a resume may still change: those of stages that have not started."""
    sections, folder = set(_REDONE_SECTIONS), RunFolder(out)
    if not folder.search_started():
        sections.add("search")
        if not folder.training_started():
            sections.update({"data", "supernet", "train", "seed"})
    return sections


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping) and k != "options":
            out.extend(_differences(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out.append(f"{prefix}{k} ({va!r} saved, {vb!r} given)")
    return out


def run_pipeline(cfg: RunConfig, out: str | Path, *, resume: bool = False,
                 reporter: ProgressReporter | None = None) -> RunSummary:
    """Run every stage of ``nasforge run`` into the folder ``out`` and return the summary.

    ``out`` is locked for the whole run (:func:`nasforge.runlock.run_lock`), before it is checked: a second
    writer fails with a ConfigError that names this run's PID and command.
    """
    out = Path(out)
    with run_lock(out, "nasforge run"):
        return _run_stages(cfg, out, resume, reporter or ProgressReporter(enabled=False))


def _run_stages(cfg: RunConfig, out: Path, resume: bool, reporter: ProgressReporter) -> RunSummary:
    """The stages of :func:`run_pipeline`, with ``out`` locked."""
    cfg = prepare_run_dir(out, cfg, resume, log=reporter.log)
    reporter.log(f"nasforge {__version__}: run folder {out}" + (f"; resuming: {_resume_point(out)}" if resume else ""))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_data(cfg.data.spec, image_size=cfg.data.image_size, seed=cfg.seed,
                     val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
                     augment=cfg.data.augment, loading=cfg.data.loading())
    timings["data_s"] = time.perf_counter() - t0
    check_supernet(cfg, data)
    # Written only once the config, data and supernet are known to be good, so a typo leaves no half-made run behind.
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, RunFolder(out).config)

    t0 = time.perf_counter()
    net, history = train_stage(cfg, data, out, resume, reporter)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = search_stage(cfg, net, data, out, reporter)
    timings["search_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    exports = export_stage(cfg, net, data, out, result, reporter)
    timings["export_s"] = time.perf_counter() - t0

    if cfg.compress.enabled:
        t0 = time.perf_counter()
        compress_stage(cfg, net, data, out, exports, reporter)
        timings["compress_s"] = time.perf_counter() - t0

    summary = RunSummary(out, [e.row for e in exports], history, result, timings)
    _mark_front(summary)
    write_report(cfg, data, summary)
    return summary


def _resume_point(out: Path) -> str:
    """Where a resumed run continues, from the files its stages left."""
    folder = RunFolder(out)
    if folder.supernet.exists():
        done = "training is finished (checkpoints/supernet.pt)"
        return done + ("; the search continues its study" if folder.study.exists() else "; the search starts")
    if folder.last_checkpoint.exists():
        return "training continues from checkpoints/last.pt (the epoch and step it saved)"
    return "nothing was trained yet; training starts"


# -- training --------------------------------------------------------------------------------------------------
def check_supernet(cfg: RunConfig, data: DataSplits) -> None:
    """Fail early (before anything is written) if the supernet cannot be built for this data."""
    net = create_supernet(cfg.supernet.name, **_supernet_options(cfg, data))
    largest = net.resolution(net.space.largest())
    if largest > data.image_size:
        raise ConfigError(
            f"supernet {cfg.supernet.name!r} wants {largest}px inputs but data.image_size is {data.image_size}; "
            "raise data.image_size or set supernet.options.resolutions"
        )


def _supernet_options(cfg: RunConfig, data: DataSplits) -> dict[str, Any]:
    options = {"num_classes": data.num_classes, "in_channels": data.in_channels}
    options.update(cfg.supernet.options)
    return options


def train_stage(cfg: RunConfig, data: DataSplits, out: Path, resume: bool,
                reporter: ProgressReporter) -> tuple[Supernet, list[dict[str, Any]]]:
    """Train the supernet (or load the finished one on resume)."""
    folder = RunFolder(out)
    final = folder.supernet
    if resume and final.exists():
        net, state = load_supernet(final)
        reporter.log(f"training already finished; loaded {final}")
        return net, list(state.get("history", []))
    options = _supernet_options(cfg, data)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        net = create_supernet(cfg.supernet.name, **options)
    tcfg = cfg.train.train_config(cfg.seed)
    trainer = get_trainer(cfg.train.trainer, tcfg)
    history = fit_with_progress(trainer, net, data, reporter, supernet_name=cfg.supernet.name,
                                supernet_options=options, checkpoint_dir=folder.checkpoints, resume=resume)
    save_checkpoint(final, net, cfg.supernet.name, options, history=history, trainer=trainer.name)
    atomic_write_json(out / "train_history.json", history)
    return net, history


# -- search ----------------------------------------------------------------------------------------------------
def make_evaluator(cfg: RunConfig, net: Supernet, data: DataSplits, scratch: Path) -> Callable[[Architecture], dict[str, float]]:
    """Architecture -> metrics: validation accuracy after BN recalibration, MACs, params and (if an objective
    or constraint needs it) latency of the exported ONNX model on ``export.backend`` with a short protocol, and
    the INT8 file's ``int8_accuracy`` / ``int8_latency_ms`` (:func:`nasforge.search.make_subnet_evaluator`).
    """
    from nasforge.search import make_subnet_evaluator

    # what is measured and how comes from the search section (SearchSection.evaluator_options, as in `nasforge
    # search`); latency is timed like the export stage and the search quantizes like the compress stage does
    # (compress.method / calibration / policy; qat is static in the loop)
    int8_config = cfg.compress.quant_config(search=True)
    return make_subnet_evaluator(net, data, **cfg.search.evaluator_options(), scratch=scratch,
                                 backend=cfg.export.backend, threads=cfg.export.threads, int8_config=int8_config)


def search_stage(cfg: RunConfig, net: Supernet, data: DataSplits, out: Path,
                 reporter: ProgressReporter) -> SearchResult:
    """Run (or resume) the Optuna study over the trained supernet."""
    scratch = out / ".scratch"
    scratch.mkdir(exist_ok=True)
    evaluate = make_evaluator(cfg, net, data, scratch)
    with reporter.task("search", total=cfg.search.trials) as task:
        def progress(done: int, total: int, rec: TrialRecord) -> None:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in rec.metrics.items() if k in cfg.search.objectives)
            task.update(done, f"trial {rec.number} {rec.state} {shown}")

        result = run_search(net.space, evaluate, **cfg.search.search_options(), storage=cfg.search.storage_in(out),
                            seed=cfg.seed, progress=progress, initial=(net.space.largest(), net.space.smallest()))
    shutil.rmtree(scratch, ignore_errors=True)
    result.to_csv(RunFolder(out).trials)
    result.to_json(out / "search.json")
    if not result.front:
        raise ConfigError("the search found no feasible architecture; relax search.constraints or add trials")
    return result


# -- export and measurement ------------------------------------------------------------------------------------
def _pick(front: list[TrialRecord], k: int) -> list[TrialRecord]:
    if len(front) <= k:
        return list(front)
    idx = sorted({round(i * (len(front) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return [front[i] for i in idx]


@dataclass
class SubnetExport:
    """One exported subnet, kept in memory for the compress stage: its ``metrics.json`` row, architecture, the
    BN-recalibrated model that was exported (extracted and recalibrated once per run) and the file's metadata."""

    row: dict[str, Any]
    arch: Architecture
    model: torch.nn.Module
    metadata: SubnetMetadata


def export_stage(cfg: RunConfig, net: Supernet, data: DataSplits, out: Path, result: SearchResult,
                 reporter: ProgressReporter) -> list[SubnetExport]:
    """Export the chosen front subnets to ONNX (parity-checked), measure test accuracy and latency."""
    chosen = _pick(result.front, cfg.export.max_subnets)
    chosen.sort(key=lambda r: net.macs(r.arch))
    folder = RunFolder(out)
    ckpt_hash = sha256_file(folder.supernet)
    exports: list[SubnetExport] = []
    with reporter.task("export", total=len(chosen)) as task:
        for k, rec in enumerate(chosen):
            exports.append(_export_one(cfg, net, data, folder, rec, k, ckpt_hash))
            row = exports[-1].row
            task.advance(1, f"subnet {k}: {row['latency_ms']['median_ms']:.3f} ms, test acc {row['test_acc']:.3f}")
    return exports


def _export_subnet(cfg: RunConfig, data: DataSplits, model: torch.nn.Module, r: int, path: Path,
                   metadata: SubnetMetadata) -> Any:
    """Export with the run's ONNX settings, parity-checked on real validation images."""
    real = [resize(data.val.head(1), r), resize(data.val.head(2)[1:2], r)]
    if cfg.export.dynamic_batch:
        real.append(resize(data.val.head(16), r))
    return write_subnet_onnx(model, path, real[0], metadata, check_inputs=real, opset=cfg.export.opset,
                             dynamic_batch=cfg.export.dynamic_batch, atol=cfg.export.atol,
                             exporter=cfg.export.exporter)


def _export_one(cfg: RunConfig, net: Supernet, data: DataSplits, run: RunFolder, rec: TrialRecord, k: int,
                ckpt_hash: str) -> SubnetExport:
    folder = run.subnet(k)
    arch = net.space.canonical(rec.arch)
    r = net.resolution(arch)
    sub = calibrated_subnet(net, arch, data.train.head(cfg.search.calib_images), cfg.search.calib_images)
    metadata = SubnetMetadata(dataset=cfg.data.spec, mean=data.mean, std=data.std, resolution=r, arch=arch,
                              supernet=cfg.supernet.name, checkpoint=run.supernet, checkpoint_sha256=ckpt_hash)
    exported = _export_subnet(cfg, data, sub, r, folder / "model.onnx", metadata)
    test_acc = _onnx_accuracy(folder / "model.onnx", resize(data.test.x, r), data.test.y)
    with torch.no_grad():
        test_acc_torch = float((sub(resize(data.test.x, r)).argmax(1) == data.test.y).float().mean())
    lat = measure_latency(folder / "model.onnx", backend=cfg.export.backend, runs=cfg.export.runs,
                          warmup=cfg.export.warmup, threads=cfg.export.threads, max_cv=0.1, max_remeasure=3)
    row = {
        "subnet": k, "trial": rec.number, "arch": arch.to_dict(), "resolution": r,
        "val_acc": float(rec.metrics["accuracy"]), "test_acc": test_acc, "test_acc_torch": test_acc_torch,
        "macs": net.macs(arch), "params": net.params(arch), "max_abs_diff": exported.max_abs_diff,
        "parity_inputs": exported.parity_inputs, "latency_ms": lat.to_dict(), "onnx": "model.onnx",
    }
    atomic_write_json(folder / "arch.json", arch.to_dict())
    atomic_write_json(folder / "metrics.json", row)
    return SubnetExport(row, arch, sub, metadata)


# -- compression: pruning and INT8 quantization of the exported subnets ----------------------------------------
def compress_stage(cfg: RunConfig, net: Supernet, data: DataSplits, out: Path, subnets: list[SubnetExport],
                   reporter: ProgressReporter) -> None:
    """Prune (``compress.prune``) and/or quantize (``compress.quantize``) every exported subnet into
    ``subnets/<k>/compressed/`` and add ``row["compressed"]`` to its row and ``metrics.json`` (rewritten atomically).

    Each subnet's exported, BN-recalibrated model is compressed (not extracted again; it is changed in place),
    under the global torch seed ``cfg.seed + k`` for subnet ``k`` (fine-tuning's dropout), so the results do not
    depend on what drew random numbers before. Redone in full on resume, like the export.
    """
    folder = RunFolder(out)
    with reporter.task("compress", total=len(subnets)) as task:
        for exported in subnets:
            row = exported.row
            subnet = folder.subnet(row["subnet"])
            with torch.random.fork_rng(devices=[]):  # fine-tuning's dropout: seeded per subnet, reproducible
                torch.manual_seed(cfg.seed + int(row["subnet"]))
                row["compressed"] = _compress_one(cfg, net, data, subnet, exported)
            atomic_write_json(subnet / "metrics.json", row)
            task.advance(1, f"subnet {row['subnet']}: " + _compress_status(row["compressed"]))


def _compress_status(c: dict[str, Any]) -> str:
    parts = []
    if "pruned" in c:
        p = c["pruned"]
        parts.append(f"pruned {p['macs_reduction']:.2f}x fewer MACs, test acc {p['test_acc']:.3f}")
    if "int8" in c:
        q = c["int8"]
        speed = f", {q['speedup']:.2f}x faster" if q.get("speedup") else ""
        kept = {"fp32": " (FP32 kept: INT8 did not pay)", "mixed": " (some groups in float)"}.get(q.get("choice"), "")
        parts.append(f"INT8 test acc {q['test_acc']:.3f}{speed}{kept}")
    return "; ".join(parts)


def _device(cfg: RunConfig) -> Any:
    from nasforge.devices import Device

    return Device(name=cfg.export.backend, backend=cfg.export.backend, threads=cfg.export.threads,
                  runs=cfg.export.runs, warmup=cfg.export.warmup)


def _compress_one(cfg: RunConfig, net: Supernet, data: DataSplits, folder: Path,
                  exported: SubnetExport) -> dict[str, Any]:
    """Prune and/or quantize one exported subnet as ``cfg.compress`` asks; return its ``pruned``/``int8`` rows."""
    c, row, model = cfg.compress, exported.row, exported.model
    r = net.resolution(exported.arch)
    (folder / "compressed").mkdir(parents=True, exist_ok=True)
    fp32_ms = float(row["latency_ms"]["median_ms"])
    test_x = resize(data.test.x, r)
    result: dict[str, Any] = {}
    source = folder / "model.onnx"
    if c.prune is not None:
        model, result["pruned"] = _prune_subnet(cfg, net, data, folder, exported, test_x)
        source = folder / "compressed" / "pruned.onnx"
        if not c.quantize:  # otherwise quantize() times the pruned file next to its INT8 version
            ms = measure_latency(source, backend=cfg.export.backend, runs=cfg.export.runs, warmup=cfg.export.warmup,
                                 threads=cfg.export.threads).median_ms
            result["pruned"].update(latency_p50_ms=ms, speedup=fp32_ms / ms)
    if c.quantize:
        result["int8"], fp32_source_ms = _quantize_subnet(cfg, data, folder, source, model, test_x, fp32_ms)
        if "pruned" in result and fp32_source_ms:
            result["pruned"].update(latency_p50_ms=fp32_source_ms, speedup=fp32_ms / fp32_source_ms)
    return result


def _prune_subnet(cfg: RunConfig, net: Supernet, data: DataSplits, folder: Path, exported: SubnetExport,
                  test_x: torch.Tensor) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Prune (and fine-tune) one subnet; save ``compressed/pruned.pt`` and ``.onnx``; return it and its row."""
    from nasforge.export import device_latency
    from nasforge.prune import (
        get_criterion,
        make_loss_fn,
        parse_target,
        prune,
        save_pruned,
        train_classifier,
    )

    c, comp, arch = cfg.compress, folder / "compressed", exported.arch
    r = net.resolution(arch)
    train = Split(resize(data.train.x, r), data.train.y)
    shape = tuple(net.input_shape(arch))
    latency = (device_latency(_device(cfg), torch.zeros(1, *shape))
               if parse_target(c.prune).kind == "latency_ms" else None)
    loss_fn = make_loss_fn(train, seed=cfg.seed) if get_criterion(c.criterion).needs_grad else None
    model, rep = prune(exported.model, resize(data.val.head(2), r), target=c.prune, criterion=c.criterion,
                       round_to=c.round_to, latency=latency, loss_fn=loss_fn)
    if c.finetune_epochs > 0:
        train_classifier(model, train, epochs=c.finetune_epochs, lr=0.01, seed=cfg.seed)
    model.eval()
    base = {"kind": "subnet", "supernet": cfg.supernet.name, "options": _supernet_options(cfg, data),
            "arch": arch.to_dict()}
    save_pruned(comp / "pruned.pt", model, base=base, input_shape=list(shape), history=rep.history,
                extra={"data_spec": cfg.data.spec})
    metadata = replace(exported.metadata, base_model=base, pruning_target=c.prune, criterion=c.criterion)
    written = _export_subnet(cfg, data, model, r, comp / "pruned.onnx", metadata)
    return model, {
        "onnx": "compressed/pruned.onnx", "model": "compressed/pruned.pt", "target": c.prune,
        "criterion": c.criterion, "finetune_epochs": c.finetune_epochs, "macs_before": rep.macs_before,
        "macs_after": rep.macs_after, "macs_reduction": rep.macs_reduction, "params_before": rep.params_before,
        "params_after": rep.params_after, "val_acc": accuracy(model, data.val.x, data.val.y, r),
        "test_acc": _onnx_accuracy(comp / "pruned.onnx", test_x, data.test.y), "max_abs_diff": written.max_abs_diff,
    }


def _quantize_subnet(cfg: RunConfig, data: DataSplits, folder: Path, source: Path, model: torch.nn.Module,
                     test_x: torch.Tensor, fp32_ms: float) -> tuple[dict[str, Any], float | None]:
    """Quantize ``source`` to ``compressed/model.int8.onnx``; return its row and the source's measured latency."""
    from nasforge.quantize import quantize

    c = cfg.compress
    int8 = folder / "compressed" / "model.int8.onnx"
    rep_q = quantize(source, int8, data=data, config=c.quant_config(), device=_device(cfg), batches=c.batch_sizes,
                     torch_model=model if c.method == "qat" else None, qat_options={"seed": cfg.seed})
    check, lat = rep_q.check, rep_q.latency.get(str(c.batch_sizes[0]), {})
    selection = rep_q.selection or {}
    return {
        "onnx": "compressed/model.int8.onnx", "source": source.relative_to(folder).as_posix(),
        "method": "qat" if rep_q.qat is not None else rep_q.method,
        "reduce_range": rep_q.range_decision["reduce_range"], "fp32_val_acc": check["fp32_accuracy"],
        "val_acc": check["int8_accuracy"], "test_acc": _onnx_accuracy(int8, test_x, data.test.y),
        "rel_l2": check["rel_l2"], "simulated_rel_l2": check["simulated_rel_l2"],
        "saturation": check["saturation"], "latency_p50_ms": lat.get("int8_ms"),
        "speedup": fp32_ms / lat["int8_ms"] if lat.get("int8_ms") else None,
        "speedup_vs_source": lat.get("speedup"),
        "speedup_by_batch": {b: row["speedup"] for b, row in rep_q.latency.items()},
        "choice": rep_q.choice, "float_groups": sorted(selection.get("float_groups", {})),
        "report": "compressed/model.int8.report.md",
    }, lat.get("fp32_ms")


def _onnx_accuracy(path: Path, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of the exported model in onnxruntime (what actually ships)."""
    from nasforge.quantize import run_onnx

    return float((run_onnx(path, x.numpy().astype(np.float32), batch=64).argmax(1) == y.numpy()).mean())


def _mark_front(summary: RunSummary) -> None:
    """Flag the subnets that are Pareto-optimal in (validation accuracy, measured median latency)."""
    if not summary.subnets:
        return
    pts = np.array([[s["val_acc"], s["latency_ms"]["median_ms"]] for s in summary.subnets], dtype=float)
    front = set(pareto_front(pts, ["maximize", "minimize"]).tolist())
    for i, s in enumerate(summary.subnets):
        s["on_front"] = i in front
    ref = (0.0, float(pts[:, 1].max()) * 1.1)
    summary.hypervolume = hypervolume_2d(pts[sorted(front)], ["maximize", "minimize"], ref)
    summary.hypervolume_reference = ref
