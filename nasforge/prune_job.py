"""``nasforge prune``: resolve a source model, prune it to a target, finetune, measure, save, export.

Sources: ``zoo:NAME[?key=value&...]`` (a reference definition; ``--weights`` or ``--train-epochs``), a supernet
checkpoint or run folder (with ``--arch``), a run's ``subnets/K`` folder, a ``model.pt`` that ``nasforge
prune`` wrote (pruned further), or the user's own model built by a Python factory (``--model FILE.py:FUNCTION``,
:mod:`nasforge.user_model`; a ``model.pt`` pruned from one needs the same ``--model`` again).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nasforge.data import DataSplits, load_data
from nasforge.errors import CheckpointError, ConfigError
from nasforge.io import atomic_write_json, atomic_write_text, load_torch_file
from nasforge.options import parse_key_values
from nasforge.prune_report import plot_widths, prune_markdown
from nasforge.runlock import run_lock

if TYPE_CHECKING:
    from nasforge.deploy import SubnetMetadata

__all__ = ["PruneSource", "resolve_prune_source", "PruneJob", "run_prune_job"]


@dataclass
class PruneSource:
    """A model ready to prune: the module, how to rebuild its unpruned base, history so far, its data."""

    model: nn.Module
    base: dict[str, Any]
    history: list[list[Any]]
    data: DataSplits
    trained: bool
    description: str
    checkpoint: Path | None = None


def _parse_zoo(text: str) -> tuple[str, dict[str, Any]]:
    name, _, query = text[len("zoo:"):].partition("?")
    return name, parse_key_values(filter(None, query.split("&")), lambda part: (
        f"zoo option {part!r} in {text!r} must be key=value, e.g. zoo:mobilenetv2?width_mult=0.5"))


def _load_weights(model: nn.Module, path: str | Path) -> None:
    from nasforge.io import TORCH_LOAD_ERRORS

    if not Path(path).is_file():
        raise CheckpointError(f"--weights {path} does not exist")
    try:
        state = load_torch_file(Path(path))
    except TORCH_LOAD_ERRORS as exc:
        raise CheckpointError(f"--weights {path} is corrupt or not a state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"--weights {path} is not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        raise CheckpointError(f"--weights {path} does not fit the model: {lines[min(1, len(lines) - 1)][:240]}"
                              ) from None  # line 0 only says "Error(s) in loading state_dict"


def _zoo_source(source: str, data_spec: str | None, weights: str | Path | None, seed: int) -> PruneSource:
    from nasforge.prune import create_model

    if data_spec is None:
        raise ConfigError(f"{source} needs --data SPEC (the task to measure accuracy and finetune on)")
    name, kwargs = _parse_zoo(source)
    data = load_data(data_spec, seed=seed)
    kwargs = {"num_classes": data.num_classes, "in_channels": data.in_channels, **kwargs}
    model = create_model(name, **kwargs)
    if weights is not None:
        _load_weights(model, weights)
    return PruneSource(model.eval(), {"kind": "zoo", "name": name, "kwargs": kwargs}, [], data,
                       weights is not None, f"zoo model {name}")


def _subnet_source(source: str, arch: str | None, data_spec: str | None, seed: int) -> PruneSource:
    from nasforge.archspec import read_arch_spec
    from nasforge.deploy import resolve_export_source
    from nasforge.supernets.checkpoint import load_supernet
    from nasforge.supernets.evaluate import calibrated_subnet

    checkpoint, recorded, size, arch_file = resolve_export_source(source)
    net, state = load_supernet(checkpoint)
    text = arch or (str(arch_file) if arch_file is not None else "largest")
    chosen = read_arch_spec(text, net)
    spec = data_spec or recorded
    if spec is None:
        raise ConfigError(f"{source} records no dataset: pass --data SPEC")
    data = load_data(spec, image_size=net.resolution(chosen), seed=seed)
    sub = calibrated_subnet(net, chosen, data.train.x, 2000)
    base = {"kind": "subnet", "supernet": state["supernet"], "options": state.get("supernet_options", {}),
            "arch": chosen.to_dict()}
    return PruneSource(sub, base, [], data, True, f"subnet {chosen.to_json()} of {checkpoint}", checkpoint)


def _factory_source(text: str, data_spec: str | None, weights: str | Path | None, seed: int) -> PruneSource:
    from nasforge.user_model import factory_model, parse_factory_spec

    spec = parse_factory_spec(text)  # a malformed spec or a .pt2 fails before any data loads
    if data_spec is None:
        raise ConfigError(f"--model {text} needs --data SPEC (the task to measure accuracy and finetune on)")
    data = load_data(data_spec, seed=seed)
    model, base = factory_model(spec, data.num_classes, data.in_channels, data.val.head(2))
    if weights is not None:
        _load_weights(model, weights)
    return PruneSource(model, base, [], data, weights is not None, f"your model {spec.name}")


def _pruned_source(path: Path, state: dict[str, Any], data_spec: str | None, model_spec: str | None,
                   seed: int) -> PruneSource:
    """A ``model.pt`` that nasforge prune wrote (one pruned from a factory model needs its ``--model`` again)."""
    from nasforge.prune import load_pruned
    from nasforge.user_model import rebuild_factory_base

    fresh, base = rebuild_factory_base(dict(state["base"]), model_spec, path)
    model, state = load_pruned(path, model=fresh, state=state)
    spec_text = data_spec or state.get("data_spec")
    if spec_text is None:
        raise ConfigError(f"{path} records no dataset: pass --data SPEC")
    splits = load_data(spec_text, image_size=int(state["input_shape"][-1]), seed=seed)
    return PruneSource(model, base, list(state["history"]), splits, True, f"pruned model {path}")


def resolve_prune_source(source: str | None, *, arch: str | None = None, data: str | None = None,
                         weights: str | Path | None = None, seed: int = 0, model: str | None = None) -> PruneSource:
    """Turn a CLI SOURCE and/or ``--model`` into a :class:`PruneSource` (see the module docstring for the accepted
    forms). ``model`` alone: the user's factory; with a ``model.pt`` pruned from it: that model, pruned further."""
    from nasforge.user_model import refuse_exported_program

    if source is None:
        if model is None:
            raise ConfigError("nothing to prune: give SOURCE (zoo:NAME, a checkpoint, run folder, RUN/subnets/K or "
                              "model.pt) or --model FILE.py:FUNCTION")
        return _factory_source(model, data, weights, seed)
    refuse_exported_program(source)
    if source.startswith("zoo:") and model is None:
        return _zoo_source(source, data, weights, seed)
    if weights is not None:
        raise ConfigError("--weights goes with a zoo:NAME source or --model (a model.pt carries its weights)")
    path = Path(source)
    if path.is_file() and path.suffix == ".pt":
        from nasforge.prune import read_pruned

        try:
            state = read_pruned(path)
        except CheckpointError:
            state = None  # not a pruned model: a supernet checkpoint, handled below
        if state is not None:
            return _pruned_source(path, state, data, model, seed)
    if model is not None:
        raise ConfigError(f"--model goes alone, or with a model.pt pruned from that model; not with SOURCE {source!r}")
    if not path.exists():
        raise ConfigError(f"SOURCE {source!r} is neither zoo:NAME nor an existing checkpoint, run folder or model.pt")
    return _subnet_source(source, arch, data, seed)


