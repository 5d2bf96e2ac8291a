"""Layer norm and batch norm (training mode), each after a dense projection.

The projection gives the normalisation an input with a gradient, so the backward
pass through the mean and variance matters.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from ._case import Case
from ._util import normal

_LN_EPS = 1e-5
# Keras' default; large enough that dropping it shows up at the 1e-3 level.
_BN_EPS = 1e-3


def _inputs(rng, dtype, *, batch, zero_row=False):
    x = normal(rng, (batch, 4), dtype)
    if zero_row:
        # A padding row: its projection is constant, so its variance is zero.
        x[2] = 0
    t = normal(rng, (batch, 6), dtype)
    params = {
        "W": normal(rng, (4, 6), dtype, 0.5),
        "gamma": (1 + normal(rng, (6,), dtype, 0.2)).astype(dtype),
        "beta": normal(rng, (6,), dtype, 0.2),
    }
    return params, (x, t)


def _norm_loss(axis, eps):
    def loss(params, x, t):
        z = x @ params["W"]
        mu = jnp.mean(z, axis=axis, keepdims=True)
        var = jnp.mean((z - mu) ** 2, axis=axis, keepdims=True)
        y = params["gamma"] * (z - mu) / jnp.sqrt(var + eps) + params["beta"]
        return 0.5 * jnp.sum((y - t) ** 2) / x.shape[0]

    return loss


def _normalise_backward(d_zhat, zhat, rstd, axis):
    # The standard three-term form: the direct path, minus the mean path, minus
    # the variance path, all scaled by 1/std.
    mean_d = d_zhat.mean(axis=axis, keepdims=True)
    mean_dz = (d_zhat * zhat).mean(axis=axis, keepdims=True)
    return rstd * (d_zhat - mean_d - zhat * mean_dz)


def _norm_grad(params, x, t, *, axis, eps, bug=None):
    n = x.shape[0]
    z = x @ params["W"]
    mu = z.mean(axis=axis, keepdims=True)
    var = ((z - mu) ** 2).mean(axis=axis, keepdims=True)
    if bug == "no_eps":
        with np.errstate(divide="ignore", invalid="ignore"):
            rstd = 1 / np.sqrt(var)
            zhat = (z - mu) * rstd
    else:
        rstd = 1 / np.sqrt(var + eps)
        zhat = (z - mu) * rstd
    y = params["gamma"] * zhat + params["beta"]

    d_y = (y - t) / n
    grad_gamma = (d_y * zhat).sum(axis=0)
    grad_beta = d_y.sum(axis=0)
    d_zhat = d_y * params["gamma"]
    if bug == "stats_constant":
        # Treats the batch mean and variance as constants.
        d_z = d_zhat * rstd
    elif bug == "eps_dropped_in_backward":
        # zhat above is right, but the 1/std in the backward omits eps.
        d_z = _normalise_backward(d_zhat, zhat, 1 / np.sqrt(var), axis)
    else:
        with np.errstate(invalid="ignore"):
            d_z = _normalise_backward(d_zhat, zhat, rstd, axis)
    return {"W": x.T @ d_z, "gamma": grad_gamma, "beta": grad_beta}


_LN_LOSS = _norm_loss(axis=1, eps=_LN_EPS)
_BN_LOSS = _norm_loss(axis=0, eps=_BN_EPS)
_LN = {
    "loss": _LN_LOSS,
    "make_inputs": functools.partial(_inputs, batch=5),
}
_BN = {
    "loss": _BN_LOSS,
    "make_inputs": functools.partial(_inputs, batch=8),
}


def _ln_grad(**kwargs):
    return functools.partial(_norm_grad, axis=1, eps=_LN_EPS, **kwargs)


def _bn_grad(**kwargs):
    return functools.partial(_norm_grad, axis=0, eps=_BN_EPS, **kwargs)


CASES = (
    Case("layernorm/correct", grad=_ln_grad(), kind="correct", **_LN),
    Case(
        "layernorm/correct_with_padding_row",
        loss=_LN_LOSS,
        grad=_ln_grad(),
        make_inputs=functools.partial(_inputs, batch=5, zero_row=True),
        kind="correct",
    ),
    Case(
        "layernorm/bug_nonfinite_forgot_eps",
        loss=_LN_LOSS,
        grad=_ln_grad(bug="no_eps"),
        make_inputs=functools.partial(_inputs, batch=5, zero_row=True),
        kind="buggy",
        buggy_leaves=frozenset({"['W']", "['gamma']", "['beta']"}),
        bug_class="nonfinite",
        bug_detail={"cause": "1/sqrt(0) on a zero-variance row, then 0*inf"},
    ),
    Case("batchnorm/correct", grad=_bn_grad(), kind="correct", **_BN),
    Case(
        "batchnorm/bug_statistics_treated_as_constants",
        grad=_bn_grad(bug="stats_constant"),
        kind="buggy",
        buggy_leaves=frozenset({"['W']"}),
        bug_class="missing_term",
        bug_detail={"term": "batch_statistics"},
        **_BN,
    ),
    Case(
        "batchnorm/bug_subtle_eps_dropped_in_backward",
        grad=_bn_grad(bug="eps_dropped_in_backward"),
        kind="buggy",
        buggy_leaves=frozenset({"['W']"}),
        bug_class="subtle",
        bug_detail={"rel_error": 1e-3, "eps": _BN_EPS},
        **_BN,
    ),
)
