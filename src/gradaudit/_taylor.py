"""The Taylor-remainder test: a second opinion that needs no tolerance and no step.

If `g` is the gradient of `f` at `x`, the remainder

    r(t) = f(x + t v) - f(x) - t (g . v)

shrinks like `t**2` as `t` shrinks; if `g . v` is wrong, the remainder keeps a term
linear in `t`, and shrinks like `t`. Evaluating `r` over a ladder of steps and
measuring the slope of `log |r|` against `log t` therefore says whether a gradient
is consistent with the loss along `v`, without choosing a step or a tolerance. It
is coarse: an error has to be larger than the curvature term at the smallest step
still above rounding to show.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Steps 2**-2 ... 2**-16, relative to each element's scale: wide enough to see the
# slope change for moderately wrong gradients, and the smallest stays well above
# float64 rounding for a smooth loss.
STEPS = 2.0 ** -np.arange(2, 17)
# Remainders within this many loss ulps of zero are rounding, not signal.
_NOISE_ULPS = 64.0
# Halfway between the two orders a slope can show.
_ORDER_THRESHOLD = 1.5


@dataclasses.dataclass(frozen=True)
class TaylorResult:
    """How one source's gradient on one leaf fared in the Taylor-remainder test.

    Attributes:
        source: `"manual"` or `"autodiff"`.
        path: the leaf, in `jax.tree_util.keystr` form.
        order: the median observed convergence order over the directions; about 2
            for a gradient consistent with the loss, about 1 for a wrong one; nan
            when every remainder was at rounding level (the loss is linear there).
        ok: `order` is nan or at least 1.5.
        directions: how many random directions were tried.
    """

    source: str
    path: str
    order: float
    ok: bool
    directions: int


def values_along(
    function: Callable[[Any], Any],
    x: np.ndarray,
    vectors: np.ndarray,
    traceable: bool,
) -> tuple[np.ndarray, float]:
    """`f(x + t v)` for every direction and step of the ladder, and `f(x)`.

    The values do not depend on the gradient being tested, so one evaluation serves
    every source: each subtracts its own `t (g . v)`.

    Args:
        function: the flat loss.
        x: the flat point.
        vectors: `(k, n)` directions.
        traceable: whether to evaluate in one jitted program or from Python.
    """
    if traceable:

        @jax.jit
        def run(x: Any, vectors: Any) -> Any:
            def along(v: Any) -> Any:
                points = x[None, :] + jnp.asarray(STEPS, x.dtype)[:, None] * v[None]
                return jax.vmap(function)(points)

            return jax.lax.map(along, vectors), function(x)

        values, base = run(jnp.asarray(x), jnp.asarray(vectors, x.dtype))
        values, base_value = np.asarray(values, np.float64), float(base)
    else:
        base_value = float(function(x.copy()))
        values = np.array([[function(x + t * v) for t in STEPS] for v in vectors])
    return values, base_value


def remainders(values: np.ndarray, base_value: float, slopes: np.ndarray) -> np.ndarray:
    """`r(t) = f(x + t v) - f(x) - t (g . v)` for each direction and step."""
    return values - base_value - STEPS[None, :] * slopes[:, None]


def convergence_order(
    remainder: np.ndarray, base_value: float, loss_epsilon: float
) -> float:
    """The slope of `log |r|` against `log t` as `t` shrinks, over directions.

    Steps whose remainder is within rounding of zero are dropped. The order is what
    the remainder does in the limit, so for each direction the slopes between the
    smallest usable consecutive steps count (the last four); the median over
    directions is returned, nan when nothing is usable.
    """
    floor = _NOISE_ULPS * loss_epsilon * max(abs(base_value), 1e-300)
    per_direction = []
    for row in np.abs(remainder):
        usable = row > floor
        slopes = [
            np.log(row[i] / row[i + 1]) / np.log(STEPS[i] / STEPS[i + 1])
            for i in range(len(STEPS) - 1)
            if usable[i] and usable[i + 1]
        ]
        if slopes:
            per_direction.append(np.median(slopes[-4:]))
    return float(np.median(per_direction)) if per_direction else float("nan")


def is_consistent(order: float) -> bool:
    return bool(np.isnan(order) or order >= _ORDER_THRESHOLD)