@dataclass
class PruneJob:
    """Settings of one ``nasforge prune`` run (saved as ``prune.json`` next to its outputs)."""

    source: str | None
    out: Path
    target: str = "macs=0.5"
    criterion: str = "l2"
    arch: str | None = None
    data: str | None = None
    weights: str | None = None
    model: str | None = None
    train_epochs: int = 0
    finetune_epochs: int = 5
    lr: float = 0.01
    batch_size: int = 64
    steps: int = 1
    global_pruning: bool = True
    round_to: int | None = 4
    allocation: str = "ratio"
    layer_table: str | None = None
    ignore: list[str] = field(default_factory=list)
    metanet: str | None = None
    device: str | None = "cpu"
    export: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def _finetuner(job: PruneJob, data: DataSplits, log: Callable[[str], None]) -> Callable[[nn.Module], None] | None:
    from nasforge.prune import train_classifier

    if job.finetune_epochs <= 0:
        return None

    def finetune(model: nn.Module) -> None:
        train_classifier(model, data.train, epochs=job.finetune_epochs, lr=job.lr, batch_size=job.batch_size,
                         seed=job.seed, on_epoch=lambda e, loss: log(f"  finetune epoch {e + 1}/"
                                                                     f"{job.finetune_epochs}: loss {loss:.4f}"))

    return finetune


