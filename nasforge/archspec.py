"""``--arch``: the one reader of an architecture given on the command line (``largest``, ``smallest``, JSON text
or a ``.json`` file), used by ``nasforge export``, ``prune``, ``quantize --method qat`` and ``space describe``.

It imports nothing heavy at module level, so a CLI module may import it for ``--help``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from nasforge.errors import ConfigError

if TYPE_CHECKING:
    from nasforge.supernets import Architecture, Supernet

__all__ = ["ARCH_HELP", "read_arch_spec"]

#: The forms :func:`read_arch_spec` accepts, for ``--arch`` help texts.
ARCH_HELP = "largest | smallest | JSON | FILE.json"


def read_arch_spec(text: str, net: Supernet) -> Architecture:
    """An architecture of ``net``'s space from ``largest``, ``smallest``, JSON text or a ``.json`` file.

    Args:
        text: the ``--arch`` value.
        net: the supernet whose space the architecture belongs to.

    Returns:
        The architecture in canonical form (:meth:`~nasforge.supernets.SearchSpace.canonical`).

    Raises:
        ConfigError: a missing file or unreadable JSON (one line that starts with ``--arch``).
        ArchitectureError: an architecture outside the space (the message names the gene).
    """
    from nasforge.supernets import Architecture

    space = net.space
    if text in ("largest", "smallest"):
        return space.largest() if text == "largest" else space.smallest()
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"--arch {text!r} does not exist as a file, and is neither 'largest', 'smallest' nor "
                              "JSON text")
        text = path.read_text(encoding="utf-8")
    try:
        return space.canonical(Architecture.from_json(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch is not valid JSON: {exc}") from None
