"""The verdicts of `check`: agreement, blame, kinks, precision and coverage."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradaudit


def mlp_loss(params, x, y):
    hidden = jnp.tanh(x @ params["W1"] + params["b1"])
    return 0.5 * jnp.mean((hidden @ params["W2"] - y) ** 2)


def mlp_grad(params, x, y):
    hidden = np.tanh(x @ params["W1"] + params["b1"])
    residual = (hidden @ params["W2"] - y) / y.size
    dpre = residual @ params["W2"].T * (1 - hidden**2)
    return {"W1": x.T @ dpre, "b1": dpre.sum(0), "W2": hidden.T @ residual}


def mlp_point(rng, dtype):
    params = {
        "W1": rng.normal(size=(4, 5)).astype(dtype),
        "b1": rng.normal(size=5).astype(dtype),
        "W2": rng.normal(size=(5, 2)).astype(dtype),
    }
    x = rng.normal(size=(7, 4)).astype(dtype)
    y = rng.normal(size=(7, 2)).astype(dtype)
    return params, x, y


def perturbed(grad, leaf, index, factor):
    def wrong(params, *args):
        result = grad(params, *args)
        result[leaf] = np.array(result[leaf], copy=True)
        result[leaf][index] *= factor
        return result

    return wrong


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_correct_hand_written_gradient_passes(rng, dtype):
    params, x, y = mlp_point(rng, dtype)
    report = gradaudit.check(mlp_loss, params, x, y, grad=mlp_grad)
    assert report.ok, report.summary()
    assert set(report.pairs) == {"manual-autodiff", "manual-fd", "autodiff-fd"}
    assert all(leaf.verdict == "agree" for leaf in report.leaves)


@pytest.mark.parametrize(
    ("dtype", "factor"), [(np.float64, 1 + 1e-6), (np.float32, 1 + 1e-3)]
)
def test_one_slightly_wrong_element_is_found_with_its_index(rng, dtype, factor):
    params, x, y = mlp_point(rng, dtype)
    wrong = perturbed(mlp_grad, "W1", (2, 3), factor)
    report = gradaudit.check(mlp_loss, params, x, y, grad=wrong)
    assert not report.ok
    assert [leaf.path for leaf in report.failing_leaves] == ["['W1']"]
    leaf = report.leaf("['W1']")
    assert leaf.verdict == "manual_wrong"
    assert leaf.pairs["manual-autodiff"].mismatched_indices == ((2, 3),)
    assert leaf.pairs["manual-fd"].mismatched_indices == ((2, 3),)
    assert leaf.pairs["autodiff-fd"].ok
    worst = leaf.pairs["manual-autodiff"].worst
    assert worst.index == (2, 3)
    assert worst.autodiff == pytest.approx(worst.fd, rel=1e-6)
    assert worst.manual == pytest.approx(worst.autodiff * factor, rel=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_params_are_checked_against_a_float64_reference(rng, dtype):
    params = jnp.asarray(rng.normal(size=12), dtype)

    def loss(w):
        return jnp.sum(jnp.sin(w) * w)

    def grad(w):
        return jnp.cos(w) * w + jnp.sin(w)

    report = gradaudit.check(loss, params, grad=grad)
    assert report.ok, report.summary()
    assert any("never with finite differences" in f for f in report.findings)
    wrong = gradaudit.check(loss, params, grad=lambda w: 1.2 * grad(w))
    assert not wrong.ok


def test_a_stop_gradient_both_gradients_honour_points_at_finite_differences():
    def loss(w):
        return jnp.sum(w * jax.lax.stop_gradient(w) ** 2)

    def grad(w):
        return np.asarray(w) ** 2

    report = gradaudit.check(loss, np.array([1.0, 2.0, -0.5]), grad=grad)
    assert not report.ok
    assert report.leaves[0].verdict == "fd_suspect"
    assert report.pairs["manual-autodiff"].ok
    assert "stop_gradient" in report.leaves[0].explanation


@jax.custom_vjp
def cube(x):
    return x**3


def _cube_forward(x):
    return x**3, x


def _cube_backward_wrong(x, upstream):
    return (2 * x**2 * upstream,)  # should be 3 * x**2


cube.defvjp(_cube_forward, _cube_backward_wrong)


def test_a_wrong_custom_vjp_is_blamed_on_the_jax_side():
    def loss(w):
        return jnp.sum(cube(w))

    def grad(w):
        return 3 * np.asarray(w) ** 2

    report = gradaudit.check(loss, np.array([0.5, 1.5, -2.0]), grad=grad)
    assert report.leaves[0].verdict == "autodiff_suspect"
    assert report.pairs["manual-fd"].ok
    assert not report.pairs["autodiff-fd"].ok


def test_without_a_hand_written_gradient_autodiff_is_checked_against_fd():
    report = gradaudit.check(lambda w: jnp.sum(cube(w)), np.array([0.5, 1.5]))
    assert list(report.pairs) == ["autodiff-fd"]
    assert not report.sources["manual"].available
    assert report.leaves[0].verdict == "autodiff_vs_fd"


def test_nan_in_the_hand_written_gradient_is_its_own_failure():
    def grad(w):
        g = 2 * np.asarray(w)
        g[1] = np.nan
        return g

    report = gradaudit.check(lambda w: jnp.sum(w**2), np.array([1.0, 2.0]), grad=grad)
    assert not report.ok
    assert report.leaves[0].verdict == "nonfinite"
    assert "NaN" in report.summary()


def relu_loss(w, x):
    return jnp.sum(jax.nn.relu(w) * x)


@pytest.mark.parametrize(
    "grad",
    [
        lambda w, x: (w > 0) * x,  # relu'(0) = 0, as jax.grad chooses
        lambda w, x: (w >= 0) * x,  # relu'(0) = 1: the other valid one-sided slope
    ],
    ids=["left-slope", "right-slope"],
)
def test_a_valid_choice_at_a_kink_is_not_a_failure(grad):
    w, x = np.array([0.0, 1.0, -1.0]), np.array([2.0, 3.0, 4.0])
    report = gradaudit.check(relu_loss, w, x, grad=grad)
    assert report.ok, report.summary()
    assert report.leaves[0].unreliable_indices == ((0,),)
    (kink,) = report.leaves[0].kinks
    assert (kink.left, kink.right) == pytest.approx((0.0, 2.0), abs=1e-6)


def test_a_value_outside_the_one_sided_slopes_is_flagged():
    w, x = np.array([0.0, 1.0]), np.array([2.0, 3.0])
    report = gradaudit.check(
        relu_loss, w, x, grad=lambda w, x: np.where(w == 0, 5.0, (w > 0) * x)
    )
    assert not report.ok
    assert report.leaves[0].verdict == "manual_kink"
    assert "not a valid choice" in report.leaves[0].kinks[0].manual_choice


def test_routing_the_gradient_to_every_tied_maximum_is_flagged():
    def loss(v):
        return 3.0 * jnp.max(v)

    def route_to_all(v):
        return np.where(v == v.max(), 3.0, 0.0)

    def route_to_first(v):
        g = np.zeros_like(v)
        g[np.argmax(v)] = 3.0
        return g

    v = np.array([1.0, 2.0, 2.0, 0.5])
    assert gradaudit.check(loss, v, grad=route_to_first).ok
    report = gradaudit.check(loss, v, grad=route_to_all)
    assert report.leaves[0].verdict == "manual_kink"


def test_separate_kinks_bending_opposite_ways_allow_either_slope_at_each():
    # ReLUs of units at exactly zero whose downstream weights differ in sign: one
    # kink is convex, the other concave, and along their combined direction the
    # bends cancel. Each unit's one-sided slope is still a valid choice.
    def loss(b, c):
        return jnp.sum(c * jax.nn.leaky_relu(b, 0.01))

    def left_slopes(b, c):
        return c * np.where(b > 0, 1.0, 0.01)

    def routed_everywhere(b, c):
        return c * 2.0

    b, c = np.zeros(3), np.array([0.5, -2.0, 1.5])
    report = gradaudit.check(loss, b, c, grad=left_slopes)
    assert report.ok, report.summary()
    assert len(report.leaves[0].kinks) == 3
    assert not gradaudit.check(loss, b, c, grad=routed_everywhere).ok


def test_a_valid_slope_is_not_blamed_where_jax_grad_splits_a_tie_in_half():
    # jnp.maximum at a tie gives half the gradient to each side; through a
    # recurrence that lands outside the one-sided slopes of the loss. The
    # hand-written left slope is valid and must not fail.
    def loss(p):
        h1 = jnp.maximum(p["b"], 0.0)
        h2 = jnp.maximum(p["w"] * h1 + p["b"], 0.0)
        return h2 + 0.5 * p["w"] ** 2

    def grad(p):
        b, w = float(p["b"]), float(p["w"])
        h1 = max(b, 0.0)
        d2 = float(w * h1 + b > 0)
        d1 = d2 * w * (b > 0)
        return {"b": np.asarray(d2 + d1), "w": np.asarray(d2 * h1 + w)}

    params = {"b": np.array(0.0), "w": np.array(-0.9)}
    report = gradaudit.check(loss, params, grad=grad)
    assert report.ok, report.summary()
    (kink,) = report.leaf("['b']").kinks
    assert "not a valid choice" in kink.autodiff_choice
    assert kink.manual_choice == "the left slope"
    assert any("split the gradient in half" in f for f in report.findings)

    def invalid(p):
        return {**grad(p), "b": np.asarray(0.5)}

    assert report.leaf("['b']").verdict == "agree"
    assert gradaudit.check(loss, params, grad=invalid).leaf("['b']").verdict == (
        "manual_kink"
    )


def test_a_dropout_loss_with_a_key_is_differentiated_as_the_session_draws(rng):
    # With x64 on, jax.random draws another mask from the same key, so the
    # reference must run with x64 off, as the user's session does.
    def loss(w, key):
        keep = jax.random.bernoulli(key, 0.5, w.shape)
        return jnp.sum(jnp.where(keep, w / 0.5, 0.0) ** 2)

    def grad(w, key):
        keep = np.asarray(jax.random.bernoulli(key, 0.5, w.shape))
        return np.where(keep, 2 * w / 0.25, 0.0)

    def grad_without_rescale(w, key):
        keep = np.asarray(jax.random.bernoulli(key, 0.5, w.shape))
        return np.where(keep, 2 * w, 0.0)

    w = rng.normal(size=12).astype(np.float32)
    with jax.enable_x64(False):
        for key in (jax.random.PRNGKey(3), jax.random.key(3)):
            report = gradaudit.check(loss, w, key, grad=grad)
            assert report.ok, report.summary()
            assert report.settings.reference_precision.startswith("float32")
            assert "jax.random" in report.findings[0]
            wrong = gradaudit.check(loss, w, key, grad=grad_without_rescale)
            assert wrong.leaves[0].verdict == "manual_wrong"
    with jax.enable_x64(True):
        report = gradaudit.check(
            loss, w.astype(np.float64), jax.random.key(3), grad=grad
        )
        assert report.ok, report.summary()
        assert report.settings.reference_precision.startswith("float64")


def test_draws_that_follow_the_parameters_dtype_are_drawn_as_the_session_does(rng):
    def loss(w, key):
        noise = jax.random.normal(key, w.shape, dtype=w.dtype)
        return jnp.sum((w + 0.1 * noise) ** 2)

    def grad(w, key):
        noise = np.asarray(jax.random.normal(key, w.shape, dtype=w.dtype))
        return 2 * (w + 0.1 * noise)

    w = rng.normal(size=8).astype(np.float32)
    with jax.enable_x64(True):
        report = gradaudit.check(loss, w, jax.random.key(1), grad=grad)
    assert report.ok, report.summary()
    assert report.settings.reference_precision.startswith("float32")
    with pytest.raises(gradaudit.InvalidInputError, match="draws random numbers"):
        gradaudit.check(loss, w.astype(jnp.bfloat16), jax.random.key(1), grad=grad)


def test_a_float32_reference_does_not_call_a_scaled_gradient_a_kink(rng):
    # Richardson's float32 step is too coarse for the kink test, so a float32
    # reference keeps central differences and leaves the dispute unrefereed.
    def loss(w, x, key):
        keep = jax.random.bernoulli(key, 0.7, (x.shape[0], w.shape[1]))
        return jnp.sum((jnp.tanh(x @ w) * keep / 0.7) ** 2)

    def grad(w, x, key):
        keep = np.asarray(jax.random.bernoulli(key, 0.7, (x.shape[0], w.shape[1])))
        t = np.tanh(x @ w)
        return 1.001 * (x.T @ (2 * t * keep / 0.49 * (1 - t**2)))

    w = rng.normal(size=(5, 4)).astype(np.float32)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    report = gradaudit.check(loss, w, x, jax.random.PRNGKey(42), grad=grad)
    leaf = report.leaves[0]
    assert leaf.verdict in ("manual_wrong", "manual_or_autodiff"), report.summary()
    assert leaf.kinks == ()
    assert leaf.diagnosis.detail["factor"] == pytest.approx(1.001, rel=1e-5)


def test_a_custom_rule_that_casts_its_backward_pass_is_judged_in_that_dtype(rng):
    @jax.custom_vjp
    def square(x):
        return x * x

    square.defvjp(lambda x: (x * x, x), lambda x, g: ((2 * x * g).astype(jnp.float32),))

    def loss(w):
        return jnp.sum(jnp.cos(square(w)))

    w = rng.normal(size=4).astype(np.float32)
    for grad in (None, lambda w: -np.sin(w * w) * 2 * w):
        report = gradaudit.check(loss, w, grad=grad)
        assert report.ok, report.summary()
        assert report.sources["autodiff"].dtype == "float32"
        assert any("backward pass computes in float32" in f for f in report.findings)


def test_an_invalid_custom_rule_at_a_kink_fails_without_a_hand_written_gradient():
    @jax.custom_jvp
    def relu(x):
        return jnp.maximum(x, 0.0)

    @relu.defjvp
    def relu_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return relu(x), jnp.where(x > 0, 1.0, jnp.where(x == 0, 5.0, 0.0)) * t

    def loss(w):
        return jnp.sum(2.0 * relu(w))

    w = np.array([0.5, 0.0, -1.0])
    report = gradaudit.check(loss, w)
    assert report.leaves[0].verdict == "autodiff_vs_fd", report.summary()
    (kink,) = report.leaves[0].kinks
    assert "not a valid choice" in kink.autodiff_choice


def test_a_nan_in_jax_grad_does_not_hide_a_wrong_hand_written_gradient():
    def loss(w):
        # The classic trap: sqrt of the negatives, in the branch where does not
        # take, makes jax.grad nan there.
        return jnp.sum(jnp.where(w > 0, jnp.sqrt(w), 0.0) + w**2)

    def grad(w):
        return np.where(w > 0, 0.5 / np.sqrt(np.abs(w)), 0.0) + 2 * w

    def wrong(w):
        return grad(w) + np.where(w < 0, w, 0.0)

    w = np.array([0.5, -0.7, 1.2, -0.2])
    right, buggy = (
        gradaudit.check(loss, w, grad=grad),
        gradaudit.check(loss, w, grad=wrong),
    )
    assert right.leaves[0].verdict == buggy.leaves[0].verdict == "nonfinite"
    assert right.pairs["manual-fd"].ok
    assert buggy.leaves[0].pairs["manual-fd"].mismatched_indices == ((1,), (3,))


def test_a_jax_gradient_computing_in_float32_for_float64_params_is_said(rng):
    w = rng.normal(size=5)
    with jax.enable_x64(False):
        report = gradaudit.check(
            lambda w: jnp.sum(jnp.sin(w)), w, grad=jax.jit(lambda w: jnp.cos(w))
        )
    assert report.ok, report.summary()
    assert report.sources["manual"].dtype == "float32"
    assert any("computes in float32 for float64" in f for f in report.findings)


def test_each_leaf_of_the_hand_written_gradient_keeps_its_own_precision():
    # A float32 leaf beside a float64 one must not loosen the float64 leaf's rtol.
    def loss(p):
        return jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 3)

    def grad(p):
        return {"a": 2 * p["a"], "b": 3 * p["b"] ** 2 * (1 + 1e-5)}

    params = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([0.5, 1.5])}
    report = gradaudit.check(loss, params, grad=grad)
    assert [leaf.path for leaf in report.failing_leaves] == ["['b']"]


def test_routing_a_tie_to_every_input_fails_where_jax_grad_agrees_on_some():
    # jax.grad sends the tie of a top-3 sum to two of the three tied inputs; the
    # hand-written gradient sends it to all three, agreeing with jax.grad on two.
    def loss(v):
        return jnp.sum(jax.lax.top_k(v, 3)[0])

    def to_every_tie(v):
        return (v >= np.sort(v)[-3]).astype(v.dtype)

    v = np.array([4.0, 5.0, 1.0, 4.0, 0.5, 4.0])
    report = gradaudit.check(loss, v, grad=to_every_tie)
    assert report.leaves[0].verdict == "manual_kink", report.summary()


def test_a_leaf_with_a_far_smaller_gradient_is_judged_on_its_own_scale():
    # The gradient of a parameter near 1e6 is some 1e12 times smaller than that of
    # one near 1e-6; an error in it must not hide under the larger leaf's scale.
    def loss(p):
        return jnp.sum(jnp.sin(p["tiny"] * 1e6)) + jnp.sum(jnp.log(p["huge"]))

    def grad(p):
        return {"tiny": 1e6 * np.cos(p["tiny"] * 1e6), "huge": 1.01 / p["huge"]}

    params = {"tiny": np.array([1.1e-6, 2.3e-6]), "huge": np.array([2.4e6, 3.1e6])}
    report = gradaudit.check(loss, params, grad=grad)
    assert [leaf.path for leaf in report.failing_leaves] == ["['huge']"]


def kink_near(point, distance, jump=1.0):
    """A loss of one weight with a jump in slope `distance` away from `point`."""
    corner = point + distance

    def loss(w):
        return jnp.sum(jump * jax.nn.relu(w - corner) + 0.25 * w)

    def grad(w):
        return 0.25 + jump * (w > corner)

    return loss, grad


@pytest.mark.parametrize("method", ["central", "fourth_order", "richardson"])
@pytest.mark.parametrize("steps", [-2.5, -2 / 3, -0.45, 0.5, 2 / 3, 1.4, 3.2])
def test_a_kink_a_few_steps_away_never_fails_a_correct_gradient(method, steps):
    # A kink inside the stencil but not at the point: the hand-written gradient and
    # jax.grad are both right, and finite differences must not claim otherwise,
    # including where the kink test is blind (two thirds of a step away).
    step = 2.0**-12
    loss, grad = kink_near(1.0, steps * step)
    report = gradaudit.check(loss, np.array([1.0]), grad=grad, method=method, step=step)
    assert report.ok, report.summary()


def test_kinks_that_cancel_in_the_kink_test_are_caught_at_a_smaller_step():
    # Two kinks, 0.51 and 0.96 steps either side, fool the kink test and the error
    # estimate of central differences alike; cutting the step exposes them.
    step = 2.0**-17

    def loss(w):
        near, far = 1.0 + 0.51 * step, 1.0 - 0.96 * step
        return jnp.sum(1.5 * jax.nn.relu(w - near) + 0.8 * jax.nn.relu(w - far) + w)

    def grad(w):
        return 1.0 + 1.5 * (w > 1.0 + 0.51 * step) + 0.8 * (w > 1.0 - 0.96 * step)

    report = gradaudit.check(loss, np.array([1.0]), grad=grad, step=step)
    assert report.ok, report.summary()
    assert report.leaves[0].unreliable_indices == ((0,),)
    assert any("cut 16-fold" in finding for finding in report.findings)


def test_a_stop_gradient_survives_the_second_look_at_a_smaller_step():
    # A real difference between the derivative and jax.grad does not move with the
    # step, so finite differences keep their say and the verdict names them.
    def loss(w):
        return jnp.sum(w**2 - 0.5 * jax.lax.stop_gradient(w) ** 2)

    report = gradaudit.check(loss, np.array([0.5, -1.5]), grad=lambda w: 2 * w)
    assert not report.ok
    assert report.leaves[0].verdict == "fd_suspect"
    assert report.leaves[0].unreliable_indices == ()


def test_a_loss_that_casts_to_float32_inside_is_reported():
    def loss(w):
        return jnp.sum(jnp.sin(w.astype(jnp.float32)) ** 2)

    def grad(w):
        return 2 * np.sin(w) * np.cos(w)

    report = gradaudit.check(loss, np.linspace(-1, 1, 9), grad=grad)
    assert report.ok, report.summary()
    assert report.settings.loss_precision == "float32"
    assert any("computes in float32" in f for f in report.findings)


def test_a_numpy_loss_is_checked_by_finite_differences_on_the_host(rng):
    x = rng.normal(size=(6, 4))

    def loss(w, x):
        return float(np.sum(np.sin(x @ w)))

    def grad(w, x):
        return x.T @ np.cos(x @ w)

    w = rng.normal(size=4)
    report = gradaudit.check(loss, w, x, grad=grad)
    assert report.ok
    assert not report.sources["autodiff"].available
    assert "not traceable" in report.sources["autodiff"].note
    wrong = gradaudit.check(loss, w, x, grad=lambda w, x: 2 * grad(w, x))
    assert wrong.leaves[0].verdict == "manual_wrong_vs_fd"


def large_model(rng):
    params = {"W": rng.normal(size=(120, 80)) / 10, "b": np.zeros(80)}
    x = rng.normal(size=(16, 120))
    return params, x


def large_loss(params, x):
    return jnp.mean(jnp.tanh(x @ params["W"] + params["b"]) ** 2)


def large_grad(params, x):
    hidden = np.tanh(x @ params["W"] + params["b"])
    dpre = 2 * hidden * (1 - hidden**2) / hidden.size
    return {"W": x.T @ dpre, "b": dpre.sum(0)}


def test_sampled_mode_referees_the_worst_disagreement(rng):
    params, x = large_model(rng)
    wrong = perturbed(large_grad, "W", (100, 7), 1.01)
    report = gradaudit.check(
        large_loss, params, x, grad=wrong, mode="sampled", samples_per_leaf=8
    )
    leaf = report.leaf("['W']")
    assert leaf.coverage == "8 of 9600 elements"
    assert leaf.verdict == "manual_wrong"
    assert leaf.pairs["manual-fd"].mismatched_indices == ((100, 7),)
    assert report.leaf("['b']").ok


def test_directional_mode_catches_a_wrong_custom_rule_on_a_large_leaf(rng):
    @jax.custom_vjp
    def scaled_tanh(z):
        return jnp.tanh(z)

    def backward(z, upstream):
        return (upstream * (1 - jnp.tanh(z) ** 2) * 1.05,)

    scaled_tanh.defvjp(lambda z: (jnp.tanh(z), z), backward)
    params, x = large_model(rng)

    def loss(params, x):
        return jnp.mean(scaled_tanh(x @ params["W"] + params["b"]) ** 2)

    report = gradaudit.check(loss, params, x, mode="directional")
    assert report.leaf("['W']").coverage == "4 random directions"
    assert not report.pairs["autodiff-fd"].ok
    assert report.leaf("['W']").pairs["autodiff-fd"].worst.direction is not None


def test_auto_mode_samples_when_full_differences_would_exceed_the_budget(rng):
    params, x = large_model(rng)
    report = gradaudit.check(large_loss, params, x, grad=large_grad, time_budget=0.0)
    assert report.settings.mode == "sampled+directional (auto)"
    assert report.ok, report.summary()
    full = gradaudit.check(large_loss, params, x, grad=large_grad, time_budget=1e9)
    assert full.settings.mode == "full (auto)"


def test_the_same_seed_gives_the_same_report_and_another_seed_other_probes(rng):
    params, x = large_model(rng)
    options = dict(grad=large_grad, mode="sampled", samples_per_leaf=4)
    first = gradaudit.check(large_loss, params, x, seed=3, **options)
    again = gradaudit.check(large_loss, params, x, seed=3, **options)
    other = gradaudit.check(large_loss, params, x, seed=4, **options)
    assert first.to_dict()["pairs"] == again.to_dict()["pairs"]
    assert first.settings.seed == 3
    assert first.to_dict()["pairs"] != other.to_dict()["pairs"]


class Layer(NamedTuple):
    weight: jnp.ndarray
    bias: jnp.ndarray


@dataclasses.dataclass
class Model:
    layers: list
    scale: jnp.ndarray


jax.tree_util.register_dataclass(Model, data_fields=["layers", "scale"], meta_fields=[])


def test_nested_pytrees_report_keystr_paths():
    model = Model(
        layers=[
            Layer(jnp.ones((2, 2)), jnp.zeros(2)),
            Layer(jnp.ones((2, 1)), jnp.zeros(1)),
        ],
        scale=jnp.array(1.5),
    )

    def loss(m, x):
        h = x
        for layer in m.layers:
            h = jnp.tanh(h @ layer.weight + layer.bias)
        return m.scale * jnp.sum(h**2)

    x = jnp.array([[0.3, -0.2], [0.1, 0.4]])
    report = gradaudit.check(loss, model, x, grad=jax.grad(loss))
    assert report.ok
    paths = [leaf.path for leaf in report.leaves]
    assert paths == [
        ".layers[0].weight",
        ".layers[0].bias",
        ".layers[1].weight",
        ".layers[1].bias",
        ".scale",
    ]


def test_assert_gradients_raises_with_the_report_and_returns_it_when_ok(rng):
    params, x, y = mlp_point(rng, np.float64)
    report = gradaudit.assert_gradients(mlp_loss, params, x, y, grad=mlp_grad)
    assert report.ok
    wrong = perturbed(mlp_grad, "b1", (1,), 2.0)
    with pytest.raises(gradaudit.GradientMismatchError, match=r"\['b1'\]") as caught:
        gradaudit.assert_gradients(mlp_loss, params, x, y, grad=wrong)
    assert isinstance(caught.value, AssertionError)
    assert caught.value.report.leaf("['b1']").verdict == "manual_wrong"


def test_a_float32_reference_serves_devices_without_float64(rng):
    params, x, y = mlp_point(rng, np.float32)
    report = gradaudit.check(mlp_loss, params, x, y, grad=mlp_grad, precision="float32")
    assert report.ok, report.summary()
    assert report.settings.reference_precision.startswith("float32")
    assert report.sources["fd"].dtype == "float32"
    wrong = perturbed(mlp_grad, "W2", (1, 0), 1.01)
    flagged = gradaudit.check(mlp_loss, params, x, y, grad=wrong, precision="float32")
    assert [leaf.path for leaf in flagged.failing_leaves] == ["['W2']"]


def test_float32_data_is_lifted_to_the_float64_reference(rng):
    # jax.lax.conv refuses mixed dtypes, so this only runs if the data (not only
    # the parameters) reaches the loss in float64.
    def loss(w, x):
        out = jax.lax.conv_general_dilated(x, w, (1,), "VALID")
        return jnp.sum(jnp.tanh(out) ** 2)

    x = rng.normal(size=(2, 1, 7)).astype(np.float32)
    w = rng.normal(size=(1, 1, 3)).astype(np.float32)
    report = gradaudit.check(loss, w, x, grad=jax.grad(loss))
    assert report.ok, report.summary()
    assert report.sources["autodiff"].dtype == "float64"


def test_an_unrefereed_disagreement_is_settled_with_richardson(rng):
    # A relative error of 1e-6 in one element of a 60000-element leaf: sampled
    # finite differences look at it (it is where manual and jax.grad disagree
    # most), but central differences are not accurate enough there to say who is
    # right. The check repeats them with Richardson extrapolation, which is.
    params = {
        "W1": rng.normal(size=(300, 200)) / 15,
        "W2": rng.normal(size=(200, 10)) / 15,
    }
    x, y = rng.normal(size=(32, 300)), rng.normal(size=(32, 10))

    def loss(p, x, y):
        out = jnp.tanh(x @ p["W1"]) @ p["W2"]
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=1))

    def backprop(p, x, y):
        h = np.tanh(x @ p["W1"])
        d_out = (h @ p["W2"] - y) / len(x)
        d_w1 = x.T @ ((d_out @ p["W2"].T) * (1 - h**2))
        d_w1[17, 3] *= 1 + 1e-6
        return {"W1": d_w1, "W2": h.T @ d_out}

    report = gradaudit.check(loss, params, x, y, grad=backprop)
    assert [leaf.path for leaf in report.failing_leaves] == ["['W1']"]
    leaf = report.leaf("['W1']")
    assert leaf.verdict == "manual_wrong"
    assert leaf.pairs["manual-autodiff"].mismatched_indices == ((17, 3),)
    assert report.settings.method == "richardson"
    assert any("Richardson" in finding for finding in report.findings)
