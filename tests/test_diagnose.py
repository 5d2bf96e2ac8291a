"""The diagnosis names a pattern only when every judged element fits it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradaudit


def _loss(p, x):
    out = jax.lax.conv_general_dilated(x, p["K"], (1, 1), "SAME")
    return jnp.sum(jnp.tanh(out + p["c"][None, :, None, None]) ** 2)


@pytest.fixture
def problem(rng):
    params = {"K": rng.normal(size=(3, 2, 3, 3)) / 3, "c": rng.normal(size=3) / 3}
    x = rng.normal(size=(2, 2, 8, 8))
    return params, x


def _diagnosis(problem, edit, path):
    params, x = problem
    reference = jax.jit(jax.grad(_loss))

    def grad(p, x):
        with jax.enable_x64(True):
            g = {k: np.array(v) for k, v in reference(p, x).items()}
        edit(g, p)
        return g

    report = gradaudit.check(_loss, params, x, grad=grad)
    assert [leaf.path for leaf in report.failing_leaves] == [path], report.summary()
    return report.leaf(path).diagnosis


def test_one_output_channel_of_a_kernel_is_a_channel_region(problem):
    def edit(g, p):
        g["K"][1] *= 3.0

    diagnosis = _diagnosis(problem, edit, "['K']")
    assert diagnosis.kind == "region"
    assert diagnosis.detail == {"region": "channel", "axis": 0, "index": 1}
    assert "scaled by 3 there" in diagnosis.summary


def test_the_border_of_the_spatial_axes_is_a_border_region(rng):
    x0 = rng.normal(size=(6, 7))

    def loss(x):
        return jnp.sum(jnp.sin(x) * x)

    def grad(x):
        g = np.sin(x) + x * np.cos(x)
        g[0, :] += 0.5
        g[:, -1] += 0.5
        return g

    report = gradaudit.check(loss, x0, grad=grad)
    diagnosis = report.leaves[0].diagnosis
    assert diagnosis.kind == "region"
    assert diagnosis.detail == {
        "region": "border",
        "width": 1,
        "axes": [0, 1],
        # Row 0 and the last column reach every edge of the leaf.
        "sides": ["axis 0 start", "axis 0 end", "axis 1 start", "axis 1 end"],
    }


def test_two_patterns_at_once_are_no_simple_pattern(problem):
    def edit(g, p):
        g["K"] = 2.0 * np.swapaxes(g["K"], -1, -2) + 0.1

    diagnosis = _diagnosis(problem, edit, "['K']")
    assert diagnosis.kind == "no_pattern"


def test_a_factor_on_one_element_alone_is_no_evidence(rng):
    def loss(p):
        return jnp.sin(p["a"]) + jnp.sum(p["v"] ** 2)

    def grad(p):
        return {"a": 3.0 * np.cos(p["a"]), "v": 2 * p["v"]}

    params = {"a": np.array(0.3), "v": rng.normal(size=3)}
    report = gradaudit.check(loss, params, grad=grad)
    assert report.leaf("['a']").diagnosis.kind == "no_pattern"


def test_one_factor_shared_by_single_element_leaves_is_a_scale():
    def loss(p):
        return 0.5 * (p["a"] * 2.0 + p["b"] * 3.0 - 1.0) ** 2

    def output_gradient(p):
        return {"a": np.asarray(2.0), "b": np.asarray(3.0)}

    params = {"a": np.array(0.9), "b": np.array(0.2)}
    report = gradaudit.check(loss, params, grad=output_gradient)
    for leaf in report.leaves:
        assert leaf.diagnosis.kind == "scale"
        assert leaf.diagnosis.detail["leaves"] == ["['a']", "['b']"]
    residual = 0.9 * 2.0 + 0.2 * 3.0 - 1.0
    assert report.leaves[0].diagnosis.detail["factor"] == pytest.approx(1 / residual)


def test_a_passing_leaf_has_no_diagnosis(problem):
    params, x = problem
    report = gradaudit.check(_loss, params, x)
    assert report.ok
    assert all(leaf.diagnosis is None for leaf in report.leaves)


def test_the_diagnosis_travels_in_the_json(rng):
    w = rng.normal(size=4)

    def loss(w):
        return jnp.sum(jnp.cos(w))

    report = gradaudit.check(loss, w, grad=lambda w: np.sin(w))
    leaf = report.to_dict()["leaves"][0]
    assert leaf["diagnosis"]["kind"] == "sign"
    assert leaf["diagnosis"]["detail"]["factor"] == pytest.approx(-1.0)
    assert leaf["diagnosis"]["summary"] == "the sign is flipped"


def test_a_few_scattered_elements_near_the_edges_are_no_border(rng):
    w0 = rng.normal(size=(40, 30))

    def loss(w):
        return jnp.sum(jnp.sin(w) * w)

    def grad(w):
        g = np.sin(w) + w * np.cos(w)
        for index in [(3, 4), (30, 27), (12, 2)]:
            g[index] *= 1.001
        return g

    diagnosis = gradaudit.check(loss, w0, grad=grad).leaves[0].diagnosis
    assert diagnosis.kind == "no_pattern"
    assert diagnosis.detail == {"mismatched": 3}


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_a_flipped_sign_is_named_on_a_single_element_leaf(shape):
    def loss(p):
        return jnp.sum(jnp.sin(p["w"])) + jnp.sum(p["v"] ** 2)

    def grad(p):
        return {"w": -np.cos(p["w"]), "v": 2 * p["v"]}

    params = {"w": np.full(shape, 0.4), "v": np.array([0.5, -1.0])}
    report = gradaudit.check(loss, params, grad=grad)
    assert [leaf.path for leaf in report.failing_leaves] == ["['w']"]
    assert report.leaf("['w']").diagnosis.kind == "sign"


def test_a_factor_shared_by_some_leaves_only_is_not_the_whole_backward_pass():
    def loss(p):
        return jnp.sin(p["a"]) + jnp.cos(p["b"]) + p["c"] ** 3 + jnp.exp(p["d"])

    def grad(p):
        return {
            "a": 1.7 * np.cos(p["a"]),
            "b": -np.sin(p["b"]),
            "c": 1.7 * 3 * p["c"] ** 2,
            "d": np.exp(p["d"]),
        }

    params = {
        k: np.array(v) for k, v in zip("abcd", [0.3, 0.8, -0.6, 0.1], strict=True)
    }
    report = gradaudit.check(loss, params, grad=grad)
    assert [leaf.path for leaf in report.failing_leaves] == ["['a']", "['c']"]
    diagnosis = report.leaf("['a']").diagnosis
    assert diagnosis.kind == "scale"
    assert diagnosis.detail["leaves"] == ["['a']", "['c']"]
    assert "whole backward pass" not in diagnosis.summary


def test_a_factor_close_to_one_is_written_with_the_digits_that_show_it(rng):
    w = rng.normal(size=5)
    report = gradaudit.check(
        lambda w: jnp.sum(w**3), w, grad=lambda w: 3 * w**2 * 1.0001
    )
    assert report.leaves[0].diagnosis.summary == "scaled by 1.0001"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_two_swapped_leaves_are_named_as_swapped_in_either_dtype(rng, dtype):
    params = {
        "U": rng.normal(size=(3, 3)).astype(dtype),
        "V": rng.normal(size=(3, 3)).astype(dtype),
    }
    x = rng.normal(size=(4, 3)).astype(dtype)

    def loss(p, x):
        return jnp.sum(jnp.tanh(x @ p["U"]) @ p["V"])

    def grad(p, x):
        hidden = np.tanh(x @ p["U"])
        upstream = np.ones((x.shape[0], 3), dtype) @ p["V"].T * (1 - hidden**2)
        return {"U": hidden.T @ np.ones((x.shape[0], 3), dtype), "V": x.T @ upstream}

    report = gradaudit.check(loss, params, x, grad=grad)
    for path, other in (("['U']", "['V']"), ("['V']", "['U']")):
        diagnosis = report.leaf(path).diagnosis
        assert diagnosis.kind == "swap", report.summary()
        assert diagnosis.detail == {"other": other, "mutual": True}


@pytest.mark.parametrize(
    ("shape", "edges", "axes"),
    [
        ((2, 5, 6, 3), "nhwc", [1, 2]),  # JAX's default layout for images
        ((2, 7, 3), "nlc", [1]),  # a sequence, channels last
        ((2, 3, 7), "ncl", [2]),  # a sequence, channels first
    ],
)
def test_a_border_is_found_on_whichever_axes_are_spatial(rng, shape, edges, axes):
    x0 = rng.normal(size=shape)

    def grad(x):
        g = np.sin(x) + x * np.cos(x)
        edge = [slice(None)] * len(shape)
        for axis in axes:
            for end in (0, -1):
                edge[axis] = end
                g[tuple(edge)] *= 0.5
            edge[axis] = slice(None)
        return g

    report = gradaudit.check(lambda x: jnp.sum(jnp.sin(x) * x), x0, grad=grad)
    diagnosis = report.leaves[0].diagnosis
    assert diagnosis.kind == "region", edges
    assert diagnosis.detail["region"] == "border"
    assert diagnosis.detail["axes"] == axes
    assert diagnosis.detail["width"] == 1


def test_a_strip_at_one_end_of_an_axis_is_named_with_its_width(rng):
    x0 = rng.normal(size=(2, 3, 9))

    def grad(x):
        g = np.sin(x) + x * np.cos(x)
        g[..., :2] = 0.0  # a causal convolution's left padding, mishandled
        return g

    report = gradaudit.check(lambda x: jnp.sum(jnp.sin(x) * x), x0, grad=grad)
    diagnosis = report.leaves[0].diagnosis
    assert diagnosis.summary.startswith("wrong only in the first 2 positions along")
    assert diagnosis.detail["sides"] == ["axis 2 start"]
