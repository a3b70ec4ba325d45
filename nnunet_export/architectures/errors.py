"""Errors raised while building a network from plans.

UnsupportedArchitectureError is defined by the C core, which checks arch_kwargs against the
allowlist (``_core.check_arch_kwargs``); it is re-exported here.
"""
from .._core import UnsupportedArchitectureError

__all__ = ["UnsupportedArchitectureError"]
