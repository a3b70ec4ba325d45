"""Errors raised while building a network from plans."""
from .._core import ExportError

__all__ = ["UnsupportedArchitectureError"]


class UnsupportedArchitectureError(ExportError):
    """The plans name a network class, layer type or keyword this package does not build.

    Raised instead of importing whatever the plans name: plans.json comes from strangers, so
    only an explicit allowlist of torch classes is ever instantiated.
    """
