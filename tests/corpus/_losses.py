"""Loss functions: softmax cross-entropy, hinge, L2 and L1 penalties."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._case import Case
from ._util import dyadic, normal, one_hot, softmax

_L2 = 0.05
_L1 = 0.1


# Softmax cross-entropy on a linear classifier, averaged over the batch.


def _xent_inputs(rng, dtype, *, weight_scale=1.0):
    x = normal(rng, (10, 6), dtype)
    labels = rng.integers(0, 4, size=10)
    params = {
        "W": normal(rng, (6, 4), dtype, 0.5 * weight_scale),
        "b": normal(rng, (4,), dtype, 0.5),
    }
    return params, (x, labels)


def _xent_huge_logits_inputs(rng, dtype):
    # Logits spread over hundreds, and every label is the least likely class, so
    # its probability underflows to exactly zero in float32 and float64 alike.
    params, (x, _) = _xent_inputs(rng, dtype, weight_scale=4000.0)
    labels = np.argmin(x @ params["W"] + params["b"], axis=1)
    return params, (x, labels)


def _xent_large_logits_inputs(rng, dtype):
    # Logits around 1e3 with modest differences: exp overflows unless the
    # maximum is subtracted first, but the probabilities stay well inside (0, 1).
    params, (x, labels) = _xent_inputs(rng, dtype)
    params = dict(params, b=params["b"] + dtype(1000.0))
    return params, (x, labels)


def _xent_loss(params, x, labels):
    logits = x @ params["W"] + params["b"]
    log_p = jax.nn.log_softmax(logits, axis=1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1))


def _xent_grad(params, x, labels):
    n = x.shape[0]
    p = softmax(x @ params["W"] + params["b"])
    d_logits = (p - one_hot(labels, p.shape[1], p.dtype)) / n
    return {"W": x.T @ d_logits, "b": d_logits.sum(axis=0)}


def _xent_grad_naive_chain_rule(params, x, labels):
    n, k = x.shape[0], params["b"].shape[0]
    p = softmax(x @ params["W"] + params["b"])
    # dL/dp = -1/p at the label, then back through the softmax Jacobian. This is
    # right on paper but divides by zero once p underflows. The errstate keeps
    # NumPy quiet so the case behaves the same under warnings-as-errors.
    with np.errstate(divide="ignore", invalid="ignore"):
        d_p = -one_hot(labels, k, p.dtype) / p / n
        d_logits = p * (d_p - np.sum(d_p * p, axis=1, keepdims=True))
    return {"W": x.T @ d_logits, "b": d_logits.sum(axis=0)}


# Cross-entropy plus an L2 penalty on the weights (not the bias).


def _xent_l2_loss(params, x, labels):
    return _xent_loss(params, x, labels) + 0.5 * _L2 * jnp.sum(params["W"] ** 2)


def _xent_l2_grad(params, x, labels, *, forgot_penalty=False):
    grads = _xent_grad(params, x, labels)
    if not forgot_penalty:
        grads["W"] = grads["W"] + _L2 * params["W"]
    return grads


# Binary hinge loss with labels in {-1, +1} and an L2 penalty. The bias is a
# 0-d array.


def _hinge_inputs(rng, dtype):
    x = normal(rng, (16, 8), dtype)
    y = rng.choice(np.array([-1.0, 1.0], dtype=dtype), size=16)
    while True:
        params = {"w": normal(rng, (8,), dtype, 0.6), "b": normal(rng, (), dtype)}
        margins = y * (x @ params["w"] + params["b"])
        # Keep every margin clear of the hinge at 1, with some on each side.
        if np.abs(1 - margins).min() > 1e-2 and 3 < np.sum(margins < 1) < 13:
            return params, (x, y)


def _hinge_on_kink_inputs(rng, dtype):
    # Dyadic data make every margin exact; then the bias is set so that sample
    # 0 sits exactly on the hinge.
    while True:
        x = dyadic(rng, (16, 8), dtype)
        y = rng.choice(np.array([-1.0, 1.0], dtype=dtype), size=16)
        w = dyadic(rng, (8,), dtype, -2, 2)
        b = np.asarray(y[0] - x[0] @ w, dtype=dtype)
        margins = y * (x @ w + b)
        # Only sample 0 on the hinge; the rest at least 1/16 away from it.
        if np.sum(margins == 1) == 1:
            return {"w": w, "b": b}, (x, y)


def _hinge_loss(params, x, y):
    margins = y * (x @ params["w"] + params["b"])
    penalty = 0.5 * _L2 * jnp.sum(params["w"] ** 2)
    return jnp.mean(jnp.maximum(0.0, 1.0 - margins)) + penalty


def _hinge_grad(params, x, y, *, forgot_penalty=False):
    n = x.shape[0]
    margins = y * (x @ params["w"] + params["b"])
    # Subgradient 0 exactly on the hinge: a sample at margin 1 is not a violator.
    active = (margins < 1).astype(x.dtype)
    d_score = -active * y / n
    grad_w = x.T @ d_score
    if not forgot_penalty:
        grad_w = grad_w + _L2 * params["w"]
    return {"w": grad_w, "b": d_score.sum()}


# Least squares with an L1 penalty. The hard variant puts some weights exactly at
# zero, where |w| has a kink.


def _l1_inputs(rng, dtype, *, zeros=False):
    x = normal(rng, (12, 8), dtype)
    y = normal(rng, (12,), dtype)
    w = normal(rng, (8,), dtype)
    w = np.where(np.abs(w) < 0.1, dtype(0.3), w).astype(dtype)
    if zeros:
        w[[1, 3, 6]] = 0
    return {"w": w, "b": normal(rng, (), dtype)}, (x, y)


def _l1_loss(params, x, y):
    residual = x @ params["w"] + params["b"] - y
    return 0.5 * jnp.mean(residual**2) + _L1 * jnp.sum(jnp.abs(params["w"]))


def _l1_grad(params, x, y):
    n = x.shape[0]
    residual = x @ params["w"] + params["b"] - y
    # np.sign(0) == 0, the minimum-norm subgradient of |w| at zero.
    grad_w = x.T @ residual / n + _L1 * np.sign(params["w"])
    return {"w": grad_w, "b": residual.sum() / n}


# A loss near 1e4 whose gradient is near 1e-3: a large constant (think of a
# log-partition term that does not depend on the parameters) plus a weak
# quadratic. Finite differences lose most of their digits to cancellation.


def _offset_inputs(rng, dtype):
    x = normal(rng, (10, 6), dtype)
    y = normal(rng, (10,), dtype)
    params = {"w": normal(rng, (6,), dtype), "log_scale": normal(rng, (), dtype, 0.1)}
    return params, (x, y, np.asarray(1.0e4, dtype=dtype))


def _offset_loss(params, x, y, offset):
    residual = x @ params["w"] - y
    weight = 1e-3 * jnp.exp(params["log_scale"])
    return offset + 0.5 * weight * jnp.mean(residual**2)


def _offset_grad(params, x, y, offset):
    del offset
    n = x.shape[0]
    residual = x @ params["w"] - y
    weight = 1e-3 * np.exp(params["log_scale"])
    return {
        "w": weight * (x.T @ residual) / n,
        "log_scale": 0.5 * weight * np.mean(residual**2),
    }


_XENT = {"loss": _xent_loss, "make_inputs": _xent_inputs}
_XENT_L2 = {"loss": _xent_l2_loss, "make_inputs": _xent_inputs}
_HINGE = {"loss": _hinge_loss, "make_inputs": _hinge_inputs}

CASES = (
    Case("softmax_xent/correct", grad=_xent_grad, kind="correct", **_XENT),
    Case(
        "softmax_xent/bug_nonfinite_naive_chain_rule",
        loss=_xent_loss,
        grad=_xent_grad_naive_chain_rule,
        make_inputs=_xent_huge_logits_inputs,
        kind="buggy",
        buggy_leaves=frozenset({"['W']", "['b']"}),
        bug_class="nonfinite",
        bug_detail={"cause": "0/0 from 1/p with p underflowed to zero"},
    ),
    Case(
        "softmax_xent/hard_large_logits",
        loss=_xent_loss,
        grad=_xent_grad,
        make_inputs=_xent_large_logits_inputs,
        kind="hard",
        bug_detail={"difficulty": "logits near 1e3, stable in both", "kink_leaves": ()},
    ),
    Case("softmax_xent_l2/correct", grad=_xent_l2_grad, kind="correct", **_XENT_L2),
    Case(
        "softmax_xent_l2/bug_forgot_penalty",
        grad=functools.partial(_xent_l2_grad, forgot_penalty=True),
        kind="buggy",
        buggy_leaves=frozenset({"['W']"}),
        bug_class="missing_term",
        bug_detail={"term": "l2_regularisation"},
        **_XENT_L2,
    ),
    Case("hinge/correct", grad=_hinge_grad, kind="correct", **_HINGE),
    Case(
        "hinge/bug_forgot_penalty",
        grad=functools.partial(_hinge_grad, forgot_penalty=True),
        kind="buggy",
        buggy_leaves=frozenset({"['w']"}),
        bug_class="missing_term",
        bug_detail={"term": "l2_regularisation"},
        **_HINGE,
    ),
    Case(
        "hinge/hard_margin_exactly_one",
        loss=_hinge_loss,
        grad=_hinge_grad,
        make_inputs=_hinge_on_kink_inputs,
        kind="hard",
        bug_detail={
            "kink": "max(0, 1 - margin) with margin == 1 for sample 0 only",
            "choice": "subgradient 0 (sample treated as inactive)",
            "kink_leaves": ("['b']", "['w']"),
        },
    ),
    Case(
        "l1_regression/correct",
        loss=_l1_loss,
        grad=_l1_grad,
        make_inputs=_l1_inputs,
        kind="correct",
    ),
    Case(
        "l1_regression/hard_weights_exactly_zero",
        loss=_l1_loss,
        grad=_l1_grad,
        make_inputs=functools.partial(_l1_inputs, zeros=True),
        kind="hard",
        bug_detail={
            "kink": "|w| at w[1] == w[3] == w[6] == 0",
            "choice": "sign(0) = 0",
            "kink_leaves": ("['w']",),
        },
    ),
    Case(
        "offset_quadratic/hard_large_loss",
        loss=_offset_loss,
        grad=_offset_grad,
        make_inputs=_offset_inputs,
        kind="hard",
        bug_detail={"difficulty": "loss ~1e4, gradient ~1e-3", "kink_leaves": ()},
    ),
)
