"""One hidden layer with each common elementwise activation, and a linear readout.

Every case shares the model ``s = act(x W + b) @ v`` with a half mean squared
error on ``s``; only the activation and its hand-written derivative change.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._case import Case
from ._util import normal

_LEAKY_SLOPE = 0.1
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715


def _sigmoid(z):
    # exp(-|z|) never overflows, so this is safe for either sign of z.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


# Each entry maps a name to (jax activation, numpy activation, numpy derivative).
_ACTIVATIONS = {
    "sigmoid": (
        jax.nn.sigmoid,
        _sigmoid,
        lambda z: _sigmoid(z) * (1 - _sigmoid(z)),
    ),
    "tanh": (jnp.tanh, np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "softplus": (
        jax.nn.softplus,
        lambda z: np.logaddexp(z, 0),
        _sigmoid,
    ),
    "gelu_tanh": (
        functools.partial(jax.nn.gelu, approximate=True),
        lambda z: 0.5 * z * (1 + np.tanh(_GELU_C * (z + _GELU_K * z**3))),
        lambda z: (
            0.5 * (1 + np.tanh(_GELU_C * (z + _GELU_K * z**3)))
            + 0.5
            * z
            * (1 - np.tanh(_GELU_C * (z + _GELU_K * z**3)) ** 2)
            * _GELU_C
            * (1 + 3 * _GELU_K * z**2)
        ),
    ),
    "elu": (
        jax.nn.elu,
        lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
        lambda z: np.where(z > 0, 1, np.exp(np.minimum(z, 0))).astype(z.dtype),
    ),
    "leaky_relu": (
        functools.partial(jax.nn.leaky_relu, negative_slope=_LEAKY_SLOPE),
        lambda z: np.where(z > 0, z, _LEAKY_SLOPE * z),
        lambda z: np.where(z > 0, 1, _LEAKY_SLOPE).astype(z.dtype),
    ),
    "swish": (
        jax.nn.silu,
        lambda z: z * _sigmoid(z),
        lambda z: _sigmoid(z) * (1 + z * (1 - _sigmoid(z))),
    ),
}


def _inputs(rng, dtype, *, margin=1e-2, bias_shift=0.0):
    x = normal(rng, (9, 5), dtype)
    y = normal(rng, (9,), dtype)
    # Redraw until no pre-activation sits near zero, where ELU and leaky ReLU
    # change branch and finite differences would straddle the kink.
    while True:
        w = normal(rng, (5, 4), dtype, 0.7)
        b = normal(rng, (4,), dtype, 0.5) + dtype(bias_shift)
        if np.abs(x @ w + b).min() > margin:
            break
    return {"W": w, "b": b, "v": normal(rng, (4,), dtype)}, (x, y)


def _large_preactivation_inputs(rng, dtype):
    # Shifts unit 0 so that its pre-activations centre on 6.5: about half of them
    # land above 6, where a softplus written with a cut-off is the identity.
    params, (x, y) = _inputs(rng, dtype)
    b = params["b"].copy()
    b[0] = 6.5 - np.mean(x @ params["W"][:, 0])
    return dict(params, b=b), (x, y)


def _saturated_inputs(rng, dtype):
    params, (x, y) = _inputs(rng, dtype)
    params = dict(params, W=params["W"] * dtype(15))
    return params, (x, y)


def _make_loss(act):
    def loss(params, x, y):
        s = act(x @ params["W"] + params["b"]) @ params["v"]
        return 0.5 * jnp.mean((s - y) ** 2)

    return loss


def _make_grad(act, dact):
    def grad(params, x, y):
        n = x.shape[0]
        z = x @ params["W"] + params["b"]
        h = act(z)
        s = h @ params["v"]
        d_s = (s - y) / n
        d_z = np.outer(d_s, params["v"]) * dact(z)
        return {"W": x.T @ d_z, "b": d_z.sum(axis=0), "v": h.T @ d_s}

    return grad


def _sigmoid_derivative_wrong_sign(z):
    # s * (s - 1) instead of s * (1 - s).
    return _sigmoid(z) * (_sigmoid(z) - 1)


def _swish_derivative_forgot_product_rule(z):
    # Differentiates z * sigmoid(z) as if z were a constant factor.
    return _sigmoid(z)


def _softplus_derivative_with_cutoff(z):
    # Treats softplus as the identity above z = 6, as some forward passes do for
    # speed; the forward here never made that cut, so the slope is off by
    # sigmoid(-z), about 1e-3 on those few entries.
    return np.where(z > 6, 1, _sigmoid(z)).astype(z.dtype)


def _cases():
    losses = {name: _make_loss(acts[0]) for name, acts in _ACTIVATIONS.items()}
    cases = [
        Case(
            f"act_{name}/correct",
            loss=losses[name],
            grad=_make_grad(np_act, np_dact),
            make_inputs=_inputs,
            kind="correct",
        )
        for name, (_, np_act, np_dact) in _ACTIVATIONS.items()
    ]
    cases += [
        Case(
            "act_sigmoid/bug_derivative_sign",
            loss=losses["sigmoid"],
            grad=_make_grad(_sigmoid, _sigmoid_derivative_wrong_sign),
            make_inputs=_inputs,
            kind="buggy",
            buggy_leaves=frozenset({"['W']", "['b']"}),
            bug_class="sign",
            bug_detail={"factor": -1.0},
        ),
        Case(
            "act_swish/bug_forgot_product_rule",
            loss=losses["swish"],
            grad=_make_grad(
                _ACTIVATIONS["swish"][1], _swish_derivative_forgot_product_rule
            ),
            make_inputs=_inputs,
            kind="buggy",
            buggy_leaves=frozenset({"['W']", "['b']"}),
            bug_class="missing_term",
            bug_detail={"term": "product_rule"},
        ),
        Case(
            "act_softplus/bug_subtle_cutoff",
            loss=losses["softplus"],
            grad=_make_grad(
                _ACTIVATIONS["softplus"][1], _softplus_derivative_with_cutoff
            ),
            make_inputs=_large_preactivation_inputs,
            kind="buggy",
            buggy_leaves=frozenset({"['W']", "['b']"}),
            bug_class="subtle",
            bug_detail={"rel_error": 1e-3, "cutoff": 6.0},
        ),
        Case(
            "act_tanh/hard_saturated",
            loss=losses["tanh"],
            grad=_make_grad(*_ACTIVATIONS["tanh"][1:]),
            make_inputs=_saturated_inputs,
            kind="hard",
            bug_detail={
                "difficulty": "tanh saturated; most slopes are below 1e-10",
                "kink_leaves": (),
            },
        ),
        Case(
            "act_softplus/hard_large_inputs",
            loss=losses["softplus"],
            grad=_make_grad(*_ACTIVATIONS["softplus"][1:]),
            make_inputs=functools.partial(_inputs, bias_shift=40.0),
            kind="hard",
            bug_detail={
                "difficulty": "softplus near the identity, exp(-z) ~ 1e-17",
                "kink_leaves": (),
            },
        ),
    ]
    return tuple(cases)


CASES = _cases()