def _device_latency(device: str | None, example: torch.Tensor) -> Callable[[nn.Module], float] | None:
    """The ``f(model) -> ms`` of ``device`` for :func:`~nasforge.prune.prune` (None: no latency measured)."""
    if device is None:
        return None
    from nasforge.export import device_latency

    return device_latency(device, example)


def _layer_table(job: PruneJob, log: Callable[[str], None]) -> Any:
    """The device's :class:`~nasforge.prune.LayerLatencyTable` for ``--allocate latency`` (None for ``ratio``),
    kept in ``--layer-table`` (default ``OUT/layer_latency.json``) so a rerun measures nothing twice."""
    if job.allocation == "ratio":
        return None
    if job.allocation != "latency":
        raise ConfigError(f"--allocate {job.allocation!r}: use 'ratio' (one global pruning ratio) or 'latency'")
    if job.device is None:
        raise ConfigError("--allocate latency measures layers on --device: pass a device (e.g. --device cpu), not "
                          "'none'")
    from nasforge.export import layer_latency
    from nasforge.prune import LayerLatencyTable

    path = Path(job.layer_table) if job.layer_table else Path(job.out) / "layer_latency.json"
    table = LayerLatencyTable(layer_latency(job.device), path=path)
    log(f"latency-aware allocation on {job.device}: layer table {path} ({len(table.entries)} entries known)")
    return table


