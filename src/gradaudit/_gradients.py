"""Running the hand-written gradient and jax.grad, and attaching to each the rounding
its arithmetic can explain."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._loss import LossTrace, copied_args
from ._paths import LeafLayout
from ._precision import is_floating, lowest_precision, narrowing_casts
from ._sources import (
    Source,
    autodiff_gradient,
    measured_rounding,
    rounding_noise,
    rounding_sensitivity,
    unavailable,
)
from ._validate import Params, call_user_function, validate_gradient_tree


def autodiff_source(
    flat_loss: Callable[[Any], Any],
    x: np.ndarray,
    traced: LossTrace,
    loss_dtype: np.dtype,
    probe_float32: bool = True,
) -> tuple[Source, np.ndarray | None]:
    """`jax.grad` as a source, and its float32 twin for measuring rounding.

    `probe_float32=False` skips the twin, for a loss that computes something else
    with x64 off (one that draws random numbers).
    """
    if not traced.ok:
        return unavailable("autodiff", f"the loss is {traced.reason}"), None
    try:
        high, low, backward = autodiff_gradient(flat_loss, x, probe_float32)
        # A custom rule's backward pass can cast to float32 where the forward pass
        # does not; the loss's own jaxpr does not show it, the gradient's does.
        narrowing = narrowing_casts(backward.jaxpr, x.dtype.name)
    except Exception as error:
        first_line = str(error).splitlines()[0][:200] if str(error) else ""
        reason = f"jax.grad failed: {type(error).__name__}: {first_line}"
        return unavailable("autodiff", reason), None
    dtype = lowest_precision(loss_dtype, *narrowing).name
    note = "jax.grad" + (
        f" (its backward pass computes in {', '.join(sorted(narrowing))})"
        if narrowing and dtype != np.dtype(loss_dtype).name
        else ""
    )
    return Source("autodiff", True, note, dtype, high), low


def manual_source(
    grad: Callable[..., Any],
    checked: Params,
    args: tuple[Any, ...],
    measure_rounding: bool = True,
) -> Source:
    """The hand-written gradient as a source, called as the user wrote it.

    With `measure_rounding`, it is called once more in another precision to
    measure its rounding (see `_manual_rounding`).
    """
    raw = call_user_function(
        grad, (checked.native_tree(), *copied_args(args)), "manual"
    )
    leaves = validate_gradient_tree(raw, checked.layout)
    dtypes = [
        lowest_precision(param_dtype, leaf.dtype)
        if np.issubdtype(leaf.dtype, np.floating) or leaf.dtype.name == "bfloat16"
        else param_dtype
        for param_dtype, leaf in zip(checked.dtypes, leaves, strict=True)
    ]
    dtype = lowest_precision(*dtypes).name
    flat = np.concatenate([leaf.astype(np.float64).ravel() for leaf in leaves])
    rounding = (
        _manual_rounding(grad, checked, args, flat, dtype) if measure_rounding else None
    )
    mixed = len({d.name for d in dtypes}) > 1
    return Source(
        "manual",
        True,
        "as written",
        dtype,
        flat,
        rounding=rounding,
        leaf_dtypes=tuple(d.name for d in dtypes) if mixed else (),
    )


def _manual_rounding(
    grad: Callable[..., Any],
    checked: Params,
    args: tuple[Any, ...],
    native: np.ndarray,
    native_dtype: str,
) -> np.ndarray | None:
    """Run the hand-written gradient once more in another precision.

    float64 when it computed in something narrower, float32 when it computed in
    float64: the difference measures its own rounding (`measured_rounding`). This
    is a measurement only, so a gradient that refuses the other dtype costs
    nothing but the measurement.
    """
    other = "float32" if native_dtype == "float64" else "float64"
    try:
        with jax.enable_x64(other == "float64"):
            raw = grad(checked.native_tree(other), *_cast_floats(args, other))
            leaves = validate_gradient_tree(raw, checked.layout)
    except Exception:  # the measurement is optional; the first call already passed
        return None
    flat = np.concatenate([leaf.astype(np.float64).ravel() for leaf in leaves])
    return measured_rounding(native, flat, native_dtype, other)


def _cast_floats(args: tuple[Any, ...], dtype: str) -> tuple[Any, ...]:
    """Copies of `args` with every floating array cast to `dtype`."""

    def convert(leaf: Any) -> Any:
        if isinstance(leaf, np.ndarray | jax.Array | np.generic) and is_floating(
            leaf.dtype
        ):
            if isinstance(leaf, jax.Array):
                return jnp.asarray(leaf, dtype)
            return np.array(leaf, dtype=dtype)
        return leaf.copy() if isinstance(leaf, np.ndarray) else leaf

    return tuple(jax.tree_util.tree_map(convert, args))


def sensitivity_of(
    found: dict[str, Source], low: np.ndarray | None, layout: LeafLayout
) -> np.ndarray:
    reference = found.get("autodiff") or found.get("manual")
    if reference is None or reference.gradient is None:
        reference = found.get("manual")
    if reference is None or reference.gradient is None:
        return np.zeros(layout.total_size)
    high = np.nan_to_num(reference.gradient, nan=0.0, posinf=0.0, neginf=0.0)
    if reference.name != "autodiff":
        low = None
    return rounding_sensitivity(low, high, layout)


def with_noise(
    found: dict[str, Source],
    sensitivity: np.ndarray,
    noise_ulps: float,
    layout: LeafLayout,
) -> dict[str, Source]:
    """Attach each gradient's rounding allowance (see `_tolerance`).

    The allowance is `noise_ulps` units of the rounding that the measured
    sensitivity predicts, or twice the rounding measured directly for the
    hand-written gradient, whichever is larger.
    """
    result = {}
    for name, source in found.items():
        if source.gradient is not None:
            noise = rounding_noise(
                np.nan_to_num(source.gradient),
                sensitivity,
                source.epsilon_per_element(layout),
                noise_ulps,
            )
            if source.rounding is not None:
                noise = np.maximum(noise, 2.0 * source.rounding)
            source = dataclasses.replace(source, noise=noise)
        result[name] = source
    return result


def disagreement(
    found: dict[str, Source], sensitivity: np.ndarray
) -> np.ndarray | None:
    manual, autodiff = found.get("manual"), found.get("autodiff")
    if not (manual and autodiff and manual.available and autodiff.available):
        return None
    assert manual.gradient is not None and autodiff.gradient is not None
    assert manual.noise is not None and autodiff.noise is not None
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(manual.gradient - autodiff.gradient) / (
            manual.noise + autodiff.noise + 1e-300
        )
