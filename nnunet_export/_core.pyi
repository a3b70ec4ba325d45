"""Type stub of the C core ``nnunet_export._core`` (csrc/). The public names are re-exported
by ``nnunet_export``; the functions here are internal building blocks of its Python layer."""
from os import PathLike
from types import TracebackType
from typing import Any, Callable, Iterable, Literal, Mapping

# The bytes-like objects the C core reads through the buffer protocol.
Buffer = bytes | bytearray | memoryview

__version__: str

#: Keys read_checkpoint returns when ``keys`` is None.
DEFAULT_CHECKPOINT_KEYS: tuple[str, ...]

class ExportError(Exception):
    """Base class of every error nnunet_export raises for bad input."""

class CheckpointError(ExportError):
    """A checkpoint file cannot be read: missing, truncated, corrupt or in a format this reader
    does not accept."""

class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks to construct an object outside the allowlist; nothing from it was executed."""

class PlansError(ExportError):
    """plans.json or dataset.json is missing, malformed or inconsistent."""

class UnsupportedArchitectureError(ExportError):
    """The plans name a network class, layer type or keyword this package does not build."""

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
    path: str | bytes | PathLike[str],
    keys: Iterable[str] | None,
    verify_crc: bool,
    factory: Callable[..., Any],
    copy: bool = ...,
    threads: int | None = ...,
) -> dict[str, Any]:
    """Internal: use ``nnunet_export.read_checkpoint``, which supplies the tensor factory.

    ``threads=None`` uses torch's intra-op thread count. Raises TypeError for a single str or a
    non-str key, ValueError for ``threads`` that is not None or an int >= 1."""

def read_plans(
    plans: str | PathLike[str] | Buffer,
    dataset: str | PathLike[str] | Buffer,
    configuration: str,
    *,
    plans_source: str | None = None,
    dataset_source: str | None = None,
) -> dict[str, Any]:
    """Resolved model description of one configuration; see ``nnunet_export.read_model_config``.

    ``plans`` / ``dataset``: a path, or the JSON document itself as a bytes-like object; messages
    then name ``plans_source`` / ``dataset_source`` (default "plans.json (in memory)" /
    "dataset.json (in memory)")."""

def plans_configurations(plans: str | PathLike[str] | Buffer, *, plans_source: str | None = None) -> list[str]:
    """Configuration names of a plans.json (a path or an in-memory document), in file order."""

def check_arch_kwargs(network_class_name: str, arch_kwargs: Mapping[str, Any] | Buffer, source: str = "arch_kwargs") -> None:
    """Check arch_kwargs (a dict, or a bytes-like JSON document) for building network_class_name
    with nnunet_export. Raises PlansError for a malformed value and UnsupportedArchitectureError
    for a class, op or keyword outside the allowlist; messages name ``source`` and the key path.
    TypeError when arch_kwargs is neither a dict nor bytes-like."""

def metadata_to_json(metadata: Any, indent: bool = True) -> bytes:
    """dict/list/tuple/str/int/float/bool/None as UTF-8 JSON (cJSON); ExportError names the path
    of a value JSON cannot hold exactly."""

def bind_torch_stable_abi(libtorch_path: str) -> bool:
    """Look up libtorch's stable C ABI thread query in the already-loaded libtorch."""

def stable_num_threads() -> int | None:
    """torch's intra-op thread count read through the stable C ABI, or None when not bound."""

def _crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32 like zlib.crc32 (internal, for tests)."""
