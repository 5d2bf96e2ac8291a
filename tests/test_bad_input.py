"""Bad input: every case raises a gradaudit error that names the culprit and a fix.

Each test checks the exception class (and that it is also a `ValueError` or a
`TypeError`), that the message names the offending leaf path or argument and says
what to do, and that the user's own exception is chained where there is one. The
last tests check that nothing the user passed is modified by a check.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradaudit
from gradaudit import (
    InvalidInputError,
    InvalidTypeError,
    NondeterministicLossError,
    SourceFailedError,
    StructureMismatchError,
)

W0 = (np.arange(6.0).reshape(3, 2) - 2.5) / 10
X0 = np.linspace(-1.0, 1.0, 12).reshape(4, 3)


def _sin_loss(params: dict[str, Any]) -> Any:
    return jnp.sum(jnp.sin(params["W"]))


def _sin_grad(params: dict[str, Any]) -> dict[str, Any]:
    return {"W": jnp.cos(params["W"])}


def _quadratic_loss(params: dict[str, Any], x: Any) -> Any:
    return jnp.sum((x @ params["W"]) ** 2)


def _quadratic_grad_numpy(params: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    return {"W": 2.0 * x.T @ (x @ params["W"])}


def _paths_pattern(*paths: str) -> str:
    return ".*".join(re.escape(path) for path in paths)


# -- the hand-written gradient's tree ------------------------------------------


def test_gradient_tree_lists_every_missing_and_extra_path() -> None:
    params = {"a": W0, "b": W0, "c": {"d": W0, "f": W0}}

    def loss(p: dict[str, Any]) -> Any:
        return sum(jnp.sum(leaf**2) for leaf in (p["a"], p["b"], p["c"]["d"]))

    def grad(p: dict[str, Any]) -> dict[str, Any]:
        return {"a": 2 * p["a"], "x": p["a"], "c": {"e": p["a"]}, "y": p["a"]}

    with pytest.raises(StructureMismatchError, match="missing") as excinfo:
        gradaudit.check(loss, params, grad=grad)

    error = excinfo.value
    assert isinstance(error, ValueError)
    message = str(error)
    missing = ("['b']", "['c']['d']", "['c']['f']")
    extra = ("['c']['e']", "['x']", "['y']")
    assert set(error.missing) == set(missing)
    assert set(error.extra) == set(extra)
    for path in missing + extra:
        assert path in message
    assert "same container types" in message


def test_transposed_gradient_leaf_names_path_and_both_shapes() -> None:
    def grad(p: dict[str, Any]) -> dict[str, Any]:
        return {"W": jnp.cos(p["W"]).T}

    pattern = re.escape("['W'] should be (3, 2) but is (2, 3)") + ".*transposed"
    with pytest.raises(StructureMismatchError, match=pattern) as excinfo:
        gradaudit.check(_sin_loss, {"W": W0}, grad=grad)

    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.shape_mismatches == (("['W']", (3, 2), (2, 3)),)


class _Layer(NamedTuple):
    weight: Any
    bias: Any


def test_namedtuple_params_with_plain_tuple_gradient_names_the_fields() -> None:
    params = _Layer(W0, W0[0])

    def loss(p: _Layer) -> Any:
        return jnp.sum(p.weight**2) + jnp.sum(p.bias**2)

    def grad(p: _Layer) -> tuple[Any, Any]:
        return (2 * p.weight, 2 * p.bias)

    with pytest.raises(StructureMismatchError, match="NamedTuple fields") as excinfo:
        gradaudit.check(loss, params, grad=grad)

    error = excinfo.value
    assert isinstance(error, ValueError)
    assert error.missing == (".weight", ".bias")
    assert error.extra == ("[0]", "[1]")
    assert re.search(_paths_pattern(".weight", ".bias", "[0]", "[1]"), str(error))


# -- params --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leaf", "dtype_name"),
    [
        (np.arange(3, dtype=np.int32), "int32"),
        (np.ones(3, dtype=bool), "bool"),
    ],
    ids=["integer", "boolean"],
)
def test_non_float_params_leaf_is_named_with_a_cast_suggestion(
    leaf: np.ndarray, dtype_name: str
) -> None:
    params = {"W": W0, "steps": leaf}
    pattern = re.escape(f"Leaf ['steps'] of `params` has dtype {dtype_name}")
    with pytest.raises(InvalidTypeError, match=pattern) as excinfo:
        gradaudit.check(_sin_loss, params)

    assert isinstance(excinfo.value, TypeError)
    assert "`*args`" in str(excinfo.value)
    assert ".astype(jnp.float32)" in str(excinfo.value)


def test_complex_params_leaf_is_named_with_a_split_suggestion() -> None:
    params = {"W": W0, "z": np.ones(3, dtype=np.complex64)}
    pattern = re.escape("Leaf ['z'] of `params` is complex (complex64)")
    with pytest.raises(InvalidTypeError, match=pattern) as excinfo:
        gradaudit.check(_sin_loss, params)

    assert isinstance(excinfo.value, TypeError)
    assert "real and imaginary" in str(excinfo.value)
    assert "conjugate" in str(excinfo.value)


@pytest.mark.parametrize(
    ("value", "index", "shown"),
    [(np.nan, (1, 0), "nan"), (np.inf, (2, 1), "inf"), (-np.inf, (0, 1), "-inf")],
    ids=["nan", "inf", "minus-inf"],
)
def test_non_finite_params_name_leaf_and_index(
    value: float, index: tuple[int, int], shown: str
) -> None:
    weights = W0.copy()
    weights[index] = value
    pattern = re.escape(
        f"Leaf ['W'] of `params` holds 1 non-finite value(s), the first {shown}"
        f" at index {index}"
    )
    with pytest.raises(InvalidInputError, match=pattern) as excinfo:
        gradaudit.check(_sin_loss, {"W": weights}, grad=_sin_grad)

    assert isinstance(excinfo.value, ValueError)
    assert "finite value" in str(excinfo.value)


@pytest.mark.parametrize("params", [{}, []], ids=["empty-dict", "empty-list"])
def test_empty_params_say_where_params_go(params: Any) -> None:
    with pytest.raises(InvalidInputError, match="`params` has no array leaves") as e:
        gradaudit.check(_sin_loss, params)

    assert isinstance(e.value, ValueError)
    assert "check(loss, params, *args, ...)" in str(e.value)


def test_zero_size_params_leaf_is_named() -> None:
    pattern = re.escape("Leaf ['empty'] of `params` has shape (0,) and no elements")
    with pytest.raises(InvalidInputError, match=pattern) as excinfo:
        gradaudit.check(_sin_loss, {"W": W0, "empty": np.zeros(0)})

    assert isinstance(excinfo.value, ValueError)
    assert "remove it" in str(excinfo.value)


@pytest.mark.parametrize(
    ("leaf", "kind"),
    [(1.5, "Python float"), ("relu", "Python str")],
    ids=["python-float", "string"],
)
def test_non_array_params_leaf_is_named_with_a_fix(leaf: Any, kind: str) -> None:
    pattern = re.escape(f"Leaf ['scale'] of `params` is a {kind}, not an array")
    with pytest.raises(InvalidTypeError, match=pattern) as excinfo:
        gradaudit.check(_sin_loss, {"W": W0, "scale": leaf})

    assert isinstance(excinfo.value, TypeError)
    assert "jnp.asarray(...)" in str(excinfo.value)
    assert "`*args`" in str(excinfo.value)


# -- the loss ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (1,)], ids=["shape-3", "shape-1"])
def test_non_scalar_loss_names_shape_and_suggests_a_reduction(
    shape: tuple[int, ...],
) -> None:
    def loss(p: dict[str, Any]) -> Any:
        return jnp.sin(p["v"])[: shape[0]]

    pattern = re.escape(f"The loss returned an array of shape {shape}")
    with pytest.raises(InvalidInputError, match=pattern) as excinfo:
        gradaudit.check(loss, {"v": np.array([0.1, 0.2, 0.3])})

    assert isinstance(excinfo.value, ValueError)
    assert "`.sum()`" in str(excinfo.value)
    assert "shape `()`" in str(excinfo.value)


@pytest.mark.parametrize(
    "loss",
    [
        lambda p: jnp.sum(p["W"] > 0),
        lambda p: 3,
    ],
    ids=["jax-integer", "python-int"],
)
def test_integer_loss_is_a_type_error_asking_for_a_float(loss: Any) -> None:
    with pytest.raises(InvalidTypeError, match=r"returned a value of dtype int") as e:
        gradaudit.check(loss, {"W": W0})

    assert isinstance(e.value, TypeError)
    assert "real floating scalar" in str(e.value)


def test_nan_loss_says_the_loss_must_be_finite() -> None:
    def loss(p: dict[str, Any]) -> Any:
        return jnp.sqrt(-1.0 - jnp.sum(p["W"] ** 2))

    with pytest.raises(InvalidInputError, match=r"The loss is nan at `params`") as e:
        gradaudit.check(loss, {"W": W0})

    assert isinstance(e.value, ValueError)
    assert "check the parameters and data" in str(e.value)


def test_raising_loss_is_named_and_chained() -> None:
    original = RuntimeError("shapes do not line up")

    def loss(p: dict[str, Any], x: Any) -> Any:
        raise original

    pattern = r"The loss raised RuntimeError: shapes do not line up"
    with pytest.raises(SourceFailedError, match=pattern) as excinfo:
        gradaudit.check(loss, {"W": W0}, X0)

    error = excinfo.value
    assert isinstance(error, ValueError)
    assert error.source == "loss"
    assert error.__cause__ is original
    assert "`loss(params, *args)`" in str(error)


def test_raising_gradient_is_named_and_chained() -> None:
    original = ZeroDivisionError("division by zero in backprop")

    def grad(p: dict[str, Any]) -> Any:
        raise original

    pattern = r"The hand-written gradient `grad` raised ZeroDivisionError"
    with pytest.raises(SourceFailedError, match=pattern) as excinfo:
        gradaudit.check(_sin_loss, {"W": W0}, grad=grad)

    error = excinfo.value
    assert isinstance(error, ValueError)
    assert error.source == "manual"
    assert error.__cause__ is original
    assert "`grad(params, *args)`" in str(error)


def test_a_gradient_leaf_returned_as_none_is_named() -> None:
    def loss(p: dict[str, Any]) -> Any:
        return jnp.sum(p["W"] ** 2) + jnp.sum(p["b"])

    def grad(p: dict[str, Any]) -> Any:
        return {"W": 2 * p["W"], "b": None}

    pattern = r"\['b'\] returned as None; return zeros"
    with pytest.raises(StructureMismatchError, match=pattern):
        gradaudit.check(loss, {"W": W0, "b": np.ones(2)}, grad=grad)


def test_a_gradient_passed_positionally_gets_a_keyword_hint() -> None:
    def loss(p: dict[str, Any]) -> Any:
        return jnp.sum(p["W"] ** 2)

    def grad(p: dict[str, Any]) -> Any:
        return {"W": 2 * p["W"]}

    with pytest.raises(SourceFailedError, match=r"pass it by keyword") as excinfo:
        gradaudit.check(loss, {"W": W0}, grad)
    # The message quotes the first line of the error, once, with no doubled stop.
    assert ".." not in str(excinfo.value)


@pytest.fixture
def restore_numpy_global_rng() -> Any:
    state = np.random.get_state()
    yield
    np.random.set_state(state)


@pytest.mark.usefixtures("restore_numpy_global_rng")
def test_nondeterministic_loss_suggests_a_fixed_prng_key() -> None:
    def loss(p: dict[str, Any]) -> float:
        return float(np.sum(np.sin(p["W"])) + np.random.rand())

    with pytest.raises(NondeterministicLossError, match="fixed PRNG key") as excinfo:
        gradaudit.check(loss, {"W": W0})

    error = excinfo.value
    assert isinstance(error, ValueError)
    assert error.first != error.second
    assert repr(error.first) in str(error) and repr(error.second) in str(error)
    assert f"a spread of {abs(error.first - error.second):.3g}" in str(error)
    assert "jax.random.key(0)" in str(error)


# -- options -------------------------------------------------------------------


def test_unknown_mode_lists_the_valid_modes() -> None:
    with pytest.raises(InvalidInputError, match=r"`mode` must be one of") as e:
        gradaudit.check(_sin_loss, {"W": W0}, mode="fast")

    assert isinstance(e.value, ValueError)
    assert "'fast'" in str(e.value)
    for mode in ("auto", "full", "sampled", "directional"):
        assert repr(mode) in str(e.value)


def test_unknown_precision_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidInputError, match=r"`precision` must be one of") as e:
        gradaudit.check(_sin_loss, {"W": W0}, grad=_sin_grad, precision="float16")

    assert "'float16'" in str(e.value)
    assert "'float64'" in str(e.value) and "'float32'" in str(e.value)


def test_unknown_method_lists_the_valid_methods() -> None:
    with pytest.raises(InvalidInputError, match=r"`method` must be one of") as e:
        gradaudit.check(_sin_loss, {"W": W0}, method="backward")

    assert isinstance(e.value, ValueError)
    assert "'backward'" in str(e.value)
    for method in ("central", "forward", "fourth_order", "richardson"):
        assert repr(method) in str(e.value)


@pytest.mark.parametrize("step", [0.0, -1e-3, 1.0, 5.0, float("nan"), float("inf")])
def test_bad_step_says_it_is_relative_and_suggests_none(step: float) -> None:
    pattern = r"`step` is relative .* must lie in \(0, 1\), got " + re.escape(
        repr(step)
    )
    with pytest.raises(InvalidInputError, match=pattern) as excinfo:
        gradaudit.check(_sin_loss, {"W": W0}, step=step)

    assert isinstance(excinfo.value, ValueError)
    assert "leave it as None" in str(excinfo.value)


@pytest.mark.parametrize("value", [0, -2, 2.5, "4", None])
def test_bad_samples_per_leaf_asks_for_a_positive_int(value: Any) -> None:
    pattern = r"`samples_per_leaf` must be a positive int, got " + re.escape(
        repr(value)
    )
    with pytest.raises(InvalidInputError, match=pattern) as excinfo:
        gradaudit.check(_sin_loss, {"W": W0}, samples_per_leaf=value)

    assert isinstance(excinfo.value, ValueError)


def test_boolean_samples_per_leaf_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"`samples_per_leaf` must be"):
        gradaudit.check(_sin_loss, {"W": W0}, samples_per_leaf=True)


def test_numpy_integer_samples_per_leaf_is_accepted() -> None:
    report = gradaudit.check(
        _sin_loss,
        {"W": W0},
        grad=_sin_grad,
        mode="sampled",
        samples_per_leaf=np.int64(2),
    )

    assert report.settings.samples_per_leaf == 2


@pytest.mark.parametrize(
    ("sources", "shown"),
    [
        (("manual", "jax"), "('manual', 'jax')"),
        (("fd",), "('fd',)"),
        ((), "()"),
    ],
    ids=["unknown-name", "one-source", "no-sources"],
)
def test_bad_sources_name_the_valid_sources(sources: Any, shown: str) -> None:
    pattern = r"`sources` must name at least two of .* got " + re.escape(shown)
    with pytest.raises(InvalidInputError, match=pattern) as excinfo:
        gradaudit.check(_sin_loss, {"W": W0}, grad=_sin_grad, sources=sources)

    assert isinstance(excinfo.value, ValueError)
    for name in ("manual", "autodiff", "fd"):
        assert repr(name) in str(excinfo.value)


def test_sources_given_as_a_bare_string_is_quoted_as_passed() -> None:
    with pytest.raises(InvalidInputError, match=re.escape("got 'manual'")):
        gradaudit.check(_sin_loss, {"W": W0}, grad=_sin_grad, sources="manual")


def test_sources_leaving_fewer_than_two_without_grad_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"`grad`"):
        gradaudit.check(_sin_loss, {"W": W0}, sources=("manual", "fd"))


def test_untraceable_loss_without_grad_is_rejected() -> None:
    def loss(p: dict[str, Any]) -> float:
        return float(np.sum(np.sin(p["W"])))

    with pytest.raises(InvalidInputError, match=r"`grad`"):
        gradaudit.check(loss, {"W": W0})


@pytest.mark.parametrize("option", ["atol", "rtol"])
def test_negative_tolerance_is_an_invalid_input_error(option: str) -> None:
    pattern = rf"`{option}` must be a finite number >= 0( or None)?, got -0.001"
    with pytest.raises(InvalidInputError, match=pattern):
        gradaudit.check(_sin_loss, {"W": W0}, grad=_sin_grad, **{option: -1e-3})


@pytest.mark.parametrize("option", ["atol", "rtol"])
def test_negative_tolerance_is_a_value_error_naming_the_option(option: str) -> None:
    pattern = rf"`{option}` must be a finite number >= 0( or None)?, got -0.001"
    with pytest.raises(ValueError, match=pattern):
        gradaudit.check(_sin_loss, {"W": W0}, grad=_sin_grad, **{option: -1e-3})


# -- nothing the user passed is modified ---------------------------------------


def _scribbling_grad(params: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    gradient = _quadratic_grad_numpy(params, x)
    params["W"] *= 2
    x[:] = 0
    return gradient


def test_gradient_writing_into_its_inputs_leaves_user_data_unchanged() -> None:
    params, x = {"W": W0.copy()}, X0.copy()

    report = gradaudit.check(_quadratic_loss, params, x, grad=_scribbling_grad)

    np.testing.assert_array_equal(params["W"], W0)
    np.testing.assert_array_equal(x, X0)
    assert report.ok, report.summary()


def test_wrong_gradient_writing_into_its_inputs_is_still_caught() -> None:
    def grad(p: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
        gradient = _scribbling_grad(p, x)
        gradient["W"][0, 0] += 0.5
        return gradient

    params, x = {"W": W0.copy()}, X0.copy()

    report = gradaudit.check(_quadratic_loss, params, x, grad=grad)

    np.testing.assert_array_equal(params["W"], W0)
    np.testing.assert_array_equal(x, X0)
    assert not report.ok
    assert report.leaf("['W']").verdict == "manual_wrong"


def test_numpy_loss_writing_into_its_inputs_leaves_user_data_unchanged() -> None:
    def loss(p: dict[str, Any], x: np.ndarray) -> float:
        value = float(np.sum((x @ p["W"]) ** 2))
        p["W"] *= 2
        x[:] = 0
        return value

    params, x = {"W": W0.copy()}, X0.copy()

    report = gradaudit.check(loss, params, x, grad=_quadratic_grad_numpy)

    np.testing.assert_array_equal(params["W"], W0)
    np.testing.assert_array_equal(x, X0)
    assert report.ok, report.summary()
    assert set(report.pairs) == {"manual-fd"}


def _jax_loss_zeroing_its_data(params: dict[str, Any], x: np.ndarray) -> Any:
    value = jnp.sum((x @ params["W"]) ** 2)
    x[:] = 0
    return value


def test_jax_loss_writing_into_numpy_data_leaves_user_data_unchanged() -> None:
    params, x = {"W": W0.copy()}, X0.copy()

    gradaudit.check(_jax_loss_zeroing_its_data, params, x, grad=_quadratic_grad_numpy)

    np.testing.assert_array_equal(params["W"], W0)
    np.testing.assert_array_equal(x, X0)


def test_jax_loss_writing_into_numpy_data_gets_the_right_verdict() -> None:
    report = gradaudit.check(
        _jax_loss_zeroing_its_data,
        {"W": W0.copy()},
        X0.copy(),
        grad=_quadratic_grad_numpy,
    )

    assert report.ok, report.summary()


def test_a_complex_gradient_leaf_is_named_not_silently_made_real() -> None:
    with pytest.raises(gradaudit.InvalidTypeError, match=r"Leaf <root> .* complex"):
        gradaudit.check(
            lambda w: jnp.sum(w**2), np.array([1.0, 2.0]), grad=lambda w: 2 * w + 5j
        )


def test_a_prng_key_as_a_parameter_leaf_points_at_args() -> None:
    params = {"w": np.ones(2), "key": jax.random.key(0)}
    with pytest.raises(gradaudit.InvalidTypeError, match=r"\['key'\].*`\*args`"):
        gradaudit.check(lambda p: jnp.sum(p["w"] ** 2), params)


def test_a_tuple_returned_for_namedtuple_params_names_both_containers() -> None:
    params = _Layer(W0, W0[0])
    with pytest.raises(StructureMismatchError, match="a tuple where `params` has a"):
        gradaudit.check(
            lambda p: jnp.sum(p.weight**2) + jnp.sum(p.bias**2),
            params,
            grad=lambda p: (2 * p.weight, 2 * p.bias),
        )


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("seed", -1),
        ("seed", 1.5),
        ("rtol", "1e-3"),
        ("atol", None),
        ("time_budget", -1.0),
        ("memory_budget", 0),
        ("floor_fraction", True),
    ],
)
def test_bad_option_values_name_the_option(option: str, value: Any) -> None:
    with pytest.raises(InvalidInputError, match=f"`{option}` must be"):
        gradaudit.check(lambda w: jnp.sum(w**2), np.ones(2), **{option: value})


def test_a_loss_jax_traces_but_cannot_batch_runs_on_the_host() -> None:
    def loss(w: Any) -> Any:
        return jax.pure_callback(
            lambda v: np.asarray(np.sum(np.asarray(v) ** 2)),
            jax.ShapeDtypeStruct((), w.dtype),
            w,
        )

    w = np.array([0.3, -0.8, 1.1])
    report = gradaudit.check(loss, w, grad=lambda w: 2 * w)
    assert report.ok, report.summary()
    assert not report.sources["autodiff"].available
    assert "not batchable by jax.vmap" in report.findings[0]
    assert not gradaudit.check(loss, w, grad=lambda w: 2.1 * w).ok


def test_a_loss_failing_only_inside_a_compiled_program_is_named() -> None:
    # As when a function jax.jit compiled with x64 off fails again with x64 on.
    from gradaudit._loss import flat_loss_function
    from gradaudit._validate import validate_params

    def loss(w: Any) -> Any:
        if isinstance(w, jax.core.Tracer):
            raise RuntimeError("cannot run under a transformation")
        return jnp.sum(w**2)

    layout = validate_params(np.array([0.5, -1.0])).layout
    flat = flat_loss_function(loss, layout, (), traceable=True)
    with pytest.raises(SourceFailedError, match="RuntimeError: cannot run") as info:
        jax.jit(flat)(jnp.array([0.5, -1.0]))
    assert info.value.source == "loss"
    assert isinstance(info.value.__cause__, RuntimeError)
