"""The Taylor-remainder test: order 2 for a consistent gradient, 1 for a wrong one."""

import jax.numpy as jnp
import numpy as np
import pytest

import gradaudit


def loss(w, x):
    return jnp.sum(jnp.sin(x @ w))


def grad(w, x):
    return x.T @ np.cos(x @ w)


@pytest.fixture
def point(rng):
    return rng.normal(size=4), rng.normal(size=(6, 4))


def test_a_correct_gradient_converges_at_order_two(point):
    w, x = point
    report = gradaudit.check(loss, w, x, grad=grad, taylor=True)
    assert {(r.source, r.ok) for r in report.taylor} == {
        ("manual", True),
        ("autodiff", True),
    }
    for result in report.taylor:
        assert result.order == pytest.approx(2.0, abs=0.1)
        assert result.directions == 4


def test_a_wrong_gradient_converges_at_order_one_and_is_named(point):
    w, x = point
    report = gradaudit.check(
        loss, w, x, grad=lambda w, x: 1.05 * grad(w, x), taylor=True
    )
    (manual,) = [r for r in report.taylor if r.source == "manual"]
    assert not manual.ok
    assert manual.order == pytest.approx(1.0, abs=0.1)
    assert any("Taylor-remainder" in finding for finding in report.findings)
    assert "INCONSISTENT" in report.table()


def test_a_linear_loss_leaves_nothing_above_rounding_and_passes():
    report = gradaudit.check(
        lambda w: jnp.sum(3.0 * w), np.array([1.0, 2.0]), taylor=True
    )
    (autodiff,) = report.taylor
    assert np.isnan(autodiff.order) and autodiff.ok


def test_the_taylor_test_also_runs_on_the_host_for_a_numpy_loss(point):
    w, x = point
    report = gradaudit.check(
        lambda w, x: float(np.sum(np.sin(x @ w))), w, x, grad=grad, taylor=True
    )
    assert [(r.source, r.ok) for r in report.taylor] == [("manual", True)]


def test_without_the_option_no_taylor_test_runs(point):
    w, x = point
    assert gradaudit.check(loss, w, x, grad=grad).taylor == ()
