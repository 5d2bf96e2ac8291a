"""`check` and `assert_gradients`: the three-way gradient check."""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _compare as compare
from ._errors import GradientMismatchError, NondeterministicLossError
from ._finite_diff import _OFFSETS, METHODS, Directions, finite_differences
from ._paths import LeafLayout
from ._plan import (
    MODES,
    full_probes,
    measure_evaluation_seconds,
    plan_probes,
    resolve_mode,
)
from ._precision import epsilon, lowest_precision, narrowing_casts, reference_precision
from ._report import PAIRS, KinkNote, Report, Settings, SourceInfo
from ._sources import (
    SOURCE_NAMES,
    Estimates,
    Probes,
    Source,
    autodiff_gradient,
    fd_estimates,
    measured_rounding,
    rounding_noise,
    rounding_sensitivity,
    step_scales,
    unavailable,
)
from ._tolerance import Tolerance
from ._validate import (
    Params,
    call_user_function,
    check_loss_value,
    validate_gradient_tree,
    validate_params,
)

# Two evaluations of a deterministic loss at the same point agree to the last bit
# on one device; a few ulps of slack allow for reductions whose order may vary.
_DETERMINISM_ULPS = 64.0


def check(
    loss: Callable[..., Any],
    params: Any,
    *args: Any,
    grad: Callable[..., Any] | None = None,
    mode: str = "auto",
    method: str = "central",
    rtol: float | None = None,
    atol: float = 0.0,
    step: float | None = None,
    seed: int = 0,
    samples_per_leaf: int = 16,
    directions_per_leaf: int = 4,
    time_budget: float = 10.0,
    memory_budget: int = 2**30,
    sources: Sequence[str] = SOURCE_NAMES,
    floor_fraction: float = 1e-3,
    noise_ulps: float = 8.0,
) -> Report:
    """Compare a hand-written gradient with `jax.grad` and finite differences.

    All three gradients are of the same function, `loss(params, *args)`, taken with
    respect to `params`. The hand-written gradient runs as written, in the dtype of
    `params`; `jax.grad` and finite differences run as a float64 reference with
    matmul precision forced to `highest`, whatever the dtype of `params`.

    Each element is judged by the rule in `docs/tolerances.md`:
    `|a - b| <= atol + rtol * (|ref| + floor_fraction * leaf_scale) + noise_a +
    noise_b`, where each noise term is what that source's arithmetic can explain
    (measured rounding sensitivity for gradients, the stencil's own error estimate
    for finite differences). Nothing is scaled by array size. Elements where finite
    differences cannot be trusted (a kink, or an error estimate as large as the
    value) are left out of the pairs that involve finite differences and listed.

    Args:
        loss: `loss(params, *args)` returning a scalar float.
        params: a pytree of floating arrays to differentiate with respect to.
        *args: data passed to `loss` and `grad` unchanged (labels, inputs, keys).
        grad: the hand-written gradient, `grad(params, *args)`, returning a pytree
            with the structure and leaf shapes of `params`. May be numpy code.
            None compares `jax.grad` with finite differences only.
        mode: `"auto"`, `"full"`, `"sampled"` or `"directional"`; see
            `docs/concepts.md`. `auto` differences every coordinate when that fits
            in `time_budget`, and samples otherwise.
        method: the finite-difference stencil: `"central"`, `"forward"`,
            `"fourth_order"` or `"richardson"`.
        rtol: relative tolerance; None picks it from the precision of each pair
            (1e-8 for float64, 1e-5 for float32, 1e-3 float16, 1e-2 bfloat16).
        atol: absolute tolerance added to every element.
        step: the relative finite-difference step; None picks it from the
            precision the loss computes in (about `eps ** (1/3)` for central).
        seed: seeds sampled coordinates and random directions.
        samples_per_leaf: exact coordinates per leaf in sampled mode.
        directions_per_leaf: random directions per leaf in directional mode.
        time_budget: seconds of finite differences `auto` may spend on full mode.
        memory_budget: bytes the batched finite differences may hold at once.
        sources: which of `"manual"`, `"autodiff"`, `"fd"` to run.
        floor_fraction: see the tolerance rule.
        noise_ulps: see the tolerance rule.

    Returns:
        A `Report`; `report.ok` is the verdict. It never raises on a mismatch.

    Raises:
        InvalidInputError: (a `ValueError`) empty or non-finite params, a
            non-scalar or non-finite loss, a gradient tree that does not match
            `params`, a loss or gradient function that raises, a loss that is not
            deterministic, or an unknown option.
        InvalidTypeError: (a `TypeError`) non-array, integer, boolean or complex
            leaves, or a loss that returns a non-float.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradaudit
        >>> def loss(w, x):
        ...     return jnp.sum((x @ w) ** 2)
        >>> def grad(w, x):
        ...     return 2 * x.T @ (x @ w)
        >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
        >>> gradaudit.check(loss, jnp.array([0.5, -1.0]), x, grad=grad).ok
        True
    """
    tolerance = Tolerance(rtol, atol, floor_fraction, noise_ulps)
    _check_options(mode, method, step, samples_per_leaf, directions_per_leaf, sources)
    checked = validate_params(params)
    layout = checked.layout
    wanted = set(sources) if grad is not None else set(sources) - {"manual"}

    with reference_precision():
        x = checked.flat64()
        reference_args = _as_reference(args)
        loss_value = _check_loss(loss, layout, x, reference_args)
        traced = _trace(loss, layout, x, reference_args)
        loss_dtype = traced.loss_dtype
        flat_loss = _flat_loss(loss, layout, reference_args, traced.ok)

        found: dict[str, Source] = {}
        low_autodiff = None
        if "autodiff" in wanted:
            found["autodiff"], low_autodiff = _autodiff(
                flat_loss, x, traced, loss_dtype
            )
        if "manual" in wanted and grad is not None:
            found["manual"] = _manual(grad, checked, args)
        sensitivity = _sensitivity(found, low_autodiff, layout)
        found = _with_noise(found, sensitivity, noise_ulps)

        scales = step_scales(x, layout)
        resolved_mode, batch_size = _resolve_mode(
            mode, flat_loss, x, method, traced.ok, time_budget, memory_budget
        )
        rng = np.random.default_rng(seed)
        disagreement = _disagreement(found, sensitivity)
        plan = plan_probes(
            resolved_mode,
            layout,
            scales,
            rng,
            samples_per_leaf,
            directions_per_leaf,
            disagreement,
        )
        fd_epsilon = epsilon(loss_dtype)

        def one_sided(direction: np.ndarray) -> tuple[float, float, float]:
            result = finite_differences(
                flat_loss,
                x,
                Directions.dense_vectors(direction[None, :]),
                method="central" if method == "forward" else method,
                step=step,
                epsilon=fd_epsilon,
                batch_size=1,
                traceable=traced.ok,
            )
            return float(result.left[0]), float(result.right[0]), float(result.error[0])

        fd: Estimates | None = None
        if "fd" in wanted:
            fd = fd_estimates(
                flat_loss,
                x,
                plan.probes,
                scales,
                method=method,
                step=step,
                loss_epsilon=fd_epsilon,
                batch_size=batch_size,
                traceable=traced.ok,
            )
            found["fd"] = Source("fd", True, traced.fd_note, np.dtype(loss_dtype).name)
        else:
            found["fd"] = unavailable("fd", "not requested")
        for name in SOURCE_NAMES:
            if name not in found:
                reason = "no `grad` given" if name == "manual" else "not requested"
                found[name] = unavailable(name, reason)

        leaves, pairs = _compare_all(
            layout, checked, found, fd, plan, tolerance, one_sided, scales
        )

    settings = Settings(
        mode=plan.mode if mode != "auto" else f"{plan.mode} (auto)",
        method=method,
        step=step if step is not None else _default_step(method, fd_epsilon),
        rtol=rtol,
        atol=atol,
        floor_fraction=floor_fraction,
        noise_ulps=noise_ulps,
        seed=seed,
        reference_precision="float64 (x64, matmul precision highest)",
        loss_precision=np.dtype(loss_dtype).name,
        samples_per_leaf=samples_per_leaf if "sampled" in plan.mode else None,
        directions_per_leaf=directions_per_leaf if "directional" in plan.mode else None,
        batch_size=batch_size,
        device=_device(),
        versions=_versions(),
    )
    source_info = {
        name: SourceInfo(name, s.available, s.dtype if s.available else None, s.reason)
        for name, s in found.items()
    }
    findings = _findings(traced, checked, leaves, loss_value)
    ok = all(leaf.ok for leaf in leaves)
    return Report(ok, tuple(leaves), pairs, source_info, settings, tuple(findings))


