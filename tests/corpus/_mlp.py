"""A small ReLU MLP trained with softmax cross-entropy, in several spellings.

The model is ``logits = relu(x W1 + b1) W2 + b2`` on a batch of 12 examples with
8 features, 10 hidden units and 4 classes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._case import Case
from ._util import dyadic, normal, one_hot, relu_safe_dense, softmax

_L2 = 0.01
_KINK_UNIT = 2


def _inputs(rng, dtype):
    x = normal(rng, (12, 8), dtype)
    labels = rng.integers(0, 4, size=12)
    w1, b1 = relu_safe_dense(rng, x, (8, 10), dtype, scale=0.5)
    params = {
        "W1": w1,
        "b1": b1,
        "W2": normal(rng, (10, 4), dtype, 0.5),
        "b2": normal(rng, (4,), dtype, 0.3),
    }
    return params, (x, labels)


def _kink_inputs(rng, dtype, *, offset=0.0):
    # Dyadic data make x @ W1 exact, so the bias below puts example 0 exactly on
    # the kink of hidden unit _KINK_UNIT (or ``offset`` above it), and no other
    # pre-activation anywhere near zero.
    x = dyadic(rng, (12, 8), dtype)
    labels = rng.integers(0, 4, size=12)
    while True:
        w1 = dyadic(rng, (8, 10), dtype, -2, 2)
        b1 = dyadic(rng, (10,), dtype)
        b1[_KINK_UNIT] = -(x[0] @ w1[:, _KINK_UNIT])
        z = x @ w1 + b1
        z[0, _KINK_UNIT] = 1.0
        if np.abs(z).min() > 1e-2:
            break
    b1[_KINK_UNIT] += dtype(offset)
    params = {
        "W1": w1,
        "b1": b1,
        "W2": normal(rng, (10, 4), dtype, 0.5),
        "b2": normal(rng, (4,), dtype, 0.3),
    }
    return params, (x, labels)


def _forward_jax(params, x):
    h = jax.nn.relu(x @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def _xent(logits, labels):
    log_p = jax.nn.log_softmax(logits, axis=1)
    return -jnp.take_along_axis(log_p, labels[:, None], axis=1)


def _loss(params, x, labels):
    return jnp.mean(_xent(_forward_jax(params, x), labels))


def _l2_loss(params, x, labels):
    penalty = jnp.sum(params["W1"] ** 2) + jnp.sum(params["W2"] ** 2)
    return _loss(params, x, labels) + 0.5 * _L2 * penalty


def _grad(params, x, labels, *, bug=None, relu_at_zero=0):
    n = x.shape[0]
    z = x @ params["W1"] + params["b1"]
    h = np.maximum(z, 0)
    p = softmax(h @ params["W2"] + params["b2"])

    target = one_hot(labels, p.shape[1], p.dtype)
    d_logits = (target - p) if bug == "sign" else (p - target)
    if bug != "forgot_mean":
        d_logits = d_logits / n

    if bug == "class_loop":
        # Per-class columns, with a range that stops one class short.
        grad_w2 = np.zeros_like(params["W2"])
        for k in range(p.shape[1] - 1):
            grad_w2[:, k] = h.T @ d_logits[:, k]
    else:
        grad_w2 = h.T @ d_logits
    grad_b2 = np.zeros_like(params["b2"]) if bug == "zero" else d_logits.sum(axis=0)

    # relu'(0) is a free choice in [0, 1]; ``relu_at_zero`` picks 0 or 1.
    slope = (z > 0) if relu_at_zero == 0 else (z >= 0)
    d_z = (d_logits @ params["W2"].T) * slope
    grad_w1 = x.T @ d_z
    if bug == "unit_loop":
        grad_b1 = np.zeros_like(params["b1"])
        for j in range(1, z.shape[1]):
            grad_b1[j] = d_z[:, j].sum()
    else:
        grad_b1 = d_z.sum(axis=0)

    grads = {"W1": grad_w1, "b1": grad_b1, "W2": grad_w2, "b2": grad_b2}
    if bug in ("l2", "l2_missing_first"):
        grads["W2"] = grads["W2"] + _L2 * params["W2"]
        if bug == "l2":
            grads["W1"] = grads["W1"] + _L2 * params["W1"]
    return grads


def _grad_jnp(params, x, labels):
    n = x.shape[0]
    z = x @ params["W1"] + params["b1"]
    h = jnp.maximum(z, 0)
    p = jax.nn.softmax(h @ params["W2"] + params["b2"], axis=1)
    d_logits = (p - jax.nn.one_hot(labels, p.shape[1], dtype=p.dtype)) / n
    d_z = jnp.where(z > 0, d_logits @ params["W2"].T, 0)
    return {
        "W1": x.T @ d_z,
        "b1": d_z.sum(axis=0),
        "W2": h.T @ d_logits,
        "b2": d_logits.sum(axis=0),
    }


# Nested tuple parameters ((W1, b1), (W2, b2)) and a loss summed over the batch.


def _tuple_inputs(rng, dtype):
    params, args = _inputs(rng, dtype)
    return ((params["W1"], params["b1"]), (params["W2"], params["b2"])), args


def _as_dict(params):
    (w1, b1), (w2, b2) = params
    return {"W1": w1, "b1": b1, "W2": w2, "b2": b2}


def _tuple_loss(params, x, labels):
    return jnp.sum(_xent(_forward_jax(_as_dict(params), x), labels))


def _tuple_grad(params, x, labels, *, divided_by_batch=False):
    grads = _grad(_as_dict(params), x, labels, bug="forgot_mean")
    if divided_by_batch:
        # Reused a mean-loss backward for a summed loss.
        grads = {k: v / x.shape[0] for k, v in grads.items()}
    return ((grads["W1"], grads["b1"]), (grads["W2"], grads["b2"]))


_ALL = frozenset({"['W1']", "['b1']", "['W2']", "['b2']"})
_TUPLE_ALL = frozenset({"[0][0]", "[0][1]", "[1][0]", "[1][1]"})
_MLP = {"loss": _loss, "make_inputs": _inputs}
_MLP_L2 = {"loss": _l2_loss, "make_inputs": _inputs}
_MLP_TUPLE = {"loss": _tuple_loss, "make_inputs": _tuple_inputs}
_KINK_LEAVES = ("['W1']", "['b1']")

CASES = (
    Case("mlp/correct", grad=_grad, kind="correct", **_MLP),
    Case("mlp_jnp/correct", grad=_grad_jnp, kind="correct", **_MLP),
    Case(
        "mlp/bug_forgot_mean",
        grad=functools.partial(_grad, bug="forgot_mean"),
        kind="buggy",
        buggy_leaves=_ALL,
        bug_class="scale",
        bug_detail={"factor": 12.0},
        **_MLP,
    ),
    Case(
        "mlp/bug_target_minus_prediction",
        grad=functools.partial(_grad, bug="sign"),
        kind="buggy",
        buggy_leaves=_ALL,
        bug_class="sign",
        bug_detail={"factor": -1.0},
        **_MLP,
    ),
    Case(
        "mlp/bug_zero_output_bias",
        grad=functools.partial(_grad, bug="zero"),
        kind="buggy",
        buggy_leaves=frozenset({"['b2']"}),
        bug_class="zero",
        **_MLP,
    ),
    Case(
        "mlp/bug_class_loop_stops_short",
        grad=functools.partial(_grad, bug="class_loop"),
        kind="buggy",
        buggy_leaves=frozenset({"['W2']"}),
        bug_class="region",
        bug_detail={"region": "column", "axis": 1, "index": 3},
        **_MLP,
    ),
    Case(
        "mlp/bug_unit_loop_skips_first",
        grad=functools.partial(_grad, bug="unit_loop"),
        kind="buggy",
        buggy_leaves=frozenset({"['b1']"}),
        bug_class="region",
        bug_detail={"region": "element", "index": (0,)},
        **_MLP,
    ),
    Case("mlp_tuple/correct", grad=_tuple_grad, kind="correct", **_MLP_TUPLE),
    Case(
        "mlp_tuple/bug_divided_by_batch",
        grad=functools.partial(_tuple_grad, divided_by_batch=True),
        kind="buggy",
        buggy_leaves=_TUPLE_ALL,
        bug_class="scale",
        bug_detail={"factor": 1 / 12},
        **_MLP_TUPLE,
    ),
    Case(
        "mlp_l2/correct",
        grad=functools.partial(_grad, bug="l2"),
        kind="correct",
        **_MLP_L2,
    ),
    Case(
        "mlp_l2/bug_forgot_first_layer_penalty",
        grad=functools.partial(_grad, bug="l2_missing_first"),
        kind="buggy",
        buggy_leaves=frozenset({"['W1']"}),
        bug_class="missing_term",
        bug_detail={"term": "l2_regularisation"},
        **_MLP_L2,
    ),
    Case(
        "mlp/hard_relu_exactly_zero_left",
        loss=_loss,
        grad=_grad,
        make_inputs=_kink_inputs,
        kind="hard",
        bug_detail={
            "kink": f"relu pre-activation [0, {_KINK_UNIT}] exactly 0",
            "choice": "relu'(0) = 0",
            "kink_leaves": _KINK_LEAVES,
        },
    ),
    Case(
        "mlp/hard_relu_exactly_zero_right",
        loss=_loss,
        grad=functools.partial(_grad, relu_at_zero=1),
        make_inputs=_kink_inputs,
        kind="hard",
        bug_detail={
            "kink": f"relu pre-activation [0, {_KINK_UNIT}] exactly 0",
            "choice": "relu'(0) = 1",
            "kink_leaves": _KINK_LEAVES,
        },
    ),
    Case(
        "mlp/hard_relu_near_zero",
        loss=_loss,
        grad=_grad,
        make_inputs=functools.partial(_kink_inputs, offset=1e-10),
        kind="hard",
        bug_detail={
            "kink": f"relu pre-activation [0, {_KINK_UNIT}] is 1e-10",
            "kink_offset": 1e-10,
            "float32": "the 1e-10 offset rounds away, leaving an exact zero",
            "kink_leaves": _KINK_LEAVES,
        },
    ),
)
