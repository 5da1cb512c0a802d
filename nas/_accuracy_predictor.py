"""Once-for-All's accuracy predictor: an MLP on the space's one-hot encoding, regressing a metric."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.errors import ArchitectureError, ConfigError
from nasforge.io import TORCH_LOAD_ERRORS, atomic_torch_save, load_torch_file
from nasforge.supernets.arch import Architecture, SearchSpace

from ._predictor_base import PredictorReport, _check_targets, _report, _split

__all__ = ["ACCURACY_PREDICTOR_FORMAT", "AccuracyPredictor"]

ACCURACY_PREDICTOR_FORMAT = "nasforge-accuracy-predictor/1"


# ------------------------------------------------------------------------------------------------------------
# accuracy predictor
# ------------------------------------------------------------------------------------------------------------
class AccuracyPredictor:
    """An MLP on :meth:`SearchSpace.encode` that predicts accuracy (Once-for-All's predictor by default).

    Training is Adam on mini-batches of the standardised targets (mean 0, std 1 on the training split),
    seeded: the same data and ``seed`` give the same weights on the same machine and thread count. With the
    defaults, ~250 samples train in a few tenths of a second on one CPU thread.

    Args:
        space: the search space whose architectures are scored.
        hidden: widths of the hidden layers (ReLU after each).
        epochs: passes over the training split.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2).
        batch_size: mini-batch size; ``None`` trains full-batch (one step per epoch).
        seed: seeds the split, the weight initialisation and the batch order.

    Raises:
        ConfigError: on a non-positive width, epoch count, learning rate or batch size.
    """

    def __init__(
        self,
        space: SearchSpace,
        hidden: Sequence[int] = (400, 400, 400),
        *,
        epochs: int = 20,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int | None = 32,
        seed: int = 0,
    ) -> None:
        hidden = tuple(int(h) for h in hidden)
        if any(h <= 0 for h in hidden):
            raise ConfigError(f"hidden layer widths {hidden} must all be positive")
        if int(epochs) <= 0:
            raise ConfigError(f"epochs={epochs} must be positive")
        if not float(lr) > 0:
            raise ConfigError(f"lr={lr} must be positive")
        if float(weight_decay) < 0:
            raise ConfigError(f"weight_decay={weight_decay} must be >= 0")
        if batch_size is not None and int(batch_size) <= 0:
            raise ConfigError(f"batch_size={batch_size} must be positive, or None for full-batch training")
        self.space = space
        self.hidden = hidden
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.seed = int(seed)
        self._model: Any = None
        self._y_mean = 0.0
        self._y_std = 1.0

    # -- helpers ---------------------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self._model is not None

    def _build(self) -> Any:
        import torch

        layers: list[torch.nn.Module] = []
        width = self.space.encoding_size
        for h in self.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, 1))
        return torch.nn.Sequential(*layers)

    def _encode(self, archs: Sequence[Architecture]) -> np.ndarray:
        if isinstance(archs, (Architecture, str)):
            raise ConfigError("pass a list of architectures, not a single one")
        rows = []
        for i, arch in enumerate(archs):
            try:
                rows.append(self.space.encode(arch))
            except ArchitectureError as exc:
                raise ConfigError(f"architecture #{i} is not in space {self.space.name!r}: {exc}") from None
        if not rows:
            return np.zeros((0, self.space.encoding_size), dtype=np.float32)
        return np.stack(rows)

    # -- fit / predict ---------------------------------------------------------------------------------------
    def fit(self, archs: Sequence[Architecture], accuracies: Sequence[float], *, holdout: float = 0.2
            ) -> PredictorReport:
        """Train from scratch on ``archs`` -> ``accuracies`` and score the held-out part.

        Args:
            archs: measured architectures of the space.
            accuracies: their accuracies (any scale; targets are standardised internally).
            holdout: fraction held out of training and used for the report (at least 2 samples when > 0);
                ``0`` trains on everything and reports NaN errors.

        Returns:
            The held-out :class:`PredictorReport`.

        Raises:
            ConfigError: fewer than 4 samples, lengths differ, a value is not finite, an architecture is not
                in the space, or ``holdout`` is not in [0, 1).
        """
        import torch

        archs = list(archs) if not isinstance(archs, (Architecture, str)) else archs
        x_all = self._encode(archs)
        y_all = _check_targets(archs, accuracies, "accuracies")
        train, held = _split(len(y_all), holdout, self.seed)
        y_train = y_all[train]
        self._y_mean = float(y_train.mean())
        std = float(y_train.std())
        self._y_std = std if std > 1e-12 else 1.0

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self._build()
        gen = torch.Generator().manual_seed(self.seed)
        xt = torch.from_numpy(x_all[train])
        yt = torch.from_numpy(((y_train - self._y_mean) / self._y_std).astype(np.float32))
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        n = len(yt)
        bs = n if self.batch_size is None else min(self.batch_size, n)
        model.train()
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.mse_loss(model(xt[idx]).squeeze(1), yt[idx])
                loss.backward()
                opt.step()
        model.eval()
        self._model = model
        pred = self._predict_encoded(x_all[held]) if len(held) else np.empty(0)
        return _report(len(train), pred, y_all[held])

    def _predict_encoded(self, x: np.ndarray) -> np.ndarray:
        import torch

        if len(x) == 0:
            return np.empty(0, dtype=np.float64)
        with torch.no_grad():
            out = self._model(torch.from_numpy(x)).squeeze(1).double().numpy()
        return out * self._y_std + self._y_mean

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        """Predicted accuracies, a float64 array with one value per architecture.

        Raises:
            ConfigError: before :meth:`fit` / :meth:`load_state_dict`, or for an architecture not in the space.
        """
        if not self.is_fitted:
            raise ConfigError("AccuracyPredictor.predict called before fit; call fit(archs, accuracies) or load one")
        return self._predict_encoded(self._encode(archs))

    def __call__(self, archs: Sequence[Architecture]) -> np.ndarray:
        """Same as :meth:`predict` (so a fitted predictor is a single-objective ``score_fn``)."""
        return self.predict(archs)

    # -- persistence -----------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able constructor options plus the space's fingerprint."""
        return {
            "space": self.space.name,
            "encoding_size": self.space.encoding_size,
            "dims": [[d.name, list(d.choices), d.positions] for d in self.space.dims],
            "hidden": list(self.hidden),
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        """Tensors and JSON-able values only (loadable with ``torch.load(..., weights_only=True)``).

        Raises:
            ConfigError: before :meth:`fit`.
        """
        if not self.is_fitted:
            raise ConfigError("nothing to save: the AccuracyPredictor has not been fitted")
        return {
            "format": ACCURACY_PREDICTOR_FORMAT,
            "config": self.config(),
            "y_mean": self._y_mean,
            "y_std": self._y_std,
            "model": {k: v.detach().clone() for k, v in self._model.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights written by :meth:`state_dict`; the space and layer widths must match.

        Raises:
            ConfigError: if ``state`` is not a predictor state, or was fitted on another space or widths.
        """
        if not isinstance(state, dict) or state.get("format") != ACCURACY_PREDICTOR_FORMAT:
            raise ConfigError(f"not an accuracy predictor state (expected format {ACCURACY_PREDICTOR_FORMAT})")
        cfg = state.get("config", {})
        mine = self.config()
        if cfg.get("dims") != mine["dims"] or cfg.get("encoding_size") != mine["encoding_size"]:
            raise ConfigError(f"the predictor was fitted on space {cfg.get('space')!r}, which differs from space "
                              f"{self.space.name!r}; load it with the space it was trained on")
        if list(cfg.get("hidden", [])) != list(self.hidden):
            raise ConfigError(f"the predictor has hidden widths {cfg.get('hidden')}, this one {list(self.hidden)}")
        model = self._build()
        try:
            model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as exc:
            raise ConfigError(f"predictor weights do not fit the network: {str(exc).splitlines()[0][:200]}") from None
        model.eval()
        self._model = model
        self._y_mean, self._y_std = float(state["y_mean"]), float(state["y_std"])

    def save(self, path: str | Path) -> Path:
        """Atomically write :meth:`state_dict` to ``path`` with ``torch.save``."""
        return atomic_torch_save(path, self.state_dict())

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace) -> AccuracyPredictor:
        """Read a predictor written by :meth:`save` (``weights_only``: nothing is unpickled).

        Raises:
            ConfigError: the file is missing, corrupt, not a predictor, or was fitted on another space.
        """

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"predictor file {path} does not exist")
        try:
            state = load_torch_file(path)
        except TORCH_LOAD_ERRORS as exc:
            raise ConfigError(f"predictor file {path} is corrupt or not a predictor ({type(exc).__name__})") from None
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ConfigError(f"{path} is not a nasforge accuracy predictor")
        cfg = state["config"]
        try:
            pred = cls(space, cfg["hidden"], epochs=cfg["epochs"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                       batch_size=cfg["batch_size"], seed=cfg["seed"])
        except KeyError as exc:
            raise ConfigError(f"{path} is a damaged predictor: its config lacks {exc}") from None
        pred.load_state_dict(state)
        return pred
