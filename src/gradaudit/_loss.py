"""Evaluating the user's loss: safe copies of the data, determinism, tracing, and
the precision it really computes in."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import NondeterministicLossError
from ._paths import LeafLayout
from ._precision import epsilon, lowest_precision, narrowing_casts
from ._validate import call_user_function, check_loss_value

# Two evaluations of a deterministic loss at the same point agree to the last bit
# on one device; a few ulps of slack allow for reductions whose order may vary.
_DETERMINISM_ULPS = 64.0


def reference_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Floating data in float64 for the reference; everything else as it is.

    numpy arrays are copied, so a loss that writes into its inputs cannot change
    the user's data.
    """

    def convert(leaf: Any) -> Any:
        if isinstance(leaf, np.ndarray | jax.Array | np.generic):
            dtype = np.dtype(leaf.dtype)
            if np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16":
                return np.array(leaf, dtype=np.float64)
            if isinstance(leaf, np.ndarray):
                return leaf.copy()
        return leaf

    return tuple(jax.tree_util.tree_map(convert, args))


def copied_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        jax.tree_util.tree_map(
            lambda a: a.copy() if isinstance(a, np.ndarray) else a, args
        )
    )


def device_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """numpy arrays in `args` as JAX arrays, for the traced loss.

    JAX may keep a numpy array's memory as a constant of the traced program, so a
    loss that writes into its numpy data after using it would change the program's
    constants. Immutable JAX arrays rule that out.
    """
    return tuple(
        jax.tree_util.tree_map(
            lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a, args
        )
    )


def evaluate_loss_twice(
    loss: Callable[..., Any], layout: LeafLayout, x: np.ndarray, args: tuple[Any, ...]
) -> float:
    """Evaluate the loss twice at `params`: a finite scalar, and the same both times."""
    values = []
    for _ in range(2):
        tree = layout.unflatten(x.copy())
        raw = call_user_function(loss, (tree, *copied_args(args)), "loss")
        values.append(check_loss_value(raw, "at `params`"))
    first, second = values
    if abs(first - second) > _DETERMINISM_ULPS * epsilon("float64") * abs(first):
        raise NondeterministicLossError(
            f"The loss returned {first!r} and then {second!r} for the same `params`"
            " and `args`, so no gradient of it can be checked. If it draws random"
            " numbers (dropout, noise, sampling), pass a fixed PRNG key through"
            " `args` (e.g. `jax.random.key(0)`) or seed the generator inside it.",
            first=first,
            second=second,
        )
    return first


@dataclasses.dataclass(frozen=True)
class LossTrace:
    """What tracing the loss revealed."""

    ok: bool
    reason: str
    loss_dtype: np.dtype
    narrowing: tuple[str, ...]
    fd_note: str


def trace_loss(
    loss: Callable[..., Any], layout: LeafLayout, x: np.ndarray, args: tuple[Any, ...]
) -> LossTrace:
    """Find out whether JAX can trace the loss, and what precision it computes in."""
    try:
        closed = jax.make_jaxpr(
            lambda flat: loss(layout.unflatten(flat), *device_args(args))
        )(jnp.asarray(x))
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        return LossTrace(
            False,
            reason,
            np.dtype(np.float64),
            (),
            "evaluated on the host, one point at a time (the loss is not traceable)",
        )
    out_dtype = np.dtype(closed.out_avals[0].dtype)
    narrowing = tuple(sorted(narrowing_casts(closed.jaxpr)))
    loss_dtype = lowest_precision(np.float64, out_dtype, *narrowing)
    return LossTrace(
        True, "", loss_dtype, narrowing, "one jitted program on the device"
    )


def flat_loss_function(
    loss: Callable[..., Any], layout: LeafLayout, args: tuple[Any, ...], traceable: bool
) -> Callable[[Any], Any]:
    if traceable:
        # The output takes the input's dtype, so the same function serves the
        # float64 reference and the float32 sensitivity probe.
        return lambda flat: jnp.asarray(
            loss(layout.unflatten(flat), *device_args(args))
        ).astype(flat.dtype)
    return lambda flat: float(loss(layout.unflatten(flat.copy()), *copied_args(args)))