def assert_gradients(
    loss: Callable[..., Any], params: Any, *args: Any, **options: Any
) -> Report:
    """Like `check`, but raise `GradientMismatchError` unless the gradients agree.

    Takes the same arguments as `check`. Inside pytest the failure is reported as a
    test failure at the caller's line, with the report's summary as the message.

    Returns:
        The `Report`, when it is OK.

    Raises:
        GradientMismatchError: (an `AssertionError`) carrying the `Report`.

    Example:
        >>> import jax.numpy as jnp
        >>> import gradaudit
        >>> def loss(w):
        ...     return jnp.sum(w**3)
        >>> def wrong_grad(w):
        ...     return 3 * w  # should be 3 * w**2
        >>> gradaudit.assert_gradients(loss, jnp.array([1.0, 2.0]), grad=wrong_grad)
        Traceback (most recent call last):
        ...
        gradaudit._errors.GradientMismatchError: gradaudit: MISMATCH at 1 of 1 leaves.
        ...
    """
    __tracebackhide__ = True
    report = check(loss, params, *args, **options)
    if not report.ok:
        raise GradientMismatchError(report)
    return report


# -- options and inputs -------------------------------------------------------


def _check_options(
    mode: str,
    method: str,
    step: float | None,
    samples_per_leaf: int,
    directions_per_leaf: int,
    sources: Sequence[str],
) -> None:
    if mode not in MODES:
        raise _option_error(f"`mode` must be one of {MODES}, got {mode!r}.")
    if method not in METHODS:
        raise _option_error(f"`method` must be one of {METHODS}, got {method!r}.")
    if step is not None and not (np.isfinite(step) and 0 < step < 1):
        raise _option_error(
            f"`step` is relative to each parameter's magnitude and must lie in"
            f" (0, 1), got {step!r}; leave it as None for a step chosen per dtype."
        )
    for name, value in (
        ("samples_per_leaf", samples_per_leaf),
        ("directions_per_leaf", directions_per_leaf),
    ):
        if not isinstance(value, int) or value < 1:
            raise _option_error(f"`{name}` must be a positive int, got {value!r}.")
    unknown = set(sources) - set(SOURCE_NAMES)
    if unknown or len(set(sources)) < 2:
        raise _option_error(
            f"`sources` must name at least two of {SOURCE_NAMES}, got {tuple(sources)}."
        )


