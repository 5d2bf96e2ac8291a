"""Single-head scaled dot-product self-attention with an output projection.

loss = 0.5 * |softmax(Q K^T / sqrt(d)) V Wo - t|^2 with Q = x Wq, K = x Wk,
V = x Wv, on one sequence x of shape (T, d).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._case import Case
from ._util import normal, softmax


def _inputs(rng, dtype, *, dim=4, overflow=False):
    names = ("Wq", "Wk", "Wv", "Wo")
    t = normal(rng, (5, dim), dtype)
    while True:
        x = normal(rng, (5, dim), dtype, 40.0 if overflow else 1.0)
        params = {name: normal(rng, (dim, dim), dtype, 0.6) for name in names}
        scores = (x @ params["Wq"]) @ (x @ params["Wk"]).T / math.sqrt(dim)
        # For the overflow case, every row needs a score past exp's range
        # (about 710 in float64, 89 in float32).
        if not overflow or scores.max(axis=1).min() > 1000:
            return params, (x, t)


def _loss(params, x, t, *, causal=False):
    q, k, v = x @ params["Wq"], x @ params["Wk"], x @ params["Wv"]
    scores = q @ k.T / math.sqrt(x.shape[1])
    if causal:
        mask = jnp.tril(jnp.ones(scores.shape, dtype=bool))
        scores = jnp.where(mask, scores, -jnp.inf)
    out = jax.nn.softmax(scores, axis=1) @ v @ params["Wo"]
    return 0.5 * jnp.sum((out - t) ** 2)


def _grad(params, x, t, *, bug=None):
    scale = 1 / math.sqrt(x.shape[1])
    q, k, v = x @ params["Wq"], x @ params["Wk"], x @ params["Wv"]
    scores = q @ k.T * scale
    if bug == "unstable_softmax":
        # No max subtraction: exp overflows and inf/inf gives NaN. NumPy is
        # silenced so the case behaves the same under warnings-as-errors.
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(scores)
            p = e / e.sum(axis=1, keepdims=True)
    else:
        p = softmax(scores)
    o = p @ v
    out = o @ params["Wo"]

    d_out = out - t
    grad_wo = o.T @ d_out
    d_o = d_out @ params["Wo"].T
    d_p = d_o @ v.T
    d_v = p.T @ d_o
    if bug == "softmax_diagonal_only":
        # Uses only the diagonal of the softmax Jacobian, p * (1 - p).
        d_scores = d_p * p * (1 - p)
    else:
        d_scores = p * (d_p - np.sum(d_p * p, axis=1, keepdims=True))
    if bug != "forgot_scale_backward":
        d_scores = d_scores * scale
    d_q = d_scores @ k
    d_k = d_scores.T @ q

    if bug == "half_precision_buffer":
        # Kept in a float16 buffer, e.g. for a mixed-precision optimiser: each
        # entry is rounded to 11 significant bits, a relative error up to 5e-4.
        grad_wo = grad_wo.astype(np.float16).astype(grad_wo.dtype)

    grads = {"Wq": x.T @ d_q, "Wk": x.T @ d_k, "Wv": x.T @ d_v, "Wo": grad_wo}
    if bug == "transpose":
        grads["Wo"] = grads["Wo"].T
    if bug == "swap":
        grads["Wq"], grads["Wk"] = grads["Wk"], grads["Wq"]
    return grads


def _causal_grad(params, x, t):
    # Written in jax.numpy. Masked scores get probability exactly zero, so the
    # usual softmax backward already gives them zero gradient.
    scale = 1 / math.sqrt(x.shape[1])
    q, k, v = x @ params["Wq"], x @ params["Wk"], x @ params["Wv"]
    mask = jnp.tril(jnp.ones((x.shape[0], x.shape[0]), dtype=bool))
    scores = jnp.where(mask, q @ k.T * scale, -jnp.inf)
    e = jnp.exp(scores - jnp.max(scores, axis=1, keepdims=True))
    p = e / jnp.sum(e, axis=1, keepdims=True)
    o = p @ v

    d_out = o @ params["Wo"] - t
    d_o = d_out @ params["Wo"].T
    d_p = d_o @ v.T
    d_scores = p * (d_p - jnp.sum(d_p * p, axis=1, keepdims=True)) * scale
    return {
        "Wq": x.T @ (d_scores @ k),
        "Wk": x.T @ (d_scores.T @ q),
        "Wv": x.T @ (p.T @ d_o),
        "Wo": o.T @ d_out,
    }


_ALL = frozenset({"['Wq']", "['Wk']", "['Wv']", "['Wo']"})
_ATTN = {"loss": _loss, "make_inputs": _inputs}

CASES = (
    Case("attention/correct", grad=_grad, kind="correct", **_ATTN),
    Case(
        "attention/bug_forgot_scale_in_backward",
        grad=functools.partial(_grad, bug="forgot_scale_backward"),
        kind="buggy",
        buggy_leaves=frozenset({"['Wq']", "['Wk']"}),
        bug_class="scale",
        bug_detail={"factor": 2.0},
        **_ATTN,
    ),
    Case(
        "attention/bug_transposed_output_projection",
        grad=functools.partial(_grad, bug="transpose"),
        kind="buggy",
        buggy_leaves=frozenset({"['Wo']"}),
        bug_class="transpose",
        **_ATTN,
    ),
    Case(
        "attention/bug_swapped_query_key",
        grad=functools.partial(_grad, bug="swap"),
        kind="buggy",
        buggy_leaves=frozenset({"['Wq']", "['Wk']"}),
        bug_class="swap",
        **_ATTN,
    ),
    Case(
        "attention/bug_softmax_jacobian_diagonal_only",
        grad=functools.partial(_grad, bug="softmax_diagonal_only"),
        kind="buggy",
        buggy_leaves=frozenset({"['Wq']", "['Wk']"}),
        bug_class="missing_term",
        bug_detail={"term": "softmax_jacobian_off_diagonal"},
        **_ATTN,
    ),
    Case(
        "attention/bug_nonfinite_unstable_softmax",
        loss=_loss,
        grad=functools.partial(_grad, bug="unstable_softmax"),
        make_inputs=functools.partial(_inputs, overflow=True),
        kind="buggy",
        buggy_leaves=_ALL,
        bug_class="nonfinite",
        bug_detail={"cause": "exp overflow in softmax, then inf/inf"},
    ),
    Case(
        "attention_d6/correct",
        loss=_loss,
        grad=_grad,
        make_inputs=functools.partial(_inputs, dim=6),
        kind="correct",
    ),
    Case(
        "attention_d6/bug_subtle_half_precision_buffer",
        loss=_loss,
        grad=functools.partial(_grad, bug="half_precision_buffer"),
        make_inputs=functools.partial(_inputs, dim=6),
        kind="buggy",
        buggy_leaves=frozenset({"['Wo']"}),
        bug_class="subtle",
        bug_detail={"rel_error": 4.9e-4, "cause": "float16 rounding"},
    ),
    Case(
        "causal_attention_jnp/correct",
        loss=functools.partial(_loss, causal=True),
        grad=_causal_grad,
        make_inputs=_inputs,
        kind="correct",
    ),
)
