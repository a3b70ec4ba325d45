"""numpy's float64 -> float16 store (``array16[...] = array64``): one rounding, to nearest even.

torch's ``.half()`` on float64 rounds through float32, and the float32 value can land on a float16
midpoint the float64 value was not on. Rounding to float32 *to odd* first (an inexact result keeps
an odd last bit) cannot create such a midpoint, float32 having 13 more significand bits than
float16, so the second rounding is the correct one. TorchScript has no bit reinterpretation
(``Tensor.view(dtype)``), so the rounding is built from float operations.
"""
from typing import List

import torch
from torch import Tensor

from .workspace import leading_view


def _any_float64_to_float16(values: Tensor) -> Tensor:
    """Round to odd through float32, then to float16: exact for every input (inf, nan and values
    beyond float16's range included), but built on frexp, comparisons and ``where``, which are
    several times slower than plain arithmetic on the CPU."""
    nearest = values.float()
    error = values - nearest.double()
    # frexp's mantissa is in [0.5, 1): times 2**23 it is a whole number exactly when float32's
    # last significand bit is 0. inf and nan give garbage there, harmlessly: their neighbours
    # round to the same float16. float32 subnormals, whichever neighbour, become a float16 zero.
    mantissa, _ = torch.frexp(nearest)
    mantissa.mul_(8388608.0)
    inexact_even = torch.frac(mantissa) == 0.0
    inexact_even &= error != 0.0
    # float32 keeps the error's sign even where its magnitude underflows (the float64 comparison).
    toward = torch.nextafter(nearest, torch.where(error > 0.0, float("inf"), float("-inf")).float())
    return torch.where(inexact_even, toward, nearest).half()


def float16_workspace(elements: int, device: torch.device) -> List[Tensor]:
    """Flat buffers for :func:`float16_values_into` on up to ``elements`` values (one float64,
    six float32, one float16), to reuse call after call."""
    work = [torch.empty([elements], dtype=torch.float64, device=device)]
    for _ in range(6):
        work.append(torch.empty([elements], dtype=torch.float32, device=device))
    work.append(torch.empty([elements], dtype=torch.float16, device=device))
    return work


def float16_values_into(values: Tensor, work: List[Tensor]) -> Tensor:
    """The float16 rounding of the float64 ``values``, finite with ``|v| <= 65504``, as float32
    (every float16 value is one), in arithmetic only and inside ``work``
    (:func:`float16_workspace`): several times faster than :func:`float64_to_float16`'s general
    path, and float32 compares faster than float16. Returns a view into ``work``.

    ``h = half(float(v))`` is wrong exactly where ``f = float(v)`` is a float16 midpoint and ``v``
    lies beyond it, away from ``h``: the answer is then ``h``'s other neighbour, ``h + 2 d`` with
    ``d = f - h``. ``f + d`` is a float16 value exactly when ``f`` is a midpoint (or ``d == 0``);
    between two neighbours otherwise. The selection is arithmetic, 0 or 1 from ``sign`` and
    ``clamp``, every step exact; the final ``copysign`` restores the sign of a zero.
    """
    shape: List[int] = list(values.shape)
    residual, nearest, beyond, rounded = (leading_view(work[0], shape), leading_view(work[1], shape),
                                          leading_view(work[2], shape), leading_view(work[3], shape))
    d, other, representable, half = (leading_view(work[4], shape), leading_view(work[5], shape),
                                     leading_view(work[6], shape), leading_view(work[7], shape))
    nearest.copy_(values)
    residual.copy_(nearest)
    torch.sub(values, residual, out=residual)
    beyond.copy_(residual)  # its sign survives: >= 2**-77 at any midpoint
    half.copy_(nearest)
    rounded.copy_(half)
    torch.sub(nearest, rounded, out=d)
    torch.add(nearest, d, out=other)
    half.copy_(other)
    representable.copy_(half)
    representable.sub_(other)
    # 1 where f + d is a float16 value and v lies beyond f away from h; 0 elsewhere.
    beyond.mul_(d)
    torch.sign(beyond, out=beyond)
    torch.sign(representable, out=representable)
    beyond.sub_(representable.abs_())
    beyond.clamp_(0.0, 1.0)
    beyond.mul_(d)
    rounded.add_(beyond, alpha=2.0)
    return torch.copysign(rounded, nearest, out=rounded)


def float16_values(values: Tensor) -> Tensor:
    """:func:`float16_values_into` with buffers of its own."""
    return float16_values_into(values.contiguous(), float16_workspace(values.numel(), values.device))


def _finite_float64_to_float16(values: Tensor) -> Tensor:
    return float16_values(values).half()


def float64_to_float16(values: Tensor) -> Tensor:
    """``values`` (float64) rounded once to float16 as numpy's ``astype(np.float16)`` rounds them
    (subnormals, overflow to inf, signed zeros and nan included).

    Example:
        >>> float64_to_float16(torch.tensor([1.0 + 2.0 ** -11 + 2.0 ** -40], dtype=torch.float64)).item()
        1.0009765625
    """
    if values.numel() > 0 and float(values.abs().max()) <= 65504.0:  # False for nan as well
        return _finite_float64_to_float16(values)
    return _any_float64_to_float16(values)


def stored_as(values: Tensor, dtype: torch.dtype) -> Tensor:
    """What assigning float64 ``values`` into a numpy array of ``dtype`` stores (float16 rounded
    once; every other dtype converts directly, as numpy does)."""
    if dtype == torch.float16:
        return float64_to_float16(values)
    return values.to(dtype)


__all__ = ["float16_values", "float16_values_into", "float16_workspace", "float64_to_float16", "stored_as"]
