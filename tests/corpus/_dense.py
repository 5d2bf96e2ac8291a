"""Dense layers: linear regression, a two-layer tanh network, a residual block."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from ._case import Case
from ._util import normal, relu_safe_dense

# Linear regression with a half mean squared error. W is square so that a
# transposed gradient has the right shape and can slip through unnoticed.


def _linreg_inputs(rng, dtype):
    x = normal(rng, (8, 5), dtype)
    y = normal(rng, (8, 5), dtype)
    params = {"W": normal(rng, (5, 5), dtype, 0.5), "b": normal(rng, (5,), dtype)}
    return params, (x, y)


def _linreg_loss(params, x, y):
    residual = x @ params["W"] + params["b"] - y
    return 0.5 * jnp.sum(residual**2) / x.shape[0]


def _linreg_grad(params, x, y, *, bug=None):
    n = x.shape[0]
    residual = x @ params["W"] + params["b"] - y
    upstream = residual if bug == "forgot_mean" else residual / n
    grad_w = x.T @ upstream
    if bug == "transpose":
        # Outer product written in the wrong order.
        grad_w = upstream.T @ x
    grad_b = upstream.sum(axis=0)
    if bug == "sign_bias":
        # The residual for the bias was written as target minus prediction.
        grad_b = -grad_b
    return {"W": grad_w, "b": grad_b}


# The same model with a plain mean squared error, differentiated in jax.numpy.


def _linreg_mse_loss(params, x, y):
    residual = x @ params["W"] + params["b"] - y
    return jnp.mean(residual**2)


def _linreg_mse_grad(params, x, y, *, forgot_two=False):
    residual = x @ params["W"] + params["b"] - y
    upstream = residual / residual.size
    if not forgot_two:
        upstream = 2 * upstream
    return {"W": x.T @ upstream, "b": jnp.sum(upstream, axis=0)}


# A two-layer tanh network with nested parameter dicts. Both layers are 6x6 so
# that swapping their gradients keeps every shape valid.


def _tanh_net_inputs(rng, dtype):
    x = normal(rng, (7, 6), dtype)
    y = normal(rng, (7, 6), dtype, 0.5)
    params = {
        "layer1": {"w": normal(rng, (6, 6), dtype, 0.4), "b": normal(rng, (6,), dtype)},
        "layer2": {"w": normal(rng, (6, 6), dtype, 0.4), "b": normal(rng, (6,), dtype)},
    }
    return params, (x, y)


def _tanh_net_loss(params, x, y):
    l1, l2 = params["layer1"], params["layer2"]
    h = jnp.tanh(x @ l1["w"] + l1["b"])
    out = h @ l2["w"] + l2["b"]
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=1))


def _tanh_net_grad(params, x, y, *, bug=None):
    l1, l2 = params["layer1"], params["layer2"]
    n = x.shape[0]
    h = np.tanh(x @ l1["w"] + l1["b"])
    out = h @ l2["w"] + l2["b"]

    d_out = (out - y) / n
    grad_w2 = h.T @ d_out
    grad_b2 = d_out.sum(axis=0)
    d_pre = (d_out @ l2["w"].T) * (1 - h**2)
    grad_w1 = x.T @ d_pre
    grad_b1 = d_pre.sum(axis=0)

    if bug == "swap":
        grad_w1, grad_w2 = grad_w2, grad_w1
    if bug == "zero":
        grad_b1 = np.zeros_like(l1["b"])
    return {
        "layer1": {"w": grad_w1, "b": grad_b1},
        "layer2": {"w": grad_w2, "b": grad_b2},
    }


# A residual block on top of a projection: r = h + relu(h W1 + b1) W2, h = x W0.
# The skip path is the only route by which the loss sees W0 without passing
# through the ReLU branch.


def _residual_inputs(rng, dtype):
    x = normal(rng, (6, 4), dtype)
    y = normal(rng, (6, 5), dtype)
    w0 = normal(rng, (4, 5), dtype, 0.5)
    w1, b1 = relu_safe_dense(rng, x @ w0, (5, 5), dtype, scale=0.5)
    w2 = normal(rng, (5, 5), dtype, 0.5)
    return {"W0": w0, "W1": w1, "b1": b1, "W2": w2}, (x, y)


def _residual_loss(params, x, y):
    h = x @ params["W0"]
    branch = jnp.maximum(h @ params["W1"] + params["b1"], 0.0)
    r = h + branch @ params["W2"]
    return 0.5 * jnp.sum((r - y) ** 2) / x.shape[0]


def _residual_grad(params, x, y, *, forgot_skip=False):
    n = x.shape[0]
    h = x @ params["W0"]
    pre = h @ params["W1"] + params["b1"]
    branch = np.maximum(pre, 0)
    r = h + branch @ params["W2"]

    d_r = (r - y) / n
    grad_w2 = branch.T @ d_r
    d_pre = (d_r @ params["W2"].T) * (pre > 0)
    grad_w1 = h.T @ d_pre
    grad_b1 = d_pre.sum(axis=0)
    d_h = d_pre @ params["W1"].T
    if not forgot_skip:
        d_h = d_h + d_r
    grad_w0 = x.T @ d_h
    return {"W0": grad_w0, "W1": grad_w1, "b1": grad_b1, "W2": grad_w2}


_LINREG = {"loss": _linreg_loss, "make_inputs": _linreg_inputs}
_LINREG_MSE = {"loss": _linreg_mse_loss, "make_inputs": _linreg_inputs}
_TANH_NET = {"loss": _tanh_net_loss, "make_inputs": _tanh_net_inputs}
_RESIDUAL = {"loss": _residual_loss, "make_inputs": _residual_inputs}

CASES = (
    Case("linreg/correct", grad=_linreg_grad, kind="correct", **_LINREG),
    Case(
        "linreg/bug_forgot_mean",
        grad=functools.partial(_linreg_grad, bug="forgot_mean"),
        kind="buggy",
        buggy_leaves=frozenset({"['W']", "['b']"}),
        bug_class="scale",
        bug_detail={"factor": 8.0},
        **_LINREG,
    ),
    Case(
        "linreg/bug_transposed_weight",
        grad=functools.partial(_linreg_grad, bug="transpose"),
        kind="buggy",
        buggy_leaves=frozenset({"['W']"}),
        bug_class="transpose",
        **_LINREG,
    ),
    Case(
        "linreg/bug_bias_sign",
        grad=functools.partial(_linreg_grad, bug="sign_bias"),
        kind="buggy",
        buggy_leaves=frozenset({"['b']"}),
        bug_class="sign",
        bug_detail={"factor": -1.0},
        **_LINREG,
    ),
    Case(
        "linreg_mse_jnp/correct", grad=_linreg_mse_grad, kind="correct", **_LINREG_MSE
    ),
    Case(
        "linreg_mse_jnp/bug_forgot_factor_two",
        grad=functools.partial(_linreg_mse_grad, forgot_two=True),
        kind="buggy",
        buggy_leaves=frozenset({"['W']", "['b']"}),
        bug_class="scale",
        bug_detail={"factor": 0.5},
        **_LINREG_MSE,
    ),
    Case("tanh_net/correct", grad=_tanh_net_grad, kind="correct", **_TANH_NET),
    Case(
        "tanh_net/bug_swapped_weights",
        grad=functools.partial(_tanh_net_grad, bug="swap"),
        kind="buggy",
        buggy_leaves=frozenset({"['layer1']['w']", "['layer2']['w']"}),
        bug_class="swap",
        **_TANH_NET,
    ),
    Case(
        "tanh_net/bug_zero_first_bias",
        grad=functools.partial(_tanh_net_grad, bug="zero"),
        kind="buggy",
        buggy_leaves=frozenset({"['layer1']['b']"}),
        bug_class="zero",
        **_TANH_NET,
    ),
    Case("residual/correct", grad=_residual_grad, kind="correct", **_RESIDUAL),
    Case(
        "residual/bug_forgot_skip_path",
        grad=functools.partial(_residual_grad, forgot_skip=True),
        kind="buggy",
        buggy_leaves=frozenset({"['W0']"}),
        bug_class="missing_term",
        bug_detail={"term": "skip_connection"},
        **_RESIDUAL,
    ),
)
