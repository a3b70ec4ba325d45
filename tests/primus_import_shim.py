"""Test-only workaround: let nnU-Net's trainer lookup skip the Primus trainers when torchvision is broken.

Why: dynamic-network-architectures imports timm, timm imports torchvision, and PyPI's torchvision
wheel cannot be imported beside the CPU-only torch wheel ("operator torchvision::nms does not
exist"). nnU-Net's `recursive_find_trainer_class_by_name` (used by `nnUNetPredictor`) walks
`nnunetv2.training.nnUNetTrainer` and imports the `primus` subpackage (which imports timm) before
`variants`, so looking up e.g. nnUNetTrainerBN crashes.

What: only when `import torchvision` fails, register a plain module object (no `__path__`) under
`nnunetv2.training.nnUNetTrainer.primus`. Importing `...primus.<module>` then raises
ModuleNotFoundError whose `name` is the searched module, which nnU-Net's own search skips.
Nothing else of nnunetv2 is touched; the Primus trainers are simply unavailable.
"""
from __future__ import annotations

import sys
import types

PRIMUS_PACKAGE = "nnunetv2.training.nnUNetTrainer.primus"


def torchvision_is_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # RuntimeError for the nms operator, ImportError/OSError for other breakage
        return False
    return True


def skip_primus_trainers_if_torchvision_is_broken() -> bool:
    """Apply the shim if needed. Returns True when the placeholder module is (now) registered."""
    existing = sys.modules.get(PRIMUS_PACKAGE)
    if existing is not None:
        return getattr(existing, "__nnunet_export_test_shim__", False)
    if torchvision_is_importable():
        return False
    placeholder = types.ModuleType(PRIMUS_PACKAGE, "nnunet_export test shim: Primus trainers unavailable")
    placeholder.__nnunet_export_test_shim__ = True
    sys.modules[PRIMUS_PACKAGE] = placeholder
    return True