def _option_error(message: str) -> Exception:
    from ._errors import InvalidInputError

    return InvalidInputError(message)


def _as_reference(args: tuple[Any, ...]) -> tuple[Any, ...]:
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


def _copied(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        jax.tree_util.tree_map(
            lambda a: a.copy() if isinstance(a, np.ndarray) else a, args
        )
    )


def _check_loss(
    loss: Callable[..., Any], layout: LeafLayout, x: np.ndarray, args: tuple[Any, ...]
) -> float:
    """Evaluate the loss twice at `params`: a finite scalar, and the same both times."""
    values = []
    for _ in range(2):
        tree = layout.unflatten(x.copy())
        raw = call_user_function(loss, (tree, *_copied(args)), "loss")
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
class _Trace:
    ok: bool
    reason: str
    loss_dtype: np.dtype
    narrowing: tuple[str, ...]
    fd_note: str


def _trace(
    loss: Callable[..., Any], layout: LeafLayout, x: np.ndarray, args: tuple[Any, ...]
) -> _Trace:
    """Find out whether JAX can trace the loss, and what precision it computes in."""
    try:
        closed = jax.make_jaxpr(lambda flat: loss(layout.unflatten(flat), *args))(
            jnp.asarray(x)
        )
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        return _Trace(
            False,
            reason,
            np.dtype(np.float64),
            (),
            "evaluated on the host, one point at a time (the loss is not traceable)",
        )
    out_dtype = np.dtype(closed.out_avals[0].dtype)
    narrowing = tuple(sorted(narrowing_casts(closed.jaxpr)))
    loss_dtype = lowest_precision(np.float64, out_dtype, *narrowing)
    return _Trace(True, "", loss_dtype, narrowing, "one jitted program on the device")


