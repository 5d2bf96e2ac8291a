"""The three gradient sources behind one interface.

A source answers *probes*: an exact coordinate `i` asks for `g_i`, a dense
direction `v` asks for the projection `g . v`. Each answer comes with the noise the
source's own arithmetic can explain, so the comparison never needs to know where a
gradient came from.

- `manual`: the user's hand-written gradient, called as they wrote it, in their
  dtype. It answers every probe.
- `autodiff`: `jax.grad` of the loss, as a float64 reference. It answers every probe.
- `fd`: finite differences of the loss, as a float64 reference. It answers only the
  probes it was computed for, and marks those where it cannot be trusted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._finite_diff import Directions, finite_differences
from ._paths import LeafLayout
from ._precision import epsilon

SOURCE_NAMES = ("manual", "autodiff", "fd")


@dataclasses.dataclass(frozen=True)
class Probes:
    """What to compare: exact coordinates, then dense directions.

    Attributes:
        coordinates: `(c,)` flat indices.
        vectors: `(d, n)` dense directions, each supported on one leaf.
        vector_leaf: `(d,)` the leaf number of each direction.
    """

    coordinates: np.ndarray
    vectors: np.ndarray
    vector_leaf: np.ndarray

    @property
    def count(self) -> int:
        return int(self.coordinates.size + self.vector_leaf.size)

    def first(self, count: int) -> Probes:
        """The first `count` probes, coordinates before directions."""
        taken = min(count, self.coordinates.size)
        rest = max(0, count - taken)
        return Probes(
            self.coordinates[:taken], self.vectors[:rest], self.vector_leaf[:rest]
        )

    def subset(self, mask: np.ndarray) -> Probes:
        """The probes where `mask` (over all probes, coordinates first) is set."""
        at_coordinate, at_vector = (
            mask[: self.coordinates.size],
            mask[self.coordinates.size :],
        )
        return Probes(
            self.coordinates[at_coordinate],
            self.vectors[at_vector],
            self.vector_leaf[at_vector],
        )

    def leaf_numbers(self, layout: LeafLayout) -> np.ndarray:
        offsets = np.asarray(layout.offsets)
        coordinate_leaf = np.searchsorted(offsets, self.coordinates, side="right") - 1
        return np.concatenate([coordinate_leaf, self.vector_leaf]).astype(np.int64)

    def project(self, flat: np.ndarray) -> np.ndarray:
        """Answer every probe from a full flat vector."""
        return np.concatenate([flat[self.coordinates], self.vectors @ flat])

    def project_magnitude(self, flat: np.ndarray) -> np.ndarray:
        """Like `project`, with absolute values: how noise adds up along a probe."""
        return np.concatenate(
            [np.abs(flat[self.coordinates]), np.abs(self.vectors) @ np.abs(flat)]
        )


@dataclasses.dataclass(frozen=True)
class Estimates:
    """One source's answers to a set of probes.

    Attributes:
        values: the answer to each probe (nan where the source has none).
        noise: the absolute error the source's arithmetic can explain.
        kink: how far the function is from smooth along the probe, in gradient
            units (finite differences only; zero for the others).
        left: the slope from the left where known, else nan.
        right: the slope from the right where known, else nan.
        unstable: where a second look at a smaller step contradicted the estimate
            beyond both error bounds (finite differences only; None if not looked).
    """

    values: np.ndarray
    noise: np.ndarray
    kink: np.ndarray
    left: np.ndarray
    right: np.ndarray
    unstable: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Source:
    """One gradient source, possibly unavailable.

    Attributes:
        name: `"manual"`, `"autodiff"` or `"fd"`.
        available: whether it produced anything.
        reason: why it is unavailable, or notes on how it ran.
        dtype: the precision it computed in.
        gradient: the full flat gradient (float64), for `manual` and `autodiff`.
        noise: per-element rounding allowance for `gradient`.
        rounding: for `manual`, the rounding measured by evaluating it again in
            another precision (see `measured_rounding`), or None.
        answered: for `fd`, its estimates on the probes it was computed for.
        leaf_dtypes: for `manual`, the precision of each leaf, when leaves differ
            (a float32 leaf beside a float64 one); empty when `dtype` holds for all.
    """

    name: str
    available: bool
    reason: str = ""
    dtype: str = "float64"
    gradient: np.ndarray | None = None
    noise: np.ndarray | None = None
    answered: Estimates | None = None
    rounding: np.ndarray | None = None
    leaf_dtypes: tuple[str, ...] = ()

    def dtype_of_leaf(self, leaf: int) -> str:
        return self.leaf_dtypes[leaf] if self.leaf_dtypes else self.dtype

    def epsilon_per_element(self, layout: LeafLayout) -> np.ndarray | float:
        """Machine epsilon of the precision each element was computed in."""
        if not self.leaf_dtypes:
            return epsilon(self.dtype)
        return np.repeat([epsilon(d) for d in self.leaf_dtypes], layout.sizes)

    def estimates(self, probes: Probes) -> Estimates:
        if self.answered is not None:
            return self.answered
        assert self.gradient is not None and self.noise is not None
        values = probes.project(self.gradient)
        nan = np.full(probes.count, np.nan)
        noise = probes.project_magnitude(self.noise)
        return Estimates(values, noise, np.zeros(probes.count), nan, nan)


def unavailable(name: str, reason: str) -> Source:
    return Source(name, available=False, reason=reason)


def rounding_noise(
    gradient: np.ndarray,
    sensitivity: np.ndarray,
    eps: float | np.ndarray,
    noise_ulps: float,
) -> np.ndarray:
    """The rounding a gradient computed with machine epsilon `eps` may carry."""
    return noise_ulps * eps * (np.abs(gradient) + sensitivity)


def measured_rounding(
    native: np.ndarray, other: np.ndarray, native_dtype: str, other_dtype: str
) -> np.ndarray | None:
    """The rounding in a gradient, measured from a second evaluation.

    With the second evaluation in float64 and the first in a narrower dtype, their
    difference is the first one's rounding error itself: a logic error is present
    in both and cancels. With the first already in float64 and the second in
    float32, the difference is float32's rounding, scaled down by the ratio of the
    epsilons as an estimate of float64's.
    """
    if other.shape != native.shape or not np.all(np.isfinite(other)):
        return None
    difference = np.abs(np.nan_to_num(native) - other)
    return difference * min(1.0, epsilon(native_dtype) / epsilon(other_dtype))


def rounding_sensitivity(
    low: np.ndarray | None, high: np.ndarray, layout: LeafLayout
) -> np.ndarray:
    """How strongly rounding affects each element of a gradient, in units of eps.

    `low` and `high` are the same gradient computed in float32 and in float64. Their
    difference, divided by float32's epsilon, measures how many units of rounding
    the computation of each element accumulates: large where terms cancel (a
    softmax minus a one-hot, a loss of 1e4 with small gradients). One evaluation is
    a random sample of that rounding, so the leaf's mean is added to each element.
    Without a float32 evaluation, the leaf's mean magnitude stands in.
    """
    if low is None or not np.all(np.isfinite(low)):
        raw = np.zeros_like(high)
    else:
        raw = np.abs(low - high) / epsilon("float32")
    sensitivity = raw.copy()
    for offset, size in zip(layout.offsets, layout.sizes, strict=True):
        part = slice(offset, offset + size)
        mean_raw = raw[part].mean()
        floor = mean_raw if low is not None else np.abs(high[part]).mean()
        sensitivity[part] += floor
    return sensitivity


def autodiff_gradient(
    flat_loss: Callable[[Any], Any], x: np.ndarray, probe_float32: bool = True
) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """`jax.grad` of the flat loss at `x` in float64, and again in float32.

    Must be called in the reference-precision context. The float32 evaluation, run
    with x64 off, only measures rounding sensitivity; it is None if it fails or
    `probe_float32` is False. The jaxpr of the gradient comes back too, traced
    once for both, so that its precision can be read.
    """
    traced = jax.jit(jax.grad(flat_loss)).trace(jnp.asarray(x))
    high = np.asarray(traced.lower().compile()(jnp.asarray(x)), np.float64)
    if x.dtype != np.float64 or not probe_float32:
        # A float32 reference has no higher precision to probe.
        return high, None, traced.jaxpr
    try:
        with jax.enable_x64(False):
            low32 = jax.jit(jax.grad(flat_loss))(jnp.asarray(x, jnp.float32))
            low = np.asarray(low32, np.float64)
    except Exception:  # any failure only costs the sensitivity estimate
        low = None
    return high, low, traced.jaxpr


def step_scales(x: np.ndarray, layout: LeafLayout) -> np.ndarray:
    """How far each coordinate moves per unit of relative step: about `|x_i|`.

    Elements near zero move by their leaf's root-mean-square instead (or the whole
    vector's, or 1), so that a zero-initialised bias still gets a sensible step. The
    scale is rounded to a power of two, which keeps `x + step * scale` exact.
    """
    overall = float(np.sqrt(np.mean(x**2))) or 1.0
    scales = np.empty_like(x)
    for offset, size in zip(layout.offsets, layout.sizes, strict=True):
        part = slice(offset, offset + size)
        leaf_rms = float(np.sqrt(np.mean(x[part] ** 2))) or overall
        scales[part] = np.maximum(np.abs(x[part]), leaf_rms)
    return 2.0 ** np.round(np.log2(scales))


def fd_estimates(
    flat_loss: Callable[[Any], Any],
    x: np.ndarray,
    probes: Probes,
    scales: np.ndarray,
    *,
    method: str,
    step: float | None,
    loss_epsilon: float,
    batch_size: int,
    traceable: bool,
) -> Estimates:
    """Finite differences answering every probe, in units of the gradient."""
    coordinate_scale = scales[probes.coordinates]
    directions = Directions.coordinates(probes.coordinates, coordinate_scale, x.size)
    if probes.vectors.shape[0]:
        directions = directions.concatenate(Directions.dense_vectors(probes.vectors))
    result = finite_differences(
        flat_loss,
        x,
        directions,
        method=method,
        step=step,
        epsilon=loss_epsilon,
        batch_size=batch_size,
        traceable=traceable,
    )

    # A coordinate direction moves x_i by `scale_i` per unit step, so its
    # derivative is scale_i * g_i; dividing brings every probe to gradient units.
    unit = np.concatenate([coordinate_scale, np.ones(probes.vectors.shape[0])])
    return Estimates(
        values=result.derivative / unit,
        noise=result.error / unit,
        kink=result.kink / unit,
        left=result.left / unit,
        right=result.right / unit,
    )
