"""Binds the C core to libtorch's stable C ABI at import, when the installed torch has one."""
from __future__ import annotations

import glob
import os

import torch

from . import _core


def bind() -> bool:
    """Looks up libtorch's stable C ABI functions the C core uses; False when absent."""
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for candidate in sorted(glob.glob(os.path.join(lib_dir, "libtorch_cpu.*"))):
        try:
            return bool(_core.bind_torch_stable_abi(candidate))
        except ImportError:
            continue
    return False


# Once, at import; without the stable ABI the C core asks torch.get_num_threads() instead.
bind()
