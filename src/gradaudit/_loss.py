"""Evaluating the user's loss: safe copies of the data, determinism, tracing, and
the precision it really computes in."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params

from ._errors import NondeterministicLossError, SourceFailedError
from ._paths import LeafLayout
from ._precision import epsilon, is_floating, lowest_precision, narrowing_casts
from ._validate import call_user_function, check_loss_value

# Two evaluations of a deterministic loss at the same point agree to the last bit
# on one device; a few ulps of slack allow for reductions whose order may vary.
_DETERMINISM_ULPS = 64.0


def reference_args(args: tuple[Any, ...], dtype: str = "float64") -> tuple[Any, ...]:
    """Floating data in the reference dtype; everything else as it is.

    numpy arrays are copied, so a loss that writes into its inputs cannot change
    the user's data.
    """

    def convert(leaf: Any) -> Any:
        if isinstance(leaf, np.ndarray | jax.Array | np.generic):
            if is_floating(leaf.dtype):
                return np.array(leaf, dtype=dtype)
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


@dataclasses.dataclass(frozen=True)
class LossValue:
    """The loss at `params`, and how it had to be called to get it.

    Attributes:
        value: the loss.
        dtype: the dtype of what the loss returned (float32 for a numpy loss that
            computes in float32, even when the input was float64).
        host_arrays: `"jax"` or `"numpy"`, the array type the loss accepted for its
            parameters when called from Python.
    """

    value: float
    dtype: np.dtype
    host_arrays: str


def _host_tree(layout: LeafLayout, x: np.ndarray, host_arrays: str) -> Any:
    flat = jnp.asarray(x) if host_arrays == "jax" else x.copy()
    return layout.unflatten(flat)


def evaluate_loss_twice(
    loss: Callable[..., Any], layout: LeafLayout, x: np.ndarray, args: tuple[Any, ...]
) -> LossValue:
    """Evaluate the loss twice at `params`: a finite scalar, and the same both times.

    The parameters are passed as JAX arrays, as most losses expect; a loss that
    needs numpy arrays (one that writes into them, say) is called with those
    instead. Only when both fail is the loss reported as raising, with the error
    the JAX call gave.
    """
    try:
        host_arrays = "jax"
        raw = call_user_function(
            loss, (_host_tree(layout, x, "jax"), *copied_args(args)), "loss"
        )
    except SourceFailedError as jax_failure:
        try:
            host_arrays = "numpy"
            raw = call_user_function(
                loss, (_host_tree(layout, x, "numpy"), *copied_args(args)), "loss"
            )
        except SourceFailedError:
            raise jax_failure from jax_failure.__cause__
    first = check_loss_value(raw, "at `params`")
    again = call_user_function(
        loss, (_host_tree(layout, x, host_arrays), *copied_args(args)), "loss"
    )
    second = check_loss_value(again, "at `params`")
    if abs(first - second) > _DETERMINISM_ULPS * epsilon(x.dtype) * abs(first):
        raise NondeterministicLossError(
            f"The loss returned {first!r} and then {second!r} for the same `params`"
            f" and `args` (a spread of {abs(first - second):.3g},"
            f" {abs(first - second) / max(abs(first), 1e-300):.3g} of its value),"
            " so no gradient of it can be checked. If it draws random"
            " numbers (dropout, noise, sampling), pass a fixed PRNG key through"
            " `args` (e.g. `jax.random.key(0)`) or seed the generator inside it.",
            first=first,
            second=second,
        )
    dtype = np.dtype(getattr(raw, "dtype", x.dtype))
    return LossValue(first, dtype, host_arrays)


@dataclasses.dataclass(frozen=True)
class LossTrace:
    """What tracing the loss revealed.

    `reason` completes "the loss is ..." when `ok` is False: why jax.grad and
    batched finite differences cannot run.
    """

    ok: bool
    reason: str
    loss_dtype: np.dtype
    narrowing: tuple[str, ...]
    fd_note: str
    rules: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    draws: tuple[tuple[str, ...], ...] = ()

    @property
    def draws_random(self) -> bool:
        return bool(self.draws)


def trace_loss(
    loss: Callable[..., Any], layout: LeafLayout, x: np.ndarray, args: tuple[Any, ...]
) -> LossTrace:
    """Find out whether JAX can trace the loss, and what precision it computes in."""

    def traced(flat: Any) -> Any:
        return loss(layout.unflatten(flat), *device_args(args))

    try:
        closed = jax.make_jaxpr(traced)(jnp.asarray(x))
        # Finite differences evaluate many points side by side with jax.vmap; a
        # loss that JAX traces but cannot batch (a `pure_callback` without a
        # `vmap_method`) is evaluated point by point on the host instead.
        try:
            jax.eval_shape(jax.vmap(traced), jnp.asarray(x)[None])
        except Exception as error:
            raise _NotBatchable(
                f"traceable by JAX but not batchable by jax.vmap ({_first_line(error)})"
            ) from error
    except Exception as error:
        if isinstance(error, _NotBatchable):
            reason = str(error)
        else:
            reason = f"not traceable by JAX ({_first_line(error)})"
        return LossTrace(
            False,
            reason,
            np.dtype(x.dtype),
            (),
            f"evaluated on the host, one point at a time (the loss is {reason})",
        )
    # A non-float output is refused when the loss is evaluated; until then it
    # says nothing about precision.
    out_dtype = closed.out_avals[0].dtype
    floating_out = (np.dtype(out_dtype),) if is_floating(out_dtype) else ()
    narrowing = tuple(sorted(narrowing_casts(closed.jaxpr, x.dtype.name)))
    loss_dtype = lowest_precision(x.dtype, *floating_out, *narrowing)
    return LossTrace(
        True,
        "",
        loss_dtype,
        narrowing,
        "one jitted program on the device",
        special_rules(closed.jaxpr),
        random_draws(closed.jaxpr),
    )


# The primitives through which jax.random turns a key into random bits.
_RANDOM_PRIMITIVES = frozenset(
    {"random_bits", "threefry2x32", "rng_bit_generator", "rng_uniform"}
)


def random_draws(jaxpr: Any) -> tuple[tuple[str, ...], ...]:
    """The random bits a jaxpr draws from keys, sub-jaxprs included, in order.

    Each draw is named by its primitive and the dtype and shape of the bits it
    makes. What `jax.random` draws depends on the dtype it draws for (a float64
    uniform takes 64 bits a number, a float32 one 32), which follows x64 and, with
    `dtype=w.dtype`, the parameters. Two traces of a loss draw the same numbers
    from the same key exactly when these signatures match.
    """
    found: list[tuple[str, ...]] = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _RANDOM_PRIMITIVES:
            found.append(
                (eqn.primitive.name,)
                + tuple(f"{v.aval.dtype}{list(v.aval.shape)}" for v in eqn.outvars)
            )
        for sub in jaxprs_in_params(eqn.params):
            found.extend(random_draws(sub))
    return tuple(found)


def draws_in_session(
    loss: Callable[..., Any], native_params: Any, args: tuple[Any, ...]
) -> tuple[tuple[str, ...], ...] | None:
    """The random draws of the loss as the user's own session runs it.

    Traced with the user's parameters in their own dtypes and the user's JAX
    settings; None when it cannot be traced that way.
    """
    try:
        closed = jax.make_jaxpr(lambda p: loss(p, *device_args(args)))(native_params)
    except Exception:  # then only the reference's own trace can tell
        return None
    return random_draws(closed.jaxpr)


class _NotBatchable(Exception):
    """The loss traces, but jax.vmap cannot batch it."""


def _first_line(error: BaseException) -> str:
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {text}"


_SPECIAL_RULES = ("stop_gradient", "custom_vjp_call", "custom_jvp_call")
_JAX_SOURCE = os.path.dirname(jax.__file__)


def special_rules(jaxpr: Any) -> dict[str, tuple[str, ...]]:
    """Where a jaxpr, sub-jaxprs included, stops or overrides differentiation.

    `stop_gradient` and custom rules make jax.grad differ from the derivative of
    the loss's values on purpose, and are the first suspects when it does. Custom
    rules are named by the function they decorate ("softplus at model.py:12");
    JAX's own (`logaddexp`, `relu`, ...) are left out, since they are not where a
    user's bug lives.
    """
    found: dict[str, list[str]] = {}
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "stop_gradient":
            found.setdefault(name, []).append(name)
        elif name in _SPECIAL_RULES:
            where = _rule_source(eqn.params.get("call_jaxpr"))
            if where is not None and _JAX_SOURCE not in where:
                found.setdefault(name, []).append(_short_source(where))
        for sub in jaxprs_in_params(eqn.params):
            for inner, labels in special_rules(sub).items():
                found.setdefault(inner, []).extend(labels)
    return {name: tuple(labels) for name, labels in found.items()}


def _rule_source(call_jaxpr: Any) -> str | None:
    info = getattr(getattr(call_jaxpr, "jaxpr", call_jaxpr), "debug_info", None)
    return getattr(info, "func_src_info", None)


def _short_source(where: str) -> str:
    """ "softplus at /long/path/model.py:12" as "softplus at model.py:12"."""
    name, _, location = where.partition(" at ")
    return f"{name} at {os.path.basename(location)}" if location else where


def flat_loss_function(
    loss: Callable[..., Any],
    layout: LeafLayout,
    args: tuple[Any, ...],
    traceable: bool,
    host_arrays: str = "numpy",
) -> Callable[[Any], Any]:
    """The loss as a function of one flat vector: traced, or called from Python.

    The loss already ran once when called directly; if it raises here, inside a
    compiled, batched or differentiated program, that is named as such.
    """
    if traceable:

        def traced(flat: Any) -> Any:
            # The output takes the input's dtype, so the same function serves the
            # float64 reference and the float32 sensitivity probe.
            with _named_failure("traced by jax.jit, jax.vmap or jax.grad"):
                value = loss(layout.unflatten(flat), *device_args(args))
            return jnp.asarray(value).astype(flat.dtype)

        return traced

    def on_host(flat: Any) -> float:
        with _named_failure("called at a point near `params`"):
            return float(
                loss(_host_tree(layout, flat, host_arrays), *copied_args(args))
            )

    return on_host


@contextlib.contextmanager
def _named_failure(how: str) -> Iterator[None]:
    """Turn an error of the loss, evaluated by gradaudit, into a named one."""
    try:
        yield
    except SourceFailedError:
        raise
    except Exception as error:
        raise SourceFailedError(
            f"When {how} in gradaudit's reference, the loss raised"
            f" {_first_line(error).rstrip('.')}. It ran when called directly at"
            " `params`, so look"
            " for code that behaves differently under those transformations or"
            " with x64 on (a function jax.jit compiled with x64 off can fail when"
            " called again with x64 on, in the same process).",
            source="loss",
        ) from error


# A relative perturbation of 2**-14 moves a float32 loss by hundreds of its ulps,
# so its rounding behaves like noise rather than a staircase, while the smooth part
# of the fourth difference below (of order step**4, 1.4e-17) stays under float64's
# epsilon.
_NOISE_STEP = 2.0**-14
# The fourth difference f(-2h) - 4 f(-h) + 6 f(0) - 4 f(h) + f(2h) of values with
# independent rounding errors of size sigma has a spread of sqrt(70) sigma.
_FOURTH_DIFFERENCE_SPREAD = float(np.sqrt(70.0))


def measure_loss_noise(
    flat_loss: Callable[[Any], Any],
    x: np.ndarray,
    scales: np.ndarray,
    rng: np.random.Generator,
    traceable: bool,
    directions: int = 8,
) -> float:
    """The loss's rounding noise at `x`, relative to its value, measured.

    The dtype a loss returns does not always say how precisely it computes: a numpy
    loss may work in float32 and return a Python float. The fourth difference along
    a few random directions cancels the smooth part of the loss and leaves its
    rounding; the median over directions ignores one that happens to cross a kink.

    Warning:
        A kink exactly at `x` shows in every direction and inflates the estimate,
        which makes the finite-difference steps larger than they need to be.
    """
    offsets = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    weights = np.array([1.0, -4.0, 6.0, -4.0, 1.0])
    vectors = scales * rng.standard_normal((directions, x.size))
    points = x[None, None, :] + _NOISE_STEP * offsets[None, :, None] * vectors[:, None]
    points = points.reshape(-1, x.size)
    if traceable:
        values = np.asarray(jax.jit(jax.vmap(flat_loss))(jnp.asarray(points)))
    else:
        values = np.array([flat_loss(point) for point in points])
    values = values.reshape(directions, offsets.size)
    if not np.all(np.isfinite(values)):
        return 0.0
    spread = np.abs(values @ weights) / _FOURTH_DIFFERENCE_SPREAD
    magnitude = max(float(np.max(np.abs(values))), np.finfo(np.float64).tiny)
    return float(np.median(spread)) / magnitude