def run_prune_job(job: PruneJob, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``job``: prune, finetune, evaluate, measure, then write ``model.pt``, ``model.onnx``, ``report.json``,
    ``report.md`` and ``widths.png`` into ``job.out`` (each atomically). Returns the report as a dict.

    ``job.out`` is locked for the whole job (:func:`nasforge.runlock.run_lock`): a second ``nasforge prune`` into
    the same folder fails with a ConfigError that names this one.
    """
    from nasforge.prune import get_criterion, parse_target

    parse_target(job.target)  # fail before any loading or training
    if job.allocation != "ratio":
        _layer_table(job, lambda s: None)
    get_criterion(job.criterion)
    with run_lock(job.out, "nasforge prune"):
        return _run_locked(job, log)


def _run_locked(job: PruneJob, log: Callable[[str], None]) -> dict[str, Any]:
    from nasforge.prune import evaluate_accuracy, get_criterion, make_loss_fn, prune, train_classifier

    src = resolve_prune_source(job.source, arch=job.arch, data=job.data, weights=job.weights, seed=job.seed,
                               model=job.model)
    data = src.data
    if job.train_epochs > 0:
        log(f"training {src.description} from its current weights for {job.train_epochs} epoch(s)")
        train_classifier(src.model, data.train, epochs=job.train_epochs, lr=0.05, batch_size=job.batch_size,
                         seed=job.seed)
    elif not src.trained:
        raise ConfigError(f"{job.source or job.model} has no trained weights: pass --weights FILE or --train-epochs N")
    example = data.val.head(2)
    acc: dict[str, float] = {"before": evaluate_accuracy(src.model, data.val)}
    log(f"{src.description}: validation accuracy {acc['before']:.4f}")
    loss_fn = make_loss_fn(data.train, seed=job.seed) if get_criterion(job.criterion).needs_grad else None
    pruned_acc: dict[str, float] = {}

    def on_step(k: int, step: Any, model: nn.Module) -> None:
        pruned_acc.setdefault("pruned", evaluate_accuracy(model, data.val))
        how = f"channel ratio {step.ratio:.3f}" if job.allocation == "ratio" else "latency-aware allocation"
        log(f"step {k}/{job.steps}: {how}, {step.reached:.4g} <= goal {step.goal:.4g}")

    finetune = _finetuner(job, data, log)
    table = _layer_table(job, log)
    model, report = prune(src.model, example, target=job.target, criterion=job.criterion,
                          global_pruning=job.global_pruning, ignore=job.ignore, steps=job.steps,
                          finetune=finetune, loss_fn=loss_fn, metanet=job.metanet,
                          latency=_device_latency(job.device, example), on_step=on_step,
                          round_to=job.round_to, layer_latency=table)
    if table is not None:
        table.save()
    acc.update(pruned_acc)
    acc["finetuned" if finetune is not None else "after"] = evaluate_accuracy(model, data.val)
    acc["test_before"] = evaluate_accuracy(src.model, data.test)
    acc["test_after"] = evaluate_accuracy(model, data.test)
    report.accuracy.update(acc)
    report.history = src.history + report.history
    return _write_outputs(job, src, model, report, data)


def _write_outputs(job: PruneJob, src: PruneSource, model: nn.Module, report: Any, data: DataSplits
                   ) -> dict[str, Any]:
    from nasforge.prune import save_pruned

    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = list(data.val.x.shape[1:])
    save_pruned(out / "model.pt", model, base=src.base, input_shape=shape, history=report.history,
                extra={"data_spec": data.spec, "report": _plain(report.to_dict())})
    result = report.to_dict()
    if job.export:
        from nasforge.deploy import write_subnet_onnx

        checks = [data.val.x[i : i + 1] for i in range(4)]
        exported = write_subnet_onnx(model, out / "model.onnx", checks[0], _onnx_metadata(job, src, data),
                                     check_inputs=checks[1:])
        result["onnx"] = {"path": str(exported.path), "max_abs_diff": exported.max_abs_diff}
    result["job"] = job.to_dict()
    atomic_write_json(out / "report.json", _plain(result))
    atomic_write_text(out / "report.md", prune_markdown(result))
    plot_widths(report.widths, out / "widths.png")
    return result


def _onnx_metadata(job: PruneJob, src: PruneSource, data: DataSplits) -> SubnetMetadata:
    """The :class:`~nasforge.deploy.SubnetMetadata` of the pruned model's ONNX file (the base subnet's architecture,
    supernet and checkpoint where the model came from one)."""
    from nasforge.deploy import SubnetMetadata
    from nasforge.io import sha256_file
    from nasforge.supernets import Architecture

    subnet = src.base.get("kind") == "subnet"
    shape = data.val.x.shape
    return SubnetMetadata(
        dataset=data.spec, mean=data.mean, std=data.std, resolution=int(shape[-1]) if len(shape) == 4 else None,
        arch=Architecture.from_dict(src.base["arch"]) if subnet else None,
        supernet=src.base.get("supernet") if subnet else None, checkpoint=src.checkpoint,
        checkpoint_sha256=sha256_file(src.checkpoint) if src.checkpoint is not None else None,
        source=job.source or job.model, base_model=src.base, pruning_target=job.target, criterion=job.criterion)


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


@dataclass
class MetaTrainJob:
    """Settings of ``nasforge prune meta-train``.

    ``pre_prune`` / ``pre_prune_epochs``: the family is pruned to ``pre_prune`` times fewer MACs after training and
    finetuned ``pre_prune_epochs`` epochs (None: 40% of ``train_epochs``), as the reference prepares its data
    models (1.32x, then 80 of 200 epochs); ``pre_prune=1`` keeps them plain.
    """

    model: str
    data: str
    out: Path
    networks: int = 4
    train_epochs: int = 10
    meta_steps: int = 200
    target: str = "macs=0.5"
    workdir: Path | None = None
    seed: int = 0
    lr: float = 0.05
    batch_size: int = 64
    pre_prune: float = 1.32
    pre_prune_epochs: int | None = None


def _pre_prune(net: nn.Module, base: dict[str, Any], data: DataSplits, factor: float, epochs: int, path: Path,
               lr: float, batch_size: int, seed: int) -> nn.Module:
    """``net`` pruned to ``factor`` times fewer MACs (group L2 in 8 small steps) and finetuned ``epochs`` epochs at
    a fifth of the training ``lr``; cached at ``path`` as a pruned-model file (base, history, tensors)."""
    from nasforge.prune import load_pruned, prune, save_pruned, train_classifier

    if path.is_file():
        return load_pruned(path)[0]
    example = data.train.x[:2]
    pruned, report = prune(net, example, target=f"macs={factor:g}x", criterion="l2", steps=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    train_classifier(pruned, data.train, epochs=epochs, lr=lr / 5, batch_size=batch_size, seed=seed)
    save_pruned(path, pruned, base=base, input_shape=tuple(example.shape[1:]), history=report.history,
                extra={"pre_prune": factor, "finetune_epochs": epochs})
    return pruned.eval()


def trained_family(model: str, data: DataSplits, count: int, epochs: int, workdir: Path, seed: int,
                   lr: float = 0.05, batch_size: int = 64, log: Callable[[str], None] = print, *,
                   pre_prune: float = 1.0, pre_prune_epochs: int = 0) -> list[nn.Module]:
    """``count`` independently initialised zoo models ``model`` trained on ``data``, cached in ``workdir`` (a rerun
    or a resumed job reuses the finished ones).

    With ``pre_prune > 1`` each trained network is then pruned to ``pre_prune`` times fewer MACs and finetuned
    ``pre_prune_epochs`` epochs (the reference's family preparation); those are cached under their own key, a
    subfolder ``pp1.32x-f4/`` of ``workdir`` beside the plain networks they start from.
    """
    from nasforge.io import atomic_torch_save
    from nasforge.prune import create_model, evaluate_accuracy, train_classifier

    if not pre_prune >= 1.0 or pre_prune_epochs < 0:
        raise ConfigError(f"pre_prune={pre_prune} must be >= 1 (1 = plain networks) and pre_prune_epochs="
                          f"{pre_prune_epochs} >= 0")
    name, kwargs = _parse_zoo("zoo:" + model)
    kwargs = {"num_classes": data.num_classes, "in_channels": data.in_channels, **kwargs}
    workdir.mkdir(parents=True, exist_ok=True)
    nets = []
    for i in range(count):
        torch.manual_seed(seed * 1000 + i)
        net = create_model(name, **kwargs)
        path = workdir / f"{name}-{data.name}-seed{seed}-{i}-e{epochs}.pt"
        if path.is_file():
            _load_weights(net, path)
        else:
            train_classifier(net, data.train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed * 1000 + i)
            atomic_torch_save(path, net.state_dict())
            log(f"trained network {i + 1}/{count}: validation accuracy {evaluate_accuracy(net, data.val):.4f}")
        if pre_prune > 1.0:
            pp_path = workdir / f"pp{pre_prune:g}x-f{pre_prune_epochs}" / path.name
            fresh = not pp_path.is_file()
            net = _pre_prune(net.eval(), {"kind": "zoo", "name": name, "kwargs": kwargs}, data, pre_prune,
                             pre_prune_epochs, pp_path, lr, batch_size, seed * 1000 + i)
            if fresh:
                log(f"pre-pruned network {i + 1}/{count} ({pre_prune:g}x fewer MACs, {pre_prune_epochs} finetune "
                    f"epochs): validation accuracy {evaluate_accuracy(net, data.val):.4f}")
        nets.append(net.eval())
    return nets


def run_meta_train_job(job: MetaTrainJob, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the family, meta-train the metanetwork, choose its checkpoint on the validation network, save it."""
    from nasforge.prune import MetaTrainConfig, meta_train, parse_target, save_metanet

    parse_target(job.target)
    if job.networks < 1 or job.meta_steps < 1:
        raise ConfigError("--networks and --meta-steps must be >= 1")
    out = Path(job.out)
    data = load_data(job.data, seed=job.seed)
    workdir = job.workdir or out.parent / f"{out.stem}-networks"
    pp_epochs = job.pre_prune_epochs if job.pre_prune_epochs is not None else max(1, round(0.4 * job.train_epochs))
    nets = trained_family(job.model, data, job.networks + 1, job.train_epochs, workdir, job.seed, job.lr,
                          job.batch_size, log, pre_prune=job.pre_prune, pre_prune_epochs=pp_epochs)
    cfg = MetaTrainConfig(steps=job.meta_steps, target=job.target, seed=job.seed, round_to=4)

    def on_step(step: int, rec: dict[str, float]) -> None:
        if "val_acc" in rec or step % 20 == 0:
            extra = (f", validation accuracy after pruning {rec['val_acc_pruned']:.4f}, after a short finetune "
                     f"{rec['val_acc']:.4f}") if "val_acc" in rec else ""
            log(f"meta step {step}/{job.meta_steps}: task loss {rec['task_loss']:.4f}, sparsity "
                f"{rec['sparsity']:.4f}{extra}")

    result = meta_train(nets[:-1], nets[-1], data.train, data.val, cfg, on_step=on_step)
    summary = {"family": job.model, "data": data.spec, "target": job.target, "pre_prune": job.pre_prune,
               "best_step": result.best_step,
               "best_val_acc": result.best_val_acc, "baseline_val_acc": result.baseline_val_acc,
               "history": result.history}
    save_metanet(out, result.metanet, **summary)
    return summary
