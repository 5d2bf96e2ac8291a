"""The finite-difference engine on functions whose derivatives are known exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradaudit._finite_diff import METHODS, Directions, default_step, finite_differences


def smooth(x):
    return jnp.sum(jnp.sin(x) * jnp.exp(0.3 * x)) + 0.5 * jnp.sum(x**2) * x[0]


def smooth_gradient(x):
    g = (np.cos(x) + 0.3 * np.sin(x)) * np.exp(0.3 * x) + x * x[0]
    g[0] += 0.5 * np.sum(x**2)
    return g


@pytest.fixture
def point(rng):
    return rng.normal(size=6)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_recovers_the_gradient_within_its_error_estimate(method, point):
    directions = Directions.coordinates(np.arange(6), np.ones(6), 6)
    with jax.enable_x64(True):
        result = finite_differences(smooth, point, directions, method=method)
    true_error = np.abs(result.derivative - smooth_gradient(point))
    assert np.all(true_error <= result.error)
    assert np.all(result.error < 1e-5)


def test_higher_order_methods_are_more_accurate(point):
    directions = Directions.coordinates(np.arange(6), np.ones(6), 6)
    errors = {}
    with jax.enable_x64(True):
        for method in ("forward", "central", "richardson"):
            result = finite_differences(smooth, point, directions, method=method)
            errors[method] = np.max(np.abs(result.derivative - smooth_gradient(point)))
    assert errors["richardson"] < errors["central"] < errors["forward"]


def test_dense_directions_give_projections(point, rng):
    vectors = rng.normal(size=(3, 6))
    with jax.enable_x64(True):
        result = finite_differences(smooth, point, Directions.dense_vectors(vectors))
    np.testing.assert_allclose(
        result.derivative, vectors @ smooth_gradient(point), rtol=1e-8
    )


def test_coordinate_scale_multiplies_the_derivative(point):
    scales = np.array([0.5, 2.0, 4.0])
    directions = Directions.coordinates(np.array([0, 2, 5]), scales, 6)
    with jax.enable_x64(True):
        result = finite_differences(smooth, point, directions)
    expected = scales * smooth_gradient(point)[[0, 2, 5]]
    np.testing.assert_allclose(result.derivative, expected, rtol=1e-8)


def test_host_evaluation_matches_the_jitted_program(point, rng):
    directions = Directions.coordinates(np.arange(6), np.ones(6), 6).concatenate(
        Directions.dense_vectors(rng.normal(size=(2, 6)))
    )

    def numpy_function(x):
        return float(np.sum(np.sin(x) * np.exp(0.3 * x)) + 0.5 * np.sum(x**2) * x[0])

    with jax.enable_x64(True):
        device = finite_differences(smooth, point, directions)
    host = finite_differences(numpy_function, point, directions, traceable=False)
    np.testing.assert_allclose(host.derivative, device.derivative, rtol=1e-9)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batch_size_does_not_change_the_result(point, batch_size):
    directions = Directions.coordinates(np.arange(6), np.ones(6), 6)
    with jax.enable_x64(True):
        reference = finite_differences(smooth, point, directions, batch_size=1)
        batched = finite_differences(smooth, point, directions, batch_size=batch_size)
    np.testing.assert_allclose(batched.derivative, reference.derivative, rtol=1e-12)


def test_a_kink_at_the_point_is_measured_as_the_jump_in_slope():
    x = np.array([0.0, 1.0])

    def function(v):
        return 3.0 * jnp.maximum(v[0], 0.0) + jnp.sin(v[1])

    directions = Directions.coordinates(np.arange(2), np.ones(2), 2)
    with jax.enable_x64(True):
        result = finite_differences(function, x, directions)
    assert result.kink[0] == pytest.approx(3.0, rel=1e-6)
    assert result.left[0] == pytest.approx(0.0, abs=1e-8)
    assert result.right[0] == pytest.approx(3.0, rel=1e-6)
    assert result.kink[1] < 1e-6


def test_the_step_is_a_power_of_two_near_the_cube_root_of_epsilon():
    for eps in (np.finfo(np.float64).eps, np.finfo(np.float32).eps):
        step = default_step("central", float(eps))
        assert np.log2(step) == int(np.log2(step))
        assert 0.5 < step / eps ** (1 / 3) < 2


def test_a_float32_function_gets_a_larger_error_estimate(point):
    directions = Directions.coordinates(np.arange(6), np.ones(6), 6)
    eps32 = float(np.finfo(np.float32).eps)
    with jax.enable_x64(True):
        as64 = finite_differences(smooth, point, directions)
        as32 = finite_differences(
            lambda v: smooth(v.astype(jnp.float32)).astype(jnp.float64),
            point,
            directions,
            epsilon=eps32,
        )
    true_error = np.abs(as32.derivative - smooth_gradient(point))
    assert np.all(true_error <= as32.error)
    assert np.all(as32.error > 100 * as64.error)


def _kinked(position):
    """A unit jump in slope `position` steps from x = 0 (step 1 via the scale)."""

    def function(v):
        return jnp.maximum(v[0] - position, 0.0) + 0.25 * v[0]

    return function, (1.25 if position < 0 else 0.25)


# Positions in steps, blind spots of the five-point kink test (2/3) included.
KINK_POSITIONS = (-3.1, -1.5, -2 / 3, -0.5, -0.2, 0.3, 0.45, 2 / 3, 0.9, 1.4, 3.7)


@pytest.mark.parametrize("method", ["central", "fourth_order", "richardson"])
@pytest.mark.parametrize("position", KINK_POSITIONS)
def test_a_kink_anywhere_in_the_stencil_is_found_or_bounded(method, position):
    # At a kink the test misses, the estimate must still lie within its error bound
    # plus its departure from smoothness, which is what the verdict allows.
    step = 2.0**-10
    function, slope = _kinked(position * step)
    directions = Directions.coordinates(np.zeros(1, np.int64), np.ones(1), 1)
    with jax.enable_x64(True):
        result = finite_differences(
            function, np.zeros(1), directions, method=method, step=step
        )
    found = result.kink[0] > 3 * result.error[0]
    off_by = abs(result.derivative[0] - slope)
    assert found or off_by <= result.error[0] + result.kink[0] + 1e-12


def test_the_wider_stencils_find_a_kink_in_the_five_point_blind_spot():
    step = 2.0**-10
    function, _ = _kinked(2 / 3 * step)
    directions = Directions.coordinates(np.zeros(1, np.int64), np.ones(1), 1)
    with jax.enable_x64(True):
        central = finite_differences(
            function, np.zeros(1), directions, method="central", step=step
        )
        richardson = finite_differences(
            function, np.zeros(1), directions, method="richardson", step=step
        )
    assert central.kink[0] < 1e-6  # blind: five points fit a cubic exactly
    assert richardson.kink[0] > 0.3
