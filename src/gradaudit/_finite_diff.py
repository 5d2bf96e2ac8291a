"""Finite differences of a scalar function along many directions, in one program.

This module knows nothing of pytrees, sources or reports: it takes a function of one
flat float64 vector and a batch of directions, and returns the directional
derivative along each direction together with an estimate of its error, the one-sided
slopes, and a measure of how far the function is from smooth there (a kink).

A direction is `scale * e_index + dense_row`, so that exact coordinates (cheap, no
dense vector per coordinate) and random dense directions share one compiled program.
The derivative returned is along that direction: for a coordinate `i` with scale `s`
it is `s * df/dx_i`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("central", "forward", "fourth_order", "richardson")

# The order of accuracy of each method, which sets the step that balances
# truncation (grows as step**order) against rounding (grows as eps / step).
_ORDER = {"forward": 1, "central": 2, "fourth_order": 4, "richardson": 4}

# Multiples of the step at which each method evaluates the function, besides the
# base point. Every two-sided method includes +-1 and +-2, which the kink test uses.
# The fourth-order methods also evaluate +-4: their error estimates trust the
# stencil's smoothness more than central differences do, and the second kink test
# that the extra points allow closes the first test's blind spot (see `_combine`).
_OFFSETS = {
    "forward": (1.0, 2.0),
    "central": (-2.0, -1.0, 1.0, 2.0),
    "fourth_order": (-4.0, -2.0, -1.0, 1.0, 2.0, 4.0),
    "richardson": (-4.0, -2.0, -1.0, 1.0, 2.0, 4.0),
}

# Rounding in one evaluation of the loss is taken as this many machine epsilons of
# its magnitude: a sum of many terms loses a few ulps, not one.
_ROUNDING_ULPS = 8.0


@dataclasses.dataclass(frozen=True)
class Directions:
    """A batch of perturbation directions over a flat vector of size `n`.

    Attributes:
        index: `(k,)` ints, the coordinate each direction moves (any, if `scale` is 0).
        scale: `(k,)` floats, how far that coordinate moves per unit step.
        dense_row: `(k,)` ints, the row of `dense` added to the direction.
        dense: `(m, n)` floats; row 0 is all zeros, for pure coordinate directions.
    """

    index: np.ndarray
    scale: np.ndarray
    dense_row: np.ndarray
    dense: np.ndarray

    @property
    def count(self) -> int:
        return int(self.index.shape[0])

    @staticmethod
    def coordinates(indices: np.ndarray, scales: np.ndarray, size: int) -> Directions:
        k = len(indices)
        return Directions(
            np.asarray(indices, np.int64),
            np.asarray(scales, np.float64),
            np.zeros(k, np.int64),
            np.zeros((1, size), np.float64),
        )

    @staticmethod
    def dense_vectors(vectors: np.ndarray) -> Directions:
        k, size = vectors.shape
        return Directions(
            np.zeros(k, np.int64),
            np.zeros(k, np.float64),
            np.arange(1, k + 1, dtype=np.int64),
            np.concatenate([np.zeros((1, size)), vectors]).astype(np.float64),
        )

    def concatenate(self, other: Directions) -> Directions:
        shift = self.dense.shape[0] - 1
        other_rows = np.where(other.dense_row > 0, other.dense_row + shift, 0)
        return Directions(
            np.concatenate([self.index, other.index]),
            np.concatenate([self.scale, other.scale]),
            np.concatenate([self.dense_row, other_rows]),
            np.concatenate([self.dense, other.dense[1:]]),
        )

    def vector(self, k: int) -> np.ndarray:
        """Direction `k` as a dense vector (for tests and small follow-ups)."""
        v = self.dense[self.dense_row[k]].copy()
        v[self.index[k]] += self.scale[k]
        return v


@dataclasses.dataclass(frozen=True)
class FiniteDifferences:
    """Directional derivatives and what is known about their accuracy.

    Attributes:
        derivative: the estimate along each direction.
        error: an estimate of its absolute error, truncation plus rounding.
        rounding: the rounding part of `error` alone.
        kink: how far the one-sided slopes are from behaving smoothly, in the units
            of `derivative`; near zero for a smooth function, of the order of the
            jump in slope at a kink within the stencil. A kink in the test's blind
            spot still spoils the estimate by at most about `error + kink`. Zero
            for the one-sided `forward` method.
        left: the slope from the left (`nan` for `forward`).
        right: the slope from the right.
        step: the relative step, a power of two.
        method: the stencil used.
    """

    derivative: np.ndarray
    error: np.ndarray
    rounding: np.ndarray
    kink: np.ndarray
    left: np.ndarray
    right: np.ndarray
    step: float
    method: str


def points_per_probe(method: str) -> int:
    """How many evaluations of the function `method` makes per direction."""
    return len(_OFFSETS[method])


def default_step(method: str, epsilon: float) -> float:
    """The relative step for `method` when the loss computes with `epsilon`.

    The step that balances truncation and rounding is about
    `epsilon ** (1 / (order + 1))`: the cube root of epsilon for central
    differences. It is rounded to a power of two so that `x + step` is exact in
    binary floating point for any `x` of magnitude up to one.
    """
    ideal = epsilon ** (1.0 / (_ORDER[method] + 1))
    return 2.0 ** round(math.log2(ideal))


def _combine(
    values: Any, base: Any, step: float, method: str, epsilon: float
) -> tuple[Any, ...]:
    """Turn function values at the stencil offsets into estimates (any backend)."""
    xp = jnp if isinstance(values, jax.Array) else np
    at = {o: values[:, i] for i, o in enumerate(_OFFSETS[method])}
    magnitude = xp.maximum(xp.max(xp.abs(values), axis=1), xp.abs(base))
    rounding = _ROUNDING_ULPS * epsilon * magnitude / step

    if method == "forward":
        d1 = (at[1.0] - base) / step
        d2 = (at[2.0] - base) / (2 * step)
        nan = xp.full_like(d1, xp.nan)
        return d1, xp.abs(d1 - d2) + rounding, rounding, xp.zeros_like(d1), nan, d1

    def central(o: float) -> Any:
        return (at[o] - at[-o]) / (2 * o * step)

    def gap(o: float) -> Any:
        """Forward minus backward slope at `o` steps: `o * h * f''` when smooth."""
        return (at[o] + at[-o] - 2 * base) / (o * step)

    # The kink test. For a smooth function the gap grows linearly with the step, so
    # gap(2h) - 2 * gap(h) vanishes up to O(h**3); a kink within two steps, with a
    # jump J in slope, makes it of order J. Five points cannot tell every kink from
    # a cubic, though: a kink 2h/3 from x leaves the expression at zero. So
    # 1. the comparison counts `kink` as part of the estimate's possible error (it
    #    bounds what a kink the test misses does to a central difference), and
    # 2. the fourth-order methods, whose error estimates a missed kink would fool,
    #    evaluate +-4h as well, and the same test an octave wider has its blind
    #    spot elsewhere.
    kink = xp.abs(gap(2.0) - 2 * gap(1.0))
    if 4.0 in at:
        kink = xp.maximum(kink, xp.abs(gap(4.0) - 2 * gap(2.0)))

    d1, d2 = central(1.0), central(2.0)
    if method == "central":
        # Truncation alone would be |d1 - d2| / 3 (the error is c h**2 at step h and
        # 4 c h**2 at 2h), but the difference also carries both estimates' rounding,
        # which the model below underestimates for a loss of large cancelling terms;
        # the whole difference is the safer bound.
        estimate, truncation = d1, xp.abs(d1 - d2)
    elif method == "fourth_order":
        estimate = (4 * d1 - d2) / 3
        truncation = xp.abs(estimate - d1) / 4
    else:
        d4 = central(4.0)
        r1, r2 = (4 * d1 - d2) / 3, (4 * d2 - d4) / 3
        estimate = (16 * r1 - r2) / 15
        truncation = xp.abs(estimate - r1)

    # One-sided slopes at steps h and 2h, extrapolated to zero step to remove
    # their O(h) error.
    forward1, backward1 = (at[1.0] - base) / step, (base - at[-1.0]) / step
    forward2, backward2 = (at[2.0] - base) / (2 * step), (base - at[-2.0]) / (2 * step)
    right = 2 * forward1 - forward2
    left = 2 * backward1 - backward2
    error = truncation + rounding
    return estimate, error, rounding, kink, left, right


def _perturbation(directions: Directions, dense: Any, k: Any, size: int) -> Any:
    onehot = jnp.zeros(size, dense.dtype).at[directions.index[k]].set(1.0)
    return onehot * directions.scale[k] + dense[directions.dense_row[k]]


def finite_differences(
    function: Callable[[Any], Any],
    x: np.ndarray,
    directions: Directions,
    *,
    method: str = "central",
    step: float | None = None,
    epsilon: float = float(np.finfo(np.float64).eps),
    batch_size: int = 1,
    traceable: bool = True,
) -> FiniteDifferences:
    """Directional derivatives of `function` at `x` along every direction.

    Args:
        function: maps a flat vector (float64, or float32 for a float32
            reference) to a scalar. With `traceable=True` it
            must be a JAX function; it is compiled once, and all directions and
            stencil points run inside that one program (`jax.lax.map` over
            batches of `batch_size` directions, `jax.vmap` within a batch). With
            `traceable=False` it is called from Python once per point.
        x: the flat point, in the reference dtype.
        directions: what to differentiate along.
        method: one of `METHODS`.
        step: the relative step (a multiple of each direction's scale);
            `default_step(method, epsilon)` when None.
        epsilon: the machine epsilon the function effectively computes with; sets
            the step and the rounding estimate.
        batch_size: how many directions to evaluate side by side.
        traceable: whether `function` can be traced by JAX.

    Returns:
        A `FiniteDifferences` with one entry per direction.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
    step = default_step(method, epsilon) if step is None else float(step)
    offsets = np.asarray(_OFFSETS[method], np.float64)
    size = x.shape[0]

    combined: tuple[Any, ...]
    if traceable:
        device_values, base = _device_values(
            function, x, directions, offsets, step, batch_size, size
        )
        combined = jax.jit(_combine, static_argnums=(2, 3, 4))(
            device_values, base, step, method, epsilon
        )
    else:
        base_value = float(function(x.copy()))
        values = np.empty((directions.count, offsets.size))
        for k in range(directions.count):
            v = directions.vector(k)
            for j, o in enumerate(offsets):
                values[k, j] = float(function(x + o * step * v))
        combined = _combine(values, np.float64(base_value), step, method, epsilon)

    derivative, error, rounding, kink, left, right = (
        np.asarray(a, np.float64) for a in combined
    )
    return FiniteDifferences(
        derivative, error, rounding, kink, left, right, step=step, method=method
    )


def _device_values(
    function: Callable[[Any], Any],
    x: np.ndarray,
    directions: Directions,
    offsets: np.ndarray,
    step: float,
    batch_size: int,
    size: int,
) -> tuple[jax.Array, jax.Array]:
    """Evaluate the function at every stencil point of every direction, jitted."""

    @jax.jit
    def run(x: Any, index: Any, scale: Any, dense_row: Any, dense: Any) -> Any:
        batch = Directions(index, scale, dense_row, dense)

        def one_direction(k: Any) -> Any:
            v = _perturbation(batch, dense, k, size)
            points = x[None, :] + (offsets * step)[:, None] * v[None, :]
            return jax.vmap(function)(points)

        values = jax.lax.map(
            one_direction, jnp.arange(index.shape[0]), batch_size=batch_size
        )
        return values, function(x)

    return run(
        jnp.asarray(x),
        jnp.asarray(directions.index),
        jnp.asarray(directions.scale, x.dtype),
        jnp.asarray(directions.dense_row),
        jnp.asarray(directions.dense, x.dtype),
    )
