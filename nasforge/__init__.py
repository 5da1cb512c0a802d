"""nasforge: train one weight-sharing supernet, search its subnets, and ship them to many devices."""

from nasforge._version import __version__

__all__ = ["__version__"]
