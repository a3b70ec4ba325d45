"""Average the logits of several fold networks, as nnU-Net's predictor does."""
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .decoder import deep_supervision_enabled

__all__ = ["EnsembleModule"]


class EnsembleModule(nn.Module):
    """Mean of the logits of several networks (folds); TorchScript-scriptable.

    The arithmetic follows ``nnUNetPredictor.predict_logits_from_preprocessed_data``: the first
    network's logits, ``+=`` each further network's logits in the given order, then ``/=`` the
    count (skipped for a single network). State-dict keys are ``networks.{i}.<dna key>``.

    Args:
        networks: networks returning full-resolution logits as one Tensor (deep supervision off).

    Raises:
        ValueError: no networks, or a network with deep supervision on.

    Example:
        >>> ens = EnsembleModule([fold0, fold1])  # doctest: +SKIP
        >>> scripted = torch.jit.script(prepare_for_inference(ens))  # doctest: +SKIP
    """

    n_networks: torch.jit.Final[int]

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        networks = list(networks)
        if not networks:
            raise ValueError("EnsembleModule needs at least one network")
        for i, net in enumerate(networks):
            if deep_supervision_enabled(net):
                raise ValueError(
                    f"network {i} has deep supervision on; an ensemble averages full-resolution logits "
                    "only (use prepare_for_inference on each network first)"
                )
        self.networks = nn.ModuleList(networks)
        self.n_networks = len(networks)

    def forward(self, x: Tensor) -> Tensor:
        """Return the mean of the networks' logits for input ``x``."""
        out: Optional[Tensor] = None
        for net in self.networks:
            logits = net(x)
            if out is None:
                out = logits
            else:
                out += logits
        assert out is not None  # at least one network, checked in __init__
        if self.n_networks > 1:
            out /= self.n_networks
        return out
