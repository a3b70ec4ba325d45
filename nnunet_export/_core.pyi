"""Type stub of the C core ``nnunet_export._core`` (csrc/). The public names are re-exported
by ``nnunet_export``; the functions here are internal building blocks of its Python layer."""
from os import PathLike
from types import TracebackType
from typing import Any, Callable, Literal, Sequence

__version__: str

class ExportError(Exception):
    """Base class of every error nnunet_export raises for bad input."""

class CheckpointError(ExportError):
    """A checkpoint file cannot be read: missing, truncated, corrupt or in a format this reader
    does not accept."""

class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks to construct an object outside the allowlist; nothing from it was executed."""

class PlansError(ExportError):
    """plans.json or dataset.json is missing, malformed or inconsistent."""

class WeightsMismatchError(ExportError):
    """A state dict does not fit the network built from the plans."""

class ThreadGuard:
    """Context manager: bounds torch's intra-op threads to ``num_threads`` inside the block and
    restores ``torch.get_num_threads()``, cudnn.benchmark, grad mode and the default dtype
    afterwards, also when the block raises."""

    def __init__(self, num_threads: int | None = None) -> None: ...
    def __enter__(self) -> ThreadGuard: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]: ...

def read_checkpoint(
    path: str,
    keys: Sequence[str] | None,
    verify_crc: bool,
    factory: Callable[..., Any],
    copy: bool = ...,
    threads: int = ...,
) -> dict[str, Any]:
    """Internal: use ``nnunet_export.read_checkpoint``, which supplies the tensor factory."""

def read_plans(plans_path: str | PathLike[str], dataset_path: str | PathLike[str], configuration: str) -> dict[str, Any]:
    """Resolved model description of one configuration; see ``nnunet_export.read_model_config``."""

def plans_configurations(plans_path: str) -> list[str]:
    """Configuration names of a plans.json, in file order."""

def metadata_to_json(metadata: Any, indent: bool = True) -> bytes:
    """dict/list/tuple/str/int/float/bool/None as UTF-8 JSON (cJSON); ExportError names the path
    of a value JSON cannot hold exactly."""

def bind_torch_stable_abi(libtorch_path: str) -> bool:
    """Look up libtorch's stable C ABI thread query in the already-loaded libtorch."""

def stable_num_threads() -> int | None:
    """torch's intra-op thread count read through the stable C ABI, or None when not bound."""

def _crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32 like zlib.crc32 (internal, for tests)."""
