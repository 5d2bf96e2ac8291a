"""A check leaves the user's world as it found it.

gradaudit switches JAX to float64 with `highest` matmul precision for its
reference, seeds its own generators and may log; none of that may leak into the
caller's JAX configuration, random generators, warning filters or logging setup,
whether the check passes, finds a mismatch or rejects its input.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradaudit

W0 = np.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.25]])
X0 = np.linspace(-1.0, 1.0, 8).reshape(4, 2)


def _loss(params: dict[str, Any], x: Any) -> Any:
    return jnp.sum(jnp.tanh(x @ params["W"].T) ** 2)


def _grad(params: dict[str, Any], x: Any) -> dict[str, Any]:
    h = jnp.tanh(x @ params["W"].T)
    return {"W": (2 * h * (1 - h**2)).T @ x}


def _wrong_grad(params: dict[str, Any], x: Any) -> dict[str, Any]:
    return {"W": 1.5 * _grad(params, x)["W"]}


def _passing_check() -> None:
    assert gradaudit.check(_loss, {"W": jnp.asarray(W0)}, X0, grad=_grad).ok


def _failing_check() -> None:
    assert not gradaudit.check(_loss, {"W": W0.copy()}, X0, grad=_wrong_grad).ok


def _mismatch_assertion() -> None:
    with pytest.raises(gradaudit.GradientMismatchError):
        gradaudit.assert_gradients(_loss, {"W": W0.copy()}, X0, grad=_wrong_grad)


def _bad_params() -> None:
    with pytest.raises(gradaudit.InvalidTypeError):
        gradaudit.check(_loss, {"W": np.ones((3, 2), np.int32)}, X0, grad=_grad)


def _bad_option() -> None:
    with pytest.raises(gradaudit.InvalidInputError):
        gradaudit.check(_loss, {"W": W0.copy()}, X0, grad=_grad, mode="fast")


def _raising_grad() -> None:
    def grad(params: dict[str, Any], x: Any) -> Any:
        raise RuntimeError("backprop failed")

    # This one raises inside the float64 reference context.
    with pytest.raises(gradaudit.SourceFailedError):
        gradaudit.check(_loss, {"W": W0.copy()}, X0, grad=grad)


def _raising_loss() -> None:
    def loss(params: dict[str, Any], x: Any) -> Any:
        raise RuntimeError("forward failed")

    with pytest.raises(gradaudit.SourceFailedError):
        gradaudit.check(loss, {"W": W0.copy()}, X0, grad=_grad)


CHECKS: dict[str, Callable[[], None]] = {
    "passing": _passing_check,
    "failing": _failing_check,
    "assert-mismatch": _mismatch_assertion,
    "bad-params": _bad_params,
    "bad-option": _bad_option,
    "raising-grad": _raising_grad,
    "raising-loss": _raising_loss,
}


State = dict[str, Any]


def _logging_state() -> tuple[Any, ...]:
    root, ours = logging.getLogger(), logging.getLogger("gradaudit")
    return (
        list(root.handlers),
        root.level,
        list(ours.handlers),
        ours.level,
        ours.propagate,
    )


def _snapshot() -> State:
    return {
        # The config flag, and what the current thread really computes in.
        "x64": (
            jax.config.jax_enable_x64,
            jnp.zeros(1).dtype,
            jnp.asarray(1.0).dtype,
        ),
        "matmul_precision": jax.config.jax_default_matmul_precision,
        "numpy_random": np.random.get_state(),
        "python_random": random.getstate(),
        "warnings_filters": list(warnings.filters),
        "logging": _logging_state(),
    }


@pytest.fixture(scope="module")
def observe() -> Callable[[str], tuple[State, State]]:
    """Run a check once per x64 setting, and give the state before and after it.

    Every test below compares one part of the state around one real run; sharing
    the runs keeps the module fast.
    """
    seen: dict[tuple[str, bool], tuple[State, State]] = {}

    def run(name: str) -> tuple[State, State]:
        key = (name, bool(jax.config.jax_enable_x64))
        if key not in seen:
            before = _snapshot()
            CHECKS[name]()
            seen[key] = (before, _snapshot())
        return seen[key]

    return run


@pytest.fixture
def x64_enabled() -> Iterator[None]:
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


@pytest.fixture
def matmul_precision_bfloat16() -> Iterator[None]:
    before = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "bfloat16")
    try:
        yield
    finally:
        jax.config.update("jax_default_matmul_precision", before)


every_check = pytest.mark.parametrize("check", list(CHECKS))


@every_check
def test_x64_stays_off_when_the_user_left_it_off(check: str, observe: Any) -> None:
    assert jax.config.jax_enable_x64 is False, "the suite expects x64 off by default"

    before, after = observe(check)

    assert after["x64"] == before["x64"] == (False, np.float32, np.float32)


@every_check
@pytest.mark.usefixtures("x64_enabled")
def test_x64_stays_on_when_the_user_turned_it_on(check: str, observe: Any) -> None:
    before, after = observe(check)

    assert after["x64"] == before["x64"] == (True, np.float64, np.float64)


@every_check
def test_default_matmul_precision_is_unchanged(check: str, observe: Any) -> None:
    before, after = observe(check)

    assert after["matmul_precision"] == before["matmul_precision"]


@pytest.mark.usefixtures("matmul_precision_bfloat16")
def test_user_matmul_precision_is_restored_after_the_reference_run() -> None:
    _passing_check()

    assert jax.config.jax_default_matmul_precision == "bfloat16"
    assert jax.config.jax_enable_x64 is False


@every_check
def test_numpy_global_random_state_is_unchanged(check: str, observe: Any) -> None:
    before, after = observe(check)

    for was, now in zip(before["numpy_random"], after["numpy_random"], strict=True):
        np.testing.assert_array_equal(now, was)


@every_check
def test_python_random_state_is_unchanged(check: str, observe: Any) -> None:
    before, after = observe(check)

    assert after["python_random"] == before["python_random"]


@every_check
def test_warning_filters_are_unchanged(check: str, observe: Any) -> None:
    before, after = observe(check)

    assert after["warnings_filters"] == before["warnings_filters"]


@every_check
def test_logging_handlers_are_unchanged(check: str, observe: Any) -> None:
    before, after = observe(check)

    assert after["logging"] == before["logging"]


def test_the_reference_ignores_x64_and_the_hand_written_gradient_honours_it(
    x64_enabled: None,
) -> None:
    # jax.grad and finite differences run in float64 whatever the caller set; the
    # hand-written gradient runs as written, so JAX code in it follows the flag.
    params = {"W": W0.copy()}
    with_x64 = gradaudit.check(_loss, params, X0, grad=_grad)
    jax.config.update("jax_enable_x64", False)
    without_x64 = gradaudit.check(_loss, params, X0, grad=_grad)

    assert with_x64.ok and without_x64.ok
    for report in (with_x64, without_x64):
        assert report.sources["autodiff"].dtype == "float64"
        assert report.sources["fd"].dtype == "float64"
    assert with_x64.sources["manual"].dtype == "float64"
    assert without_x64.sources["manual"].dtype == "float32"
