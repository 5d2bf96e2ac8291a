"""Embedding lookups: a bag-of-embeddings classifier and a tied-embedding model.

The backward pass of a lookup is a scatter-add, and a repeated token id must add
its gradients together, which plain fancy-index assignment does not do.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._case import Case
from ._util import normal, one_hot, softmax

_VOCAB = 16
_REPEATED_ID = 3


# Mean of token embeddings -> square projection with tanh -> linear classifier.


def _bag_inputs(rng, dtype, *, single_repeat=False):
    if single_repeat:
        # Eleven distinct ids plus one extra copy of _REPEATED_ID.
        others = rng.permutation(np.delete(np.arange(_VOCAB), _REPEATED_ID))[:10]
        ids = rng.permutation(np.concatenate([others, [_REPEATED_ID] * 2]))
    else:
        ids = rng.integers(0, _VOCAB, size=12)
    ids = ids.reshape(3, 4)
    labels = rng.integers(0, 3, size=3)
    params = {
        "E": normal(rng, (_VOCAB, 4), dtype),
        "P": normal(rng, (4, 4), dtype, 0.7),
        "W": normal(rng, (4, 3), dtype, 0.7),
        "b": normal(rng, (3,), dtype, 0.3),
    }
    return params, (ids, labels)


def _bag_loss(params, ids, labels):
    h = jnp.mean(params["E"][ids], axis=1)
    u = jnp.tanh(h @ params["P"])
    log_p = jax.nn.log_softmax(u @ params["W"] + params["b"], axis=1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1))


def _bag_grad(params, ids, labels, *, bug=None):
    n, length = ids.shape
    h = params["E"][ids].mean(axis=1)
    u = np.tanh(h @ params["P"])
    p = softmax(u @ params["W"] + params["b"])

    d_logits = (p - one_hot(labels, p.shape[1], p.dtype)) / n
    grad_w = u.T @ d_logits
    grad_b = d_logits.sum(axis=0)
    d_pre = (d_logits @ params["W"].T) * (1 - u**2)
    grad_p = h.T @ d_pre
    d_h = d_pre @ params["P"].T

    grad_e = np.zeros_like(params["E"])
    d_tokens = np.repeat(d_h[:, None, :] / length, length, axis=1)
    if bug == "fancy_index":
        # Buffered assignment: a repeated id keeps only one of its updates.
        grad_e[ids] += d_tokens
    else:
        np.add.at(grad_e, ids, d_tokens)

    if bug == "transpose":
        grad_p = grad_p.T
    if bug == "zero_bias":
        grad_b = np.zeros_like(grad_b)
    return {"E": grad_e, "P": grad_p, "W": grad_w, "b": grad_b}


# Next-token model with the output projection tied to the input embedding:
# logits = tanh(E[ids]) @ E.T + b.


def _tied_inputs(rng, dtype):
    ids = rng.integers(0, 8, size=6)
    targets = rng.integers(0, 8, size=6)
    params = {"E": normal(rng, (8, 5), dtype, 0.8), "b": normal(rng, (8,), dtype, 0.3)}
    return params, (ids, targets)


def _tied_loss(params, ids, targets):
    h = jnp.tanh(params["E"][ids])
    log_p = jax.nn.log_softmax(h @ params["E"].T + params["b"], axis=1)
    return -jnp.mean(jnp.take_along_axis(log_p, targets[:, None], axis=1))


def _tied_grad(params, ids, targets, *, forgot_output_path=False):
    n = ids.shape[0]
    h = np.tanh(params["E"][ids])
    p = softmax(h @ params["E"].T + params["b"])
    d_logits = (p - one_hot(targets, p.shape[1], p.dtype)) / n

    d_h = d_logits @ params["E"]
    grad_e = np.zeros_like(params["E"])
    np.add.at(grad_e, ids, d_h * (1 - h**2))
    if not forgot_output_path:
        # E also acts as the output projection.
        grad_e += d_logits.T @ h
    return {"E": grad_e, "b": d_logits.sum(axis=0)}


_BAG = {"loss": _bag_loss, "make_inputs": _bag_inputs}
_TIED = {"loss": _tied_loss, "make_inputs": _tied_inputs}

CASES = (
    Case("embedding_bag/correct", grad=_bag_grad, kind="correct", **_BAG),
    Case(
        "embedding_bag/bug_repeated_id_overwritten",
        loss=_bag_loss,
        grad=functools.partial(_bag_grad, bug="fancy_index"),
        make_inputs=functools.partial(_bag_inputs, single_repeat=True),
        kind="buggy",
        buggy_leaves=frozenset({"['E']"}),
        bug_class="region",
        bug_detail={"region": "row", "axis": 0, "index": _REPEATED_ID},
    ),
    Case(
        "embedding_bag/bug_transposed_projection",
        grad=functools.partial(_bag_grad, bug="transpose"),
        kind="buggy",
        buggy_leaves=frozenset({"['P']"}),
        bug_class="transpose",
        **_BAG,
    ),
    Case(
        "embedding_bag/bug_zero_bias",
        grad=functools.partial(_bag_grad, bug="zero_bias"),
        kind="buggy",
        buggy_leaves=frozenset({"['b']"}),
        bug_class="zero",
        **_BAG,
    ),
    Case("tied_embedding/correct", grad=_tied_grad, kind="correct", **_TIED),
    Case(
        "tied_embedding/bug_forgot_output_projection",
        grad=functools.partial(_tied_grad, forgot_output_path=True),
        kind="buggy",
        buggy_leaves=frozenset({"['E']"}),
        bug_class="missing_term",
        bug_detail={"term": "tied_output_projection"},
        **_TIED,
    ),
)
