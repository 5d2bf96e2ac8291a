"""The tolerance rule, in one place.

Two estimates `a` and `b` of the same derivative, with `b` the more trusted one
(autodiff over finite differences over the hand-written gradient), agree when

    |a - b| <= atol + rtol * (|b| + floor_fraction * leaf_scale) + noise_a + noise_b

- `leaf_scale` is the largest magnitude of the reference gradient on that leaf, so an
  element near zero is judged against a small fraction of its leaf's scale rather
  than on relative error alone (the per-leaf floor).
- `noise` is what each source's own arithmetic can explain: for a gradient computed
  in floating point, `noise_ulps * eps * (|g| + sensitivity)`, where `sensitivity`
  measures how much rounding the computation of that element suffers (see
  `_sources.rounding_sensitivity`); for finite differences, the error estimated from
  the stencil itself (truncation from two step sizes, plus rounding).
- Nothing is scaled by the size of an array.
- For a random direction `v` instead of one element, the same rule applies to the
  projections `a.v` and `b.v`, with `noise` summed as `sum(|v_i| noise_i)` and the
  floor taken as `floor_fraction * leaf_scale * sum(|v_i|)`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from ._errors import InvalidInputError

# Relative tolerance by the precision a source computes in. They sit about two orders
# of magnitude below the smallest error the checker promises to catch (a relative
# 1e-6 in float64 and 1e-3 in float32), and well above what rounding does to a
# well-conditioned element; ill-conditioned elements are covered by `noise`.
_DEFAULT_RTOL = {"float64": 1e-8, "float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}


def is_non_negative_number(value: Any) -> bool:
    """A finite real number >= 0; booleans and strings are not numbers here."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    number = float(value)
    return math.isfinite(number) and number >= 0


def default_rtol(dtype: np.dtype | str) -> float:
    return _DEFAULT_RTOL[np.dtype(dtype).name]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """The numbers in the tolerance rule above.

    Attributes:
        rtol: the relative tolerance; None picks it per pair from the precision of
            the two sources (1e-8 for float64, 1e-5 for float32, 1e-3 for float16,
            1e-2 for bfloat16, taking the looser of the two).
        atol: an absolute allowance added to every element; 0 by default.
        floor_fraction: the fraction of a leaf's scale below which relative error
            stops mattering.
        noise_ulps: how many units of rounding, relative to the measured rounding
            sensitivity, one source's arithmetic may contribute.
    """

    rtol: float | None = None
    atol: float = 0.0
    floor_fraction: float = 1e-3
    noise_ulps: float = 8.0

    def __post_init__(self) -> None:
        for name in ("rtol", "atol", "floor_fraction", "noise_ulps"):
            value = getattr(self, name)
            if name == "rtol" and value is None:
                continue
            if not is_non_negative_number(value):
                allowed = " or None" if name == "rtol" else ""
                raise InvalidInputError(
                    f"`{name}` must be a finite number >= 0{allowed}, got {value!r}."
                )

    def rtol_for(self, *dtypes: np.dtype | str) -> float:
        if self.rtol is not None:
            return self.rtol
        return max(default_rtol(d) for d in dtypes)
