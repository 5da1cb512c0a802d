"""Train a supernet on its own (``nasforge train``): any registered space and trainer, one process or many.

The run folder (:class:`nasforge.runfolder.RunFolder`, the layout every command shares) holds ``train.json``
(what was asked), ``checkpoints/last.pt`` (every epoch), ``checkpoints/phase-<i>-<name>.pt`` (every phase of a
multi-phase trainer), the final ``checkpoints/supernet.pt``, ``train_history.json`` and ``training.png``; a folder
of an older version with ``supernet.pt`` at the top still resumes and loads. ``resume=True`` continues inside the phase where a run stopped.
Under ``torchrun`` every process calls :func:`train_supernet`; rank 0 writes files and reports progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasforge.data import AugmentRecipe, DataSplits, FileSplit, LoaderOptions, load_data
from nasforge.distributed import DistContext, init_distributed
from nasforge.errors import ConfigError
from nasforge.io import atomic_write_json
from nasforge.progress import ProgressReporter
from nasforge.runfolder import RunFolder
from nasforge.runlock import run_lock
from nasforge.supernets import Supernet, create_supernet, get_supernet_entry
from nasforge.supernets.checkpoint import load_supernet, save_checkpoint
from nasforge.supernets.trainers import TrainConfig, Trainer, get_trainer, list_trainers
from nasforge.supernets.trainers.resume import RESUMABLE_CHANGES

__all__ = ["TrainResult", "train_supernet", "fit_with_progress", "make_train_config", "TRAINER_DEFAULTS"]

#: Hyper-parameter defaults per trainer where the reference differs from nasforge's generic defaults.
TRAINER_DEFAULTS: dict[str, dict[str, Any]] = {
    "ps": {"weight_decay": 3e-5, "label_smoothing": 0.1, "kd_weight": 1.0},
    "deps": {"weight_decay": 3e-5, "label_smoothing": 0.1, "kd_weight": 1.0},
    "sorted": {"label_smoothing": 0.0},
}


@dataclass
class TrainResult:
    """What :func:`train_supernet` produced (``net`` is the trained supernet, on CPU)."""

    out: Path
    net: Supernet
    history: list[dict[str, Any]]
    checkpoint: Path


def train_supernet(
    space: str, *, data: str = "digits", out: str | Path, trainer: str = "ps", seed: int = 0,
    image_size: int | None = None, supernet_options: dict[str, Any] | None = None, device: str | None = None,
    resume: bool = False, progress: bool = True, init: str | Path | None = None,
    augment: Mapping[str, Any] | None = None, workers: int | None = None, max_bad_images: int = 100,
    **hyperparams: Any,
) -> TrainResult:
    """Train the supernet ``space`` on the dataset ``data`` with ``trainer`` and save everything in ``out``.

    Args:
        space: registered supernet name (``nasforge space list``).
        data: dataset spec (``digits``, ``shapes``, ``cifar10:DIR``, ``folder:DIR``).
        trainer: registered trainer (``ps`` = Once-for-All progressive shrinking, ``sandwich``).
        image_size: stored image size (default: the space's largest resolution).
        supernet_options: overrides of the supernet's config (``num_classes``/``in_channels`` come from the data).
        device: ``auto`` (default), ``cpu``, ``cuda``; under torchrun each rank takes its local GPU.
        resume: continue the run in ``out`` (its settings must match).
        init: start from these weights instead of a random initialisation: a nasforge checkpoint or a state_dict
            saved by the Once-for-All reference code (its published teachers included).
        augment: image-file data: the augmentation recipe (:class:`nasforge.data.AugmentRecipe` fields or
            ``preset``); recorded in ``train.json``.
        workers: image-file data: DataLoader worker processes per training process (default: from the CPUs).
        max_bad_images: image-file data: unreadable images tolerated (skipped and counted) before the run stops.
        hyperparams: :class:`TrainConfig` fields (``batch_size``, ``schedule_scale``, ``lr_scale``, ...) and the
            trainer's own options (e.g. ``shrink_point`` for ``deps``, ``g_acc`` for ``sorted``).

    Raises:
        ConfigError: unknown space/trainer/option, ``out`` already holds another run, or another process is
            writing ``out`` (rank 0 holds :func:`nasforge.runlock.run_lock` on it for the whole run).
        CheckpointError: a damaged checkpoint or one written with other settings.
    """
    config, recipe, loading = _check_arguments(space, trainer, seed, hyperparams, init, augment, workers,
                                               max_bad_images)
    ctx = init_distributed(device)
    if config.precision == "fp16" and ctx.device.type == "cpu":
        raise ConfigError("precision 'fp16' needs a GPU (CPU autocast is bfloat16); use --precision bf16 on CPU")
    run = _Run(space=space, trainer=trainer, data=data, seed=seed, out=Path(out), config=config, ctx=ctx,
               supernet_options=supernet_options or {}, init=init, resume=resume,
               reporter=ProgressReporter(enabled=progress and ctx.is_main))
    request = {"space": space, "trainer": trainer, "data": data, "image_size": image_size,
               "supernet_options": run.supernet_options, "train_config": dataclasses.asdict(config),
               "augment": recipe.to_dict(), "init": str(init) if init is not None else None}
    with _rank0_lock(run.out, ctx):  # before the folder is checked: two runs cannot both find it free
        _check_out(run.out, request, resume)
        probe = create_supernet(space, **run.supernet_options)
        size = image_size or probe.resolution(probe.space.largest())
        splits = load_data(data, image_size=size, seed=seed, augment=recipe, loading=loading)
        return _train_in_lock(run, request, splits, loading)


@dataclass
class _Run:
    """The settings of one :func:`train_supernet` call that its steps share."""

    space: str
    trainer: str
    data: str
    seed: int
    out: Path
    config: TrainConfig
    ctx: DistContext
    supernet_options: dict[str, Any]
    init: str | Path | None
    resume: bool
    reporter: ProgressReporter


def _check_arguments(
    space: str, trainer: str, seed: int, hyperparams: dict[str, Any], init: str | Path | None,
    augment: Mapping[str, Any] | None, workers: int | None, max_bad_images: int,
) -> tuple[TrainConfig, AugmentRecipe, LoaderOptions]:
    """Check what :func:`train_supernet` was given before anything is written; return its parsed settings."""
    get_supernet_entry(space)  # unknown names fail before anything is written
    if trainer not in list_trainers():
        raise ConfigError(f"unknown trainer {trainer!r}; choose one of {list_trainers()}")
    config = make_train_config(trainer, seed, hyperparams)
    loading = LoaderOptions(workers=workers, max_bad_images=max_bad_images)
    recipe = AugmentRecipe.from_dict(augment or {})
    if init is not None and not Path(init).is_file():
        raise ConfigError(f"--init {init}: no such file; pass a nasforge checkpoint or a Once-for-All state_dict")
    return config, recipe, loading


def _train_in_lock(run: _Run, request: dict[str, Any], splits: DataSplits, loading: LoaderOptions) -> TrainResult:
    """Build (or reload) the supernet, train it and save the results; the caller holds the run lock."""
    options = {"num_classes": splits.num_classes, "in_channels": splits.in_channels, **run.supernet_options}
    folder = RunFolder(run.out)
    final, finished = folder.supernet, folder.find_supernet()
    if run.resume and finished is not None:
        net, state = load_supernet(finished)
        run.reporter.log(f"training already finished; loaded {finished}")
        return TrainResult(run.out, net, list(state.get("history", [])), finished)
    net = _initial_net(run, options)
    if run.ctx.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder.train_record, {**request, "world_size": run.ctx.world_size})
    run.ctx.barrier()
    history = _fit_phases(run, net, splits, options, loading)
    net.cpu()
    if run.ctx.is_main:
        _save_results(run, net, options, history, final)
    run.ctx.barrier()
    return TrainResult(run.out, net, history, final)


def _initial_net(run: _Run, options: dict[str, Any]) -> Supernet:
    """The supernet seeded with ``run.seed``, with the ``--init`` weights loaded when given."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        net = create_supernet(run.space, **options)
    if run.init is not None:
        from nasforge.supernets.warm_start import load_initial_weights

        run.reporter.log(f"initial weights: {load_initial_weights(net, run.init)} from {run.init}")
    return net


def _fit_phases(
    run: _Run, net: Supernet, splits: DataSplits, options: dict[str, Any], loading: LoaderOptions
) -> list[dict[str, Any]]:
    """Announce the trainer's phases and run them with a progress bar; return the history."""
    ctx, config = run.ctx, run.config
    job = get_trainer(run.trainer, config)
    phases = job.phases(net.space)
    total = sum(p.epochs for p in phases)
    run.reporter.log(f"training {run.space} with {run.trainer} on {run.data} ({len(splits.train)} images, "
                     f"{ctx.world_size} process(es) on {ctx.device}, {config.precision}"
                     f"{_loader_text(splits, loading)}): {len(phases)} phase(s), {total} epoch(s) - "
                     + ", ".join(f"{p.name} {p.epochs}" for p in phases))
    return fit_with_progress(job, net, splits, run.reporter, supernet_name=run.space, supernet_options=options,
                             checkpoint_dir=RunFolder(run.out).checkpoints, resume=run.resume, dist=ctx)


def _save_results(run: _Run, net: Supernet, options: dict[str, Any], history: list[dict[str, Any]],
                  final: Path) -> None:
    """Write ``checkpoints/supernet.pt``, ``train_history.json`` and ``training.png`` (rank 0 only)."""
    save_checkpoint(final, net, run.space, options, history=history, trainer=run.trainer,
                    train_config=dataclasses.asdict(run.config))
    atomic_write_json(run.out / "train_history.json", history)
    if history:
        from nasforge.report import plot_training

        plot_training(history, run.out / "training.png")


@contextlib.contextmanager
def _rank0_lock(out: Path, ctx: DistContext) -> Iterator[None]:
    """:func:`~nasforge.runlock.run_lock` on ``out``, held by rank 0 for the whole run. Under torchrun the other
    ranks wait for rank 0's answer (not at a barrier it would never reach) and fail with the same message."""
    with contextlib.ExitStack() as stack:
        failure: ConfigError | None = None
        if ctx.is_main:
            try:
                stack.enter_context(run_lock(out, "nasforge train"))
            except ConfigError as err:
                failure = err
        message = ctx.broadcast_object(None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if message is not None:
            raise ConfigError(str(message))
        yield


def make_train_config(trainer: str, seed: int, values: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from flat ``values``: loop hyper-parameters and ``trainer``'s own options mixed
    (the trainer's defaults from :data:`TRAINER_DEFAULTS` first); unknown names raise one ConfigError."""
    from dataclasses import fields

    from nasforge.supernets.trainers.base import TrainHyperparams, trainer_class

    loop = {f.name for f in fields(TrainHyperparams)}
    own = {f.name for f in fields(trainer_class(trainer).Options)}
    values = {**TRAINER_DEFAULTS.get(trainer, {}), **values}
    unknown = sorted(set(values) - loop - own - {"trainer_options"})
    if unknown:
        raise ConfigError(f"unknown training option(s) {unknown}; trainer {trainer!r} takes {sorted(own) or 'none'}"
                          f" and the loop takes {sorted(loop)}")
    options = {**values.pop("trainer_options", {}), **{k: values.pop(k) for k in list(values) if k in own}}
    config = TrainConfig.from_dict({**values, "seed": seed, "trainer_options": options})
    get_trainer(trainer, config)  # checks the options
    return config


def fit_with_progress(trainer: Trainer, net: Supernet, data: DataSplits, reporter: ProgressReporter,
                      **fit_kwargs: Any) -> list[dict[str, Any]]:
    """:meth:`Trainer.fit` with a progress bar that counts steps (epochs x steps per epoch) and moves on every
    step, its status showing the epoch, the epoch's running loss and the throughput; off a terminal it prints
    one line per epoch."""
    epochs = trainer.total_epochs(net.space)
    steps = max(1, len(data.train) // trainer.config.batch_size)  # as Trainer.fit counts them
    with reporter.task("train", total=epochs, steps=steps) as task:
        def on_epoch(rec: dict[str, Any]) -> None:
            task.update(rec["epoch"], _epoch_status(rec, epochs))

        def on_step(step: int, per_epoch: int, epoch: int, info: dict[str, float]) -> None:
            if per_epoch != task.steps:
                task.set_steps(per_epoch)
            task.update(epoch + step / per_epoch, _step_status(step, per_epoch, epoch, epochs, info), log=False)

        def on_resume(at: dict[str, Any]) -> None:
            phase = (f" ({at['phase']} phase, its epoch {at['epoch'] + 1} of {at['phase_epochs']})"
                     if at["phase_epochs"] != at["epochs"] else "")
            reporter.log(f"resuming training at epoch {at['global_epoch'] + 1} of {at['epochs']}{phase}, step "
                         f"{at['step'] + 1} of {at['steps_per_epoch']} (checkpoints/last.pt)")

        return trainer.fit(net, data, on_epoch=on_epoch, on_step=on_step, on_resume=on_resume, **fit_kwargs)


def _epoch_status(rec: dict[str, Any], epochs: int) -> str:
    """``depth-1 epoch 3/8  loss 1.234  val max ...  512 img/s, data wait 3%``: an epoch's record in one line."""
    val = f"  val max {rec['val_acc_max']:.3f} min {rec['val_acc_min']:.3f}" if "val_acc_max" in rec else ""
    speed = f"  {rec['images_per_s']:.0f} img/s, data wait {rec['data_wait']:.0%}" if "images_per_s" in rec else ""
    bad = f"  {rec['bad_images']} bad image(s) skipped" if rec.get("bad_images") else ""
    return f"{rec.get('phase', '')} epoch {rec['epoch']}/{epochs}  loss {rec['loss']:.3f}{val}{speed}{bad}"


def _step_status(step: int, per_epoch: int, epoch: int, epochs: int, info: dict[str, float]) -> str:
    """``epoch 1/8  step 40/120  loss 2.101  512 img/s, data wait 3%``: where a running epoch is."""
    loss = f"  loss {info['loss']:.3f}" if "loss" in info else ""
    return (f"epoch {epoch + 1}/{epochs}  step {step}/{per_epoch}{loss}  {info['images_per_s']:.0f} img/s, "
            f"data wait {info['data_wait']:.0%}")


def _loader_text(splits: DataSplits, loading: LoaderOptions) -> str:
    """``", 4 loader workers, simplejpeg"`` for streamed data, nothing for in-memory data."""
    if not isinstance(splits.train, FileSplit):
        return ""
    from nasforge.data import decoder_name

    return f", {loading.num_workers} loader worker(s), {decoder_name()}"


def _check_out(out: Path, request: dict[str, Any], resume: bool) -> None:
    folder = RunFolder(out)
    saved = folder.train_record
    if not resume:
        if saved.exists() or folder.checkpoints.exists():
            raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another "
                              "--out")
        return
    if not saved.is_file():
        raise ConfigError(f"nothing to resume in {out} (no train.json); start it without --resume")
    try:
        before = json.loads(saved.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{saved} is unreadable ({exc}); restore it or start a new run") from None
    before = {k: before.get(k) for k in request}
    now = json.loads(json.dumps(request))
    if isinstance(before.get("train_config"), dict):  # settings a resume may change (when files are written)
        before["train_config"] = {**before["train_config"],
                                  **{k: now["train_config"][k] for k in RESUMABLE_CHANGES if k in now["train_config"]}}
    changed = sorted(k for k in request if before.get(k) != now[k])
    if changed:
        detail = [f"{k}" for k in changed]
        if "train_config" in changed and isinstance(before.get("train_config"), dict):
            tc = before["train_config"]
            detail = [k for k in changed if k != "train_config"] + [
                f"train_config.{k}: {tc.get(k)!r} -> {v!r}" for k, v in now["train_config"].items() if tc.get(k) != v]
        raise ConfigError(f"--resume with other settings than the run in {out} ({'; '.join(detail)}); use the "
                          "same settings or another --out")
