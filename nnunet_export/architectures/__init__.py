"""Scriptable twins of dynamic-network-architectures' PlainConvUNet and ResidualEncoderUNet.

State-dict keys (aliases included) are exactly dna's, so nnU-Net checkpoints load strictly;
classes are resolved from plans through an explicit allowlist, never by importing names.
"""
from .build import NETWORK_CLASS_NAMES, build_network
from .ensemble import EnsembleModule
from .errors import UnsupportedArchitectureError
from .plain_unet import PlainConvUNet
from .residual_unet import ResidualEncoderUNet
from .weights import load_weights, prepare_for_inference

__all__ = [
    "NETWORK_CLASS_NAMES",
    "EnsembleModule",
    "PlainConvUNet",
    "ResidualEncoderUNet",
    "UnsupportedArchitectureError",
    "build_network",
    "load_weights",
    "prepare_for_inference",
]
