"""Switching a network's dropout layers off and back on (frozen teachers, DεpS's subnets)."""

from __future__ import annotations

from torch import nn

__all__ = ["DROPOUT_TYPES", "dropout_layers", "DropoutSwitch"]

#: every dropout layer type of torch.nn (all have a ``p``)
DROPOUT_TYPES: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                                              nn.FeatureAlphaDropout)


def dropout_layers(module: nn.Module) -> list[nn.Module]:
    """The dropout layers inside ``module`` (itself included), in ``modules()`` order."""
    return [m for m in module.modules() if isinstance(m, DROPOUT_TYPES)]


class DropoutSwitch:
    """Remembers the configured rate of each dropout layer of ``module`` and turns them off or back on."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.rates = {layer: float(layer.p) for layer in dropout_layers(module)}  # type: ignore[arg-type]

    def enable(self, on: bool) -> None:
        """Configured rates (``on``) or 0 for every remembered layer."""
        for layer, rate in self.rates.items():
            layer.p = rate if on else 0.0  # type: ignore[assignment]
