"""Where a loaded model came from and what it expects: the description every export stores."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .model_config import ModelConfig

__all__ = ["ModelInfo", "attach_info", "attached_info"]


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from and what it expects."""

    model_dir: str
    config: ModelConfig
    folds: tuple
    checkpoint_name: str
    checkpoint_paths: tuple
    trainer_name: str
    mirroring_axes: Optional[tuple]
    weights_sha256: Sequence[str]  # a tuple, or digests.FoldDigests (computed on first use)
    scriptable: bool
    not_scriptable_reason: Optional[str]
    builder: str
    # load_complete(copy=False): the weights live in mappings of the checkpoint files.
    weights_mapped: bool = False

    def parameter_summary(self, network: torch.nn.Module) -> tuple[int, int]:
        """(parameter count, unique weight bytes) of ``network``, each tensor counted once."""
        seen: set[int] = set()
        count = nbytes = 0
        for tensor in list(network.parameters()) + list(network.buffers()):
            key = tensor.data_ptr()
            if key in seen:
                continue
            seen.add(key)
            nbytes += tensor.numel() * tensor.element_size()
            if isinstance(tensor, torch.nn.Parameter):
                count += tensor.numel()
        return count, nbytes


# Networks handed out by patch_nnunet()/complete() remember their ModelInfo here rather than in
# an attribute, so TorchScript never sees (and never tries to compile) the metadata.
_ATTACHED_INFO: "weakref.WeakKeyDictionary[torch.nn.Module, ModelInfo]" = weakref.WeakKeyDictionary()


def attach_info(network: torch.nn.Module, info: ModelInfo) -> None:
    """Remember where ``network``'s weights came from, for a later ``to_torchscript(network)``."""
    _ATTACHED_INFO[network] = info


def attached_info(network: torch.nn.Module) -> Optional[ModelInfo]:
    return _ATTACHED_INFO.get(network)