def _flat_loss(
    loss: Callable[..., Any], layout: LeafLayout, args: tuple[Any, ...], traceable: bool
) -> Callable[[Any], Any]:
    if traceable:
        # The output takes the input's dtype, so the same function serves the
        # float64 reference and the float32 sensitivity probe.
        return lambda flat: jnp.asarray(loss(layout.unflatten(flat), *args)).astype(
            flat.dtype
        )
    return lambda flat: float(loss(layout.unflatten(flat.copy()), *_copied(args)))


def _autodiff(
    flat_loss: Callable[[Any], Any], x: np.ndarray, traced: _Trace, loss_dtype: np.dtype
) -> tuple[Source, np.ndarray | None]:
    if not traced.ok:
        return unavailable(
            "autodiff", f"the loss is not traceable ({traced.reason})"
        ), None
    try:
        high, low = autodiff_gradient(flat_loss, x)
    except Exception as error:
        first_line = str(error).splitlines()[0][:200] if str(error) else ""
        reason = f"jax.grad failed: {type(error).__name__}: {first_line}"
        return unavailable("autodiff", reason), None
    return Source("autodiff", True, "jax.grad", np.dtype(loss_dtype).name, high), low


def _manual(grad: Callable[..., Any], checked: Params, args: tuple[Any, ...]) -> Source:
    raw = call_user_function(grad, (checked.native_tree(), *_copied(args)), "manual")
    leaves = validate_gradient_tree(raw, checked.layout)
    dtypes = [
        lowest_precision(param_dtype, leaf.dtype)
        if np.issubdtype(leaf.dtype, np.floating) or leaf.dtype.name == "bfloat16"
        else param_dtype
        for param_dtype, leaf in zip(checked.dtypes, leaves, strict=True)
    ]
    dtype = lowest_precision(*dtypes).name
    flat = np.concatenate([leaf.astype(np.float64).ravel() for leaf in leaves])
    rounding = _manual_rounding(grad, checked, args, flat, dtype)
    return Source("manual", True, "as written", dtype, flat, rounding=rounding)


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
        if isinstance(leaf, np.ndarray | jax.Array | np.generic) and (
            np.issubdtype(np.dtype(leaf.dtype), np.floating)
            or np.dtype(leaf.dtype).name == "bfloat16"
        ):
            if isinstance(leaf, jax.Array):
                return jnp.asarray(leaf, dtype)
            return np.array(leaf, dtype=dtype)
        return leaf.copy() if isinstance(leaf, np.ndarray) else leaf

    return tuple(jax.tree_util.tree_map(convert, args))


