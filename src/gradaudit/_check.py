"""`check` and `assert_gradients`: the three-way gradient check."""

from __future__ import annotations

import numbers
import platform
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ._assemble import Comparison, compare_all
from ._batching import measured_batch_size
from ._causes import CheckFacts
from ._diagnose import data_sizes
from ._errors import GradientMismatchError, InvalidInputError
from ._finite_diff import METHODS, Directions, finite_differences, points_per_probe
from ._gradients import (
    autodiff_source,
    disagreement,
    manual_source,
    sensitivity_of,
    with_noise,
)
from ._loss import (
    LossTrace,
    draws_in_session,
    evaluate_loss_twice,
    flat_loss_function,
    measure_loss_noise,
    reference_args,
    trace_loss,
)
from ._plan import MODES, plan_probes, resolve_mode_and_batch, step_for
from ._precision import (
    REFERENCE_DTYPES,
    epsilon,
    lowest_precision,
    reference_precision,
)
from ._report import Report, Settings, SourceInfo
from ._sources import (
    SOURCE_NAMES,
    Estimates,
    Probes,
    Source,
    fd_estimates,
    step_scales,
    unavailable,
)
from ._stability import STEP_DIVISOR, recheck_at_smaller_step
from ._taylor import TaylorResult, convergence_order, is_consistent
from ._taylor import remainders as taylor_remainders
from ._taylor import values_along as taylor_values_along
from ._tolerance import Tolerance, is_non_negative_number
from ._validate import Params, validate_params


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
    precision: str | None = None,
    floor_fraction: float = 1e-3,
    noise_ulps: float = 8.0,
    taylor: bool = False,
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
        precision: the dtype `jax.grad` and finite differences run in:
            `"float64"` (under x64) or `"float32"` (x64 off), for devices without
            float64; the float32 reference is far less able to resolve small
            errors and its tolerances are float32's. None (the default) means
            float64, except for a loss that draws random numbers with
            `jax.random` while x64 is off in your session: x64 changes what
            `jax.random` draws from a key, so such a loss is differentiated in
            float32, as your session computes it.
        taylor: also run the Taylor-remainder test (`report.taylor`): along
            `directions_per_leaf` random directions per leaf, the remainder
            `f(x + t v) - f(x) - t g.v` must shrink like `t**2`. A coarse second
            opinion that needs no step or tolerance; it does not change `ok`.
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

    Examples:
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
    _check_budgets(seed, time_budget, memory_budget)
    if precision is not None and precision not in REFERENCE_DTYPES:
        raise _option_error(
            f"`precision` must be one of {REFERENCE_DTYPES} or None, got {precision!r}."
        )
    checked = validate_params(params)
    layout = checked.layout
    wanted = set(sources) if grad is not None else set(sources) - {"manual"}
    reference, x, data, traced = _traced_reference(loss, checked, args, precision)

    # The hand-written gradient runs outside the reference context, so that it
    # sees the user's own JAX settings, exactly as written. Its second run in
    # another precision measures its rounding, unless it may draw other random
    # numbers there, as the loss does.
    found: dict[str, Source] = {}
    if "manual" in wanted and grad is not None:
        found["manual"] = manual_source(
            grad, checked, args, measure_rounding=not traced.draws_random
        )

    with reference_precision(reference):
        loss_value = evaluate_loss_twice(loss, layout, x, data)
        loss_dtype = lowest_precision(traced.loss_dtype, _float_or_64(loss_value.dtype))
        flat_loss = flat_loss_function(
            loss, layout, data, traced.ok, loss_value.host_arrays
        )

        low_autodiff = None
        if "autodiff" in wanted:
            found["autodiff"], low_autodiff = autodiff_source(
                flat_loss, x, traced, loss_dtype, probe_float32=not traced.draws_random
            )
        sensitivity = sensitivity_of(found, low_autodiff, layout)
        found = with_noise(found, sensitivity, noise_ulps, layout)
        _require_two(found, grad is not None, "fd" in wanted)

        scales = step_scales(x, layout)
        resolved_mode, memory_bound, evaluation_seconds = resolve_mode_and_batch(
            mode, flat_loss, x, method, traced.ok, time_budget, memory_budget
        )
        rng = np.random.default_rng(seed)
        # A traced loss shows its precision in its jaxpr. An untraced one may work
        # in float32 inside and return a Python float, so its rounding is measured,
        # and finite differences respect the larger of the two.
        loss_noise = 0.0
        if not traced.ok:
            loss_noise = measure_loss_noise(
                flat_loss, x, scales, np.random.default_rng([seed, 1]), traced.ok
            )
        fd_epsilon = max(epsilon(loss_dtype), loss_noise)
        far = disagreement(found, sensitivity)
        plan = plan_probes(
            resolved_mode,
            layout,
            scales,
            rng,
            samples_per_leaf,
            directions_per_leaf,
            far,
        )

        method_used = method

        def one_sided(direction: np.ndarray) -> tuple[float, float, float]:
            result = finite_differences(
                flat_loss,
                x,
                Directions.dense_vectors(direction[None, :]),
                method="central" if method_used == "forward" else method_used,
                step=step,
                epsilon=fd_epsilon,
                batch_size=1,
                traceable=traced.ok,
            )
            return float(result.left[0]), float(result.right[0]), float(result.error[0])

        fd: Estimates | None = None
        batch_size: int | None = None
        if "fd" in wanted:
            batch_size = 1
            if traced.ok:

                def timed(batch: int, count: int) -> object:
                    return fd_estimates(
                        flat_loss,
                        x,
                        plan.probes.first(count),
                        scales,
                        method=method,
                        step=step,
                        loss_epsilon=fd_epsilon,
                        batch_size=batch,
                        traceable=True,
                    )

                batch_size = measured_batch_size(
                    timed,
                    memory_bound,
                    plan.probes.count,
                    x.size,
                    method,
                    expected_seconds=plan.probes.count
                    * points_per_probe(method)
                    * evaluation_seconds,
                )
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

        check_facts = CheckFacts(
            data_sizes=data_sizes(args),
            rules=traced.rules,
            loss_precision=np.dtype(loss_dtype).name,
        )

        def judged(estimates: Estimates | None) -> Comparison:
            return compare_all(
                layout,
                checked,
                found,
                estimates,
                plan,
                tolerance,
                one_sided,
                scales,
                check_facts,
            )

        def differenced(method: str, probes: Probes, step: float | None) -> Estimates:
            return fd_estimates(
                flat_loss,
                x,
                probes,
                scales,
                method=method,
                step=step,
                loss_epsilon=fd_epsilon,
                batch_size=batch_size or 1,
                traceable=traced.ok,
            )

        def settled(
            estimates: Estimates | None, method: str
        ) -> tuple[Comparison, Estimates | None, int]:
            """Judge, and judge again once disputed differences had a second look."""
            comparison = judged(estimates)
            if estimates is None or not comparison.fd_disputed.any():
                return comparison, estimates, 0
            rechecked, unstable = recheck_at_smaller_step(
                estimates,
                plan.probes,
                comparison.fd_disputed,
                step if step is not None else step_for(method, fd_epsilon),
                lambda probes, smaller: differenced(method, probes, smaller),
            )
            return judged(rechecked), rechecked, unstable

        comparison, fd, unstable = settled(fd, method)
        if (
            fd is not None
            and method == "central"
            and reference == "float64"
            and _unrefereed(comparison.leaves)
        ):
            # Central differences could not say whether the hand-written gradient
            # or jax.grad is right; Richardson extrapolation, with a far smaller
            # truncation error, usually can. Only a failing check pays for it. Not
            # in float32, whose Richardson step (eps ** (1/5), 4% of each
            # parameter) is so coarse that smooth curvature passes the kink test.
            method_used = "richardson"
            comparison, fd, unstable = settled(
                differenced(method_used, plan.probes, step), method_used
            )
        leaves, pairs = comparison.leaves, comparison.pairs
        taylor_results: tuple[TaylorResult, ...] = ()
        if taylor:
            taylor_results = _taylor_test(
                flat_loss,
                x,
                layout,
                found,
                scales,
                directions_per_leaf,
                np.random.default_rng([seed, 2]),
                traced.ok,
                fd_epsilon,
            )

    settings = Settings(
        mode=plan.mode if mode != "auto" else f"{plan.mode} (auto)",
        method=method_used,
        step=step if step is not None else step_for(method_used, fd_epsilon),
        rtol=rtol,
        rtol_used={
            name: tolerance.rtol_for(*(found[part].dtype for part in name.split("-")))
            for name in pairs
        },
        atol=atol,
        floor_fraction=floor_fraction,
        noise_ulps=noise_ulps,
        seed=seed,
        reference_precision=f"{reference} (matmul precision highest)",
        loss_precision=np.dtype(loss_dtype).name,
        loss_noise=loss_noise,
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
    findings = _findings(traced, checked, leaves, loss_noise, loss_dtype, reference)
    if traced.draws_random and reference != (precision or "float64"):
        findings.insert(0, _RANDOM_DRAWS_FINDING)
    autodiff = found["autodiff"]
    if autodiff.available and autodiff.dtype != np.dtype(loss_dtype).name:
        findings.append(
            f"jax.grad's backward pass computes in {autodiff.dtype} (a custom rule"
            " casts to it), although the loss does not, so the pairs with jax.grad"
            f" are judged with {autodiff.dtype}'s tolerance."
        )
    manual = found["manual"]
    params_dtype = lowest_precision(*checked.dtypes).name
    if manual.available and epsilon(manual.dtype) > epsilon(params_dtype):
        findings.append(
            f"The hand-written gradient computes in {manual.dtype} for"
            f" {params_dtype} parameters (with x64 off, JAX code computes in"
            f" float32), so it was judged with {manual.dtype}'s tolerance."
        )
    if unstable:
        findings.append(
            f"Finite differences at {unstable} element(s) or direction(s) disagreed"
            " with the other sources and moved beyond their error bounds when the"
            f" step was cut {STEP_DIVISOR:g}-fold (the loss is not smooth at the"
            " scale of the step there), so they were left out as unreliable."
        )
    if method_used != method:
        findings.append(
            "Central differences could not settle where the hand-written gradient"
            " and jax.grad disagree, so finite differences were repeated with"
            " Richardson extrapolation (method='richardson')."
        )
    findings += [
        f"The Taylor-remainder test finds {result.source} inconsistent with the loss"
        f" on {result.path}: the remainder shrinks at order {result.order:.2g},"
        " not 2, along random directions."
        for result in taylor_results
        if not result.ok
    ]
    ok = all(leaf.ok for leaf in leaves)
    return Report(
        ok,
        tuple(leaves),
        pairs,
        source_info,
        settings,
        tuple(findings),
        taylor_results,
    )


def _traced_reference(
    loss: Callable[..., Any],
    checked: Params,
    args: tuple[Any, ...],
    precision: str | None,
) -> tuple[str, np.ndarray, tuple[Any, ...], LossTrace]:
    """The reference precision, the point and data in it, and the loss traced there.

    float64 unless asked otherwise. A loss that draws random numbers must draw the
    same ones in the reference as in the user's session, which a float64 reference
    does not when x64 is off there (or the draws follow a float32 parameter's
    dtype); float32 is tried next.

    Raises:
        InvalidInputError: no reference precision draws what the session draws.
    """

    def traced_in(reference: str) -> tuple[str, np.ndarray, tuple[Any, ...], LossTrace]:
        x = checked.flat64().astype(reference)
        data = reference_args(args, reference)
        with reference_precision(reference):
            return reference, x, data, trace_loss(loss, checked.layout, x, data)

    chosen = traced_in(precision or "float64")
    if not chosen[3].draws_random:
        return chosen
    in_session = draws_in_session(loss, checked.native_tree(), args)
    if in_session is None or chosen[3].draws == in_session:
        return chosen
    if precision is not None:
        raise InvalidInputError(
            f"The loss draws random numbers with jax.random, and a {precision}"
            " reference (`precision=...`) would draw other numbers from the same"
            " key than your session does, so it would not differentiate the loss"
            " your session computes. Leave `precision` unset, draw the random"
            " numbers outside the loss and pass them through `args`, or draw them"
            " in a fixed dtype (`dtype=jnp.float32`)."
        )
    fallback = traced_in("float32")
    if fallback[3].draws == in_session:
        return fallback
    raise InvalidInputError(
        "The loss draws random numbers with jax.random, and draws other numbers"
        " from the same key in a float64 or float32 evaluation than in your session"
        f" (the parameters are {', '.join(sorted({d.name for d in checked.dtypes}))}"
        " there; a draw with `dtype=` following them changes with their dtype). No"
        " reference can differentiate the loss your session computes. Draw the"
        " random numbers outside the loss and pass them through `args`, or draw"
        " them in a fixed dtype (`dtype=jnp.float32`)."
    )


_RANDOM_DRAWS_FINDING = (
    "The loss draws random numbers with jax.random, which would draw other numbers"
    " from the same key in a float64 reference than in this session, so jax.grad"
    " and finite differences ran as a float32 reference with x64 off, drawing what"
    " your code draws, with float32's tolerances. For a float64 reference, turn x64"
    " on around the check (with draws in a fixed dtype), or draw the random numbers"
    " outside the loss and pass them in `args`."
)


def _unrefereed(leaves: list[Any]) -> bool:
    """Whether some leaf's disagreement was left for finite differences to settle."""
    return any(leaf.verdict == "manual_or_autodiff" for leaf in leaves)


def _taylor_test(
    flat_loss: Callable[[Any], Any],
    x: np.ndarray,
    layout: Any,
    found: dict[str, Source],
    scales: np.ndarray,
    directions_per_leaf: int,
    rng: np.random.Generator,
    traceable: bool,
    loss_epsilon: float,
) -> tuple[TaylorResult, ...]:
    """Run the Taylor-remainder test for every full gradient, leaf by leaf."""
    vectors, owner = [], []
    for leaf, (offset, size) in enumerate(
        zip(layout.offsets, layout.sizes, strict=True)
    ):
        for _ in range(directions_per_leaf):
            v = np.zeros(x.size)
            part = slice(offset, offset + size)
            v[part] = scales[part] * rng.standard_normal(size)
            vectors.append(v)
            owner.append(leaf)
    matrix, owner_of = np.asarray(vectors), np.asarray(owner)
    values, base = taylor_values_along(flat_loss, x, matrix, traceable)

    results = []
    for name in ("manual", "autodiff"):
        source = found.get(name)
        if source is None or not source.available or source.gradient is None:
            continue
        remainder = taylor_remainders(values, base, matrix @ source.gradient)
        for leaf, path in enumerate(layout.paths):
            order = convergence_order(remainder[owner_of == leaf], base, loss_epsilon)
            results.append(
                TaylorResult(
                    name, path, order, is_consistent(order), directions_per_leaf
                )
            )
    return tuple(results)


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

    Examples:
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


# -- options --------------------------------------------------------------------


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
    if step is not None and not (
        isinstance(step, numbers.Real) and np.isfinite(step) and 0 < step < 1
    ):
        raise _option_error(
            f"`step` is relative to each parameter's magnitude and must lie in"
            f" (0, 1), got {step!r}; leave it as None for a step chosen per dtype."
        )
    for name, value in (
        ("samples_per_leaf", samples_per_leaf),
        ("directions_per_leaf", directions_per_leaf),
    ):
        if not _is_int(value):
            raise _option_error(f"`{name}` must be a positive int, got {value!r}.")
        if value < 1:
            raise _option_error(f"`{name}` must be a positive int, got {value!r}.")
    if isinstance(sources, str):
        raise _option_error(
            f"`sources` must be a tuple of source names, got {sources!r} (a single"
            ' string); write it as a tuple, e.g. `sources=("manual", "fd")`.'
        )
    unknown = set(sources) - set(SOURCE_NAMES)
    if unknown or len(set(sources)) < 2:
        raise _option_error(
            f"`sources` must name at least two of {SOURCE_NAMES}, got {tuple(sources)}."
        )


def _check_budgets(seed: Any, time_budget: Any, memory_budget: Any) -> None:
    if not _is_int(seed) or seed < 0:
        raise _option_error(
            f"`seed` must be an int >= 0, got {seed!r}; it seeds numpy's"
            " `default_rng`, which takes no negative or fractional seeds."
        )
    if not is_non_negative_number(time_budget):
        raise _option_error(
            f"`time_budget` must be a number of seconds >= 0 (0 makes `auto`"
            f" sample large leaves), got {time_budget!r}."
        )
    if not _is_int(memory_budget) or memory_budget <= 0:
        raise _option_error(
            f"`memory_budget` must be a number of bytes > 0 (an int), got"
            f" {memory_budget!r}."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _require_two(found: dict[str, Source], grad_given: bool, fd_wanted: bool) -> None:
    """Refuse to call a check with fewer than two sources a pass."""
    running = [name for name, source in found.items() if source.available]
    if fd_wanted:
        running.append("fd")
    if len(running) >= 2:
        return
    missing = [
        f"{name} ({source.reason})"
        for name, source in found.items()
        if not source.available
    ]
    if not grad_given:
        missing.append("manual (no `grad` given)")
    raise InvalidInputError(
        f"Only {len(running)} gradient source(s) can run"
        f" ({', '.join(running) or 'none'}), so there is nothing to compare."
        f" Not available: {'; '.join(missing)}. Pass the hand-written gradient as"
        " `grad=...`, include more of them in `sources`, or make the loss"
        " traceable by JAX."
    )


def _option_error(message: str) -> Exception:
    return InvalidInputError(message)


# -- settings and findings ----------------------------------------------------


def _float_or_64(dtype: np.dtype) -> np.dtype:
    """A floating dtype as is; anything else (a Python float's object) as float64."""
    return (
        dtype
        if dtype.name in ("float16", "bfloat16", "float32", "float64")
        else (np.dtype(np.float64))
    )


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
    traced: LossTrace,
    checked: Params,
    leaves: list[Any],
    loss_noise: float,
    loss_dtype: np.dtype,
    precision: str,
) -> list[str]:
    findings = []
    if not traced.ok:
        findings.append(
            f"The loss is {traced.reason}, so jax.grad is unavailable and finite"
            " differences"
            " ran on the host, one evaluation at a time."
        )
    if traced.narrowing or traced.loss_dtype != np.dtype(precision):
        casts = ", ".join(traced.narrowing) or traced.loss_dtype.name
        findings.append(
            f"The loss computes in {casts} even when given {precision} inputs (it casts"
            " or returns a narrower dtype), so the reference is only as accurate as"
            f" {traced.loss_dtype.name}; steps and tolerances were set for that."
        )
    low = sorted({d.name for d in checked.dtypes if d.name in ("float16", "bfloat16")})
    if low:
        findings.append(
            f"Parameters in {', '.join(low)} were checked against a {precision}"
            " evaluation of the same loss, never with finite differences in the low"
            " dtype."
        )
    if loss_noise > 16 * epsilon(loss_dtype):
        findings.append(
            f"The loss's rounding noise at `params` was measured at {loss_noise:.1e}"
            f" of its value, more than {np.dtype(loss_dtype).name} alone explains"
            " (it may compute in a narrower dtype inside, or sum large terms that"
            " cancel); finite-difference steps and error estimates allow for it."
        )
    kinks = sum(len(leaf.kinks) for leaf in leaves)
    odd = sum(
        "not a valid" in note.autodiff_choice
        and "not a valid" not in note.manual_choice
        for leaf in leaves
        for note in leaf.kinks
        if note.manual is not None
    )
    if odd:
        findings.append(
            f"At {odd} kink(s) jax.grad's value is not a one-sided slope of the loss"
            " (JAX's convention at ties: `jnp.maximum` and `jnp.minimum` split the"
            " gradient in half), while the hand-written value is one, so the"
            " difference is not counted against it."
        )
    if kinks:
        findings.append(
            f"The loss has a kink within the finite-difference stencil of {kinks}"
            " element(s) (a ReLU, max or abs near its switch point); finite"
            " differences are not used there."
        )
    return findings