def _sensitivity(
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


def _with_noise(
    found: dict[str, Source], sensitivity: np.ndarray, noise_ulps: float
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
                np.nan_to_num(source.gradient), sensitivity, source.dtype, noise_ulps
            )
            if source.rounding is not None:
                noise = np.maximum(noise, 2.0 * source.rounding)
            source = dataclasses.replace(source, noise=noise)
        result[name] = source
    return result


def _disagreement(
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


def _resolve_mode(
    mode: str,
    flat_loss: Callable[[Any], Any],
    x: np.ndarray,
    method: str,
    traceable: bool,
    time_budget: float,
    memory_budget: int,
) -> tuple[str, int]:
    """The concrete mode, and how many directions to evaluate side by side."""
    per_direction = len(_OFFSETS[method])
    if traceable:
        compiled = jax.jit(flat_loss).lower(jnp.asarray(x)).compile()
        point = jnp.asarray(x)
        seconds = measure_evaluation_seconds(
            lambda: compiled(point).block_until_ready()
        )
        batch_size = _batch_size(compiled, x, per_direction, memory_budget)
    else:
        seconds = measure_evaluation_seconds(lambda: flat_loss(x.copy()), repeats=1)
        batch_size = 1
    return resolve_mode(mode, x.size, per_direction, seconds, time_budget), batch_size


def _batch_size(compiled: Any, x: np.ndarray, per_direction: int, budget: int) -> int:
    """How many directions to vmap together, within the memory budget.

    Each direction in flight holds its own copies of the parameter vector and the
    loss's intermediates at every stencil point. On a CPU, measured on two cores, an
    on-device loop over single directions beats wide batches (each batch pays for
    copying all of the parameters), so CPUs get small batches; accelerators get as
    many as the budget allows.
    """
    try:
        analysis = compiled.memory_analysis()
        temporary = int(getattr(analysis, "temp_size_in_bytes", 0) or 0)
    except Exception:  # not every backend reports it; fall back to the vector size
        temporary = 0
    per_point = temporary + 3 * x.nbytes
    fits = max(1, budget // max(1, per_point * per_direction))
    ceiling = 4 if jax.default_backend() == "cpu" else 4096
    return int(min(fits, ceiling))


def _default_step(method: str, fd_epsilon: float) -> float:
    from ._finite_diff import default_step

    return default_step(method, fd_epsilon)


# -- comparison ---------------------------------------------------------------


def _compare_all(
    layout: LeafLayout,
    checked: Params,
    found: dict[str, Source],
    fd: Estimates | None,
    plan: Any,
    tolerance: Tolerance,
    one_sided: compare.OneSidedSlopes,
    scales: np.ndarray,
) -> tuple[list[Any], dict[str, Any]]:
    """Judge every available pair and assemble per-leaf results."""
    fd_probes: Probes = plan.probes
    every = full_probes(layout, plan)
    manual, autodiff = found["manual"], found["autodiff"]
    leaf_scale = compare.leaf_scales(layout, found, fd_probes, fd)
    floor_fd = compare.probe_floor(fd_probes, layout, leaf_scale, tolerance)
    floor_all = compare.probe_floor(every, layout, leaf_scale, tolerance)
    n_fd = fd_probes.count
    dtype_of = {name: source.dtype for name, source in found.items()}

    estimates_fd = {
        name: found[name].estimates(fd_probes)
        for name in ("manual", "autodiff")
        if found[name].available
    }
    if fd is not None:
        estimates_fd["fd"] = fd

    # Where finite differences can be trusted.
    reliability = None
    if fd is not None:
        reference = (
            estimates_fd["autodiff"].values if "autodiff" in estimates_fd else fd.values
        )
        rtol_fd = tolerance.rtol_for(dtype_of["fd"])
        core = tolerance.atol + rtol_fd * (np.abs(reference) + floor_fd)
        reliability = compare.fd_reliability(fd, reference, floor_fd, core)

    judgements: dict[str, compare.PairJudgement] = {}
    kink_invalid_leaves: set[int] = set()
    kink_notes: dict[int, list[KinkNote]] = {}

    # manual vs autodiff: every element, with valid choices at kinks excused.
    if manual.available and autodiff.available:
        rtol = tolerance.rtol_for(dtype_of["manual"], dtype_of["autodiff"])
        excused_all = np.zeros(every.count, bool)
        if fd is not None and reliability is not None:
            on_fd = compare.judge_pair(
                "manual-autodiff",
                fd_probes,
                layout,
                estimates_fd["manual"],
                estimates_fd["autodiff"],
                estimates_fd["autodiff"].values,
                rtol,
                tolerance,
                floor_fd,
                np.zeros(n_fd, bool),
            )
            coordinate = np.arange(n_fd) < fd_probes.coordinates.size
            kink = reliability.kink & coordinate
            slack = on_fd.tol + fd.noise
            excused, joint = compare.excuse_kinks(
                estimates_fd["manual"],
                estimates_fd["autodiff"],
                fd,
                kink,
                on_fd.mismatch,
                slack,
                np.concatenate(
                    [scales[fd_probes.coordinates], np.zeros(n_fd - coordinate.sum())]
                ),
                one_sided,
                layout.total_size,
                np.concatenate(
                    [fd_probes.coordinates, np.zeros(n_fd - coordinate.sum(), np.int64)]
                ),
            )
            excused_all[fd_probes.coordinates[excused[coordinate]]] = True
            manual_valid = compare.is_valid_choice(
                estimates_fd["manual"].values, fd.left, fd.right, slack
            )
            leaf_of = fd_probes.leaf_numbers(layout)
            for p in np.flatnonzero(kink):
                leaf = int(leaf_of[p])
                if (
                    on_fd.mismatch[p]
                    and not excused[p]
                    and (not manual_valid[p] or not joint["manual"])
                ):
                    kink_invalid_leaves.add(leaf)
                kink_notes.setdefault(leaf, []).append(
                    KinkNote(
                        index=layout.leaf_of(int(fd_probes.coordinates[p]))[1],
                        left=float(fd.left[p]),
                        right=float(fd.right[p]),
                        manual=float(estimates_fd["manual"].values[p]),
                        manual_choice=_choice(
                            estimates_fd["manual"].values[p],
                            fd,
                            p,
                            slack,
                            joint["manual"],
                        ),
                        autodiff=float(estimates_fd["autodiff"].values[p]),
                        autodiff_choice=_choice(
                            estimates_fd["autodiff"].values[p],
                            fd,
                            p,
                            slack,
                            joint["autodiff"],
                        ),
                    )
                )
        judgements["manual-autodiff"] = compare.judge_pair(
            "manual-autodiff",
            every,
            layout,
            manual.estimates(every),
            autodiff.estimates(every),
            autodiff.estimates(every).values,
            rtol,
            tolerance,
            floor_all,
            np.zeros(every.count, bool),
            excused_all,
        )
    elif fd is not None and reliability is not None:
        # Without both gradients, kinks are still worth listing.
        leaf_of = fd_probes.leaf_numbers(layout)
        for p in np.flatnonzero(reliability.kink[: fd_probes.coordinates.size]):
            leaf = int(leaf_of[p])
            values = {
                n: float(e.values[p]) for n, e in estimates_fd.items() if n != "fd"
            }
            kink_notes.setdefault(leaf, []).append(
                KinkNote(
                    layout.leaf_of(int(fd_probes.coordinates[p]))[1],
                    float(fd.left[p]),
                    float(fd.right[p]),
                    values.get("manual"),
                    "-",
                    values.get("autodiff"),
                    "-",
                )
            )

    for first in ("manual", "autodiff"):
        if fd is None or reliability is None or first not in estimates_fd:
            continue
        name = f"{first}-fd"
        reference = (
            estimates_fd["autodiff"].values if "autodiff" in estimates_fd else fd.values
        )
        judgements[name] = compare.judge_pair(
            name,
            fd_probes,
            layout,
            estimates_fd[first],
            fd,
            reference,
            tolerance.rtol_for(dtype_of[first], dtype_of["fd"]),
            tolerance,
            floor_fd,
            reliability.unreliable,
        )

    fd_position = {int(c): i for i, c in enumerate(fd_probes.coordinates)}

    def values_for(probes: Probes) -> Callable[[int], tuple[float | None, ...]]:
        def lookup(position: int) -> tuple[float | None, ...]:
            if position < probes.coordinates.size:
                coordinate = int(probes.coordinates[position])
                fd_at = fd_position.get(coordinate)
                m = manual.gradient[coordinate] if manual.gradient is not None else None
                a = (
                    autodiff.gradient[coordinate]
                    if autodiff.gradient is not None
                    else None
                )
            else:
                dense = position - probes.coordinates.size
                fd_at = fd_probes.coordinates.size + dense
                v = probes.vectors[dense]
                m = float(v @ manual.gradient) if manual.gradient is not None else None
                a = (
                    float(v @ autodiff.gradient)
                    if autodiff.gradient is not None
                    else None
                )
            f = (
                float(fd.values[fd_at])
                if fd is not None and fd_at is not None
                else None
            )
            return (
                None if m is None else float(m),
                None if a is None else float(a),
                f,
            )

        return lookup

    leaves, per_pair = [], {name: [] for name in PAIRS if name in judgements}
    for leaf in range(len(layout.paths)):
        results = {}
        for name in PAIRS:
            if name in judgements:
                j = judgements[name]
                results[name] = compare.summarise(j, leaf, layout, values_for(j.probes))
                per_pair[name].append(results[name])
        unreliable_indices: tuple[tuple[int, ...], ...] = ()
        if reliability is not None:
            leaf_of = fd_probes.leaf_numbers(layout)
            marked = np.flatnonzero(
                reliability.unreliable[: fd_probes.coordinates.size]
                & (leaf_of[: fd_probes.coordinates.size] == leaf)
            )
            unreliable_indices = tuple(
                layout.leaf_of(int(fd_probes.coordinates[p]))[1] for p in marked
            )
        leaves.append(
            compare.build_leaf(
                leaf,
                layout,
                checked.dtypes[leaf].name,
                results,
                plan.coverage[leaf],
                unreliable_indices,
                tuple(kink_notes.get(leaf, ())),
                leaf in kink_invalid_leaves,
            )
        )
    pairs = {name: compare.total(name, results) for name, results in per_pair.items()}
    return leaves, pairs


def _choice(
    value: float, fd: Estimates, p: int, slack: np.ndarray, joint_ok: bool
) -> str:
    text = compare.kink_choice(
        float(value), float(fd.left[p]), float(fd.right[p]), float(slack[p])
    )
    if not joint_ok and "not a valid" not in text:
        text += ", but jointly with the other tied elements it is not a valid choice"
    return text


# -- settings and findings ----------------------------------------------------


def _device() -> str:
    device = jax.devices()[0]
    return f"{device.platform} ({getattr(device, 'device_kind', 'unknown')})"


def _versions() -> dict[str, str]:
    import jaxlib

    from . import __version__

    return {
        "gradaudit": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _findings(
    traced: _Trace, checked: Params, leaves: list[Any], loss_value: float
) -> list[str]:
    findings = []
    if not traced.ok:
        findings.append(
            "The loss could not be traced by JAX"
            f" ({traced.reason}), so jax.grad is unavailable and finite differences"
            " ran on the host, one evaluation at a time."
        )
    if traced.narrowing or traced.loss_dtype != np.float64:
        casts = ", ".join(traced.narrowing) or traced.loss_dtype.name
        findings.append(
            f"The loss computes in {casts} even when given float64 inputs (it casts"
            " or returns a narrower dtype), so the reference is only as accurate as"
            f" {traced.loss_dtype.name}; steps and tolerances were set for that."
        )
    low = sorted({d.name for d in checked.dtypes if d.name in ("float16", "bfloat16")})
    if low:
        findings.append(
            f"Parameters in {', '.join(low)} were checked against a float64"
            " evaluation of the same loss, never with finite differences in the low"
            " dtype."
        )
    kinks = sum(len(leaf.kinks) for leaf in leaves)
    if kinks:
        findings.append(
            f"The loss has a kink within two steps of {kinks} element(s) (a ReLU,"
            " max or abs at its switch point); finite differences are not used there."
        )
    return findings
