"""Bundled examples, run by `gradaudit demo`.

Each example is a loss, a hand-written gradient and the point to check it at,
written the way a researcher would: the loss in `jax.numpy`, the backprop in numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Example:
    """A loss with a hand-written gradient, and what the demo says about it."""

    name: str
    title: str
    story: str
    loss: Callable[..., Any]
    grad: Callable[..., Any]
    params: Any
    args: tuple[Any, ...]


# -- the classic two-input linear unit ----------------------------------------
#
# out = w . x + b, loss = 1/2 (y - out)^2. With w = [0.34, 0.56], b = 0.54,
# x = [1, 0] and y = 0.1056: out = 0.88, dloss/dout = out - y = 0.7744, so
# dw = 0.7744 * x = [0.7744, 0] and db = 0.7744.

CLASSIC_PARAMS = {"w": np.array([0.34, 0.56]), "b": np.array(0.54)}
CLASSIC_X = np.array([1.0, 0.0])
CLASSIC_Y = np.array(0.1056)


def linear_unit(params: Any, x: Any) -> Any:
    return params["w"] @ x + params["b"]


def classic_loss(params: Any, x: Any, y: Any) -> Any:
    return 0.5 * (y - linear_unit(params, x)) ** 2


def classic_grad(params: Any, x: Any, y: Any) -> dict[str, np.ndarray]:
    out = params["w"] @ x + params["b"]
    upstream = out - y  # d/d(out) of 1/2 (y - out)^2
    return {"w": upstream * x, "b": np.asarray(upstream)}


def output_derivative(params: Any, x: Any, y: Any) -> dict[str, np.ndarray]:
    """The classic mistake: the derivative of the unit's output, not of the loss."""
    del y
    return {"w": np.asarray(x, dtype=np.float64), "b": np.asarray(1.0)}


# -- a two-layer MLP with a planted bug ---------------------------------------


def mlp_loss(params: Any, x: Any, labels: Any) -> Any:
    hidden = jnp.maximum(x @ params["W1"] + params["b1"], 0.0)
    logits = hidden @ params["W2"] + params["b2"]
    logits = logits - jnp.max(logits, axis=1, keepdims=True)
    log_probs = logits - jnp.log(jnp.sum(jnp.exp(logits), axis=1, keepdims=True))
    return -jnp.mean(log_probs[jnp.arange(labels.shape[0]), labels])


def _mlp_backprop(params: Any, x: Any, labels: Any, mask_relu: bool) -> dict[str, Any]:
    pre = x @ params["W1"] + params["b1"]
    hidden = np.maximum(pre, 0.0)
    logits = hidden @ params["W2"] + params["b2"]
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    batch = x.shape[0]
    dlogits = probs.copy()
    dlogits[np.arange(batch), labels] -= 1.0
    dlogits /= batch
    dhidden = dlogits @ params["W2"].T
    dpre = dhidden * (pre > 0) if mask_relu else dhidden
    return {
        "W1": x.T @ dpre,
        "b1": dpre.sum(axis=0),
        "W2": hidden.T @ dlogits,
        "b2": dlogits.sum(axis=0),
    }


def mlp_grad(params: Any, x: Any, labels: Any) -> dict[str, Any]:
    return _mlp_backprop(params, x, labels, mask_relu=True)


def mlp_grad_with_bug(params: Any, x: Any, labels: Any) -> dict[str, Any]:
    """Forgets the ReLU's derivative: the mask on the hidden pre-activations."""
    return _mlp_backprop(params, x, labels, mask_relu=False)


def _mlp_point() -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    params = {
        "W1": rng.normal(0.0, 0.5, (4, 6)),
        "b1": rng.normal(0.0, 0.1, 6),
        "W2": rng.normal(0.0, 0.5, (6, 3)),
        "b2": np.zeros(3),
    }
    x = rng.normal(size=(8, 4))
    labels = rng.integers(0, 3, size=8)
    return params, (x, labels)


def examples() -> tuple[Example, ...]:
    mlp_params, mlp_args = _mlp_point()
    return (
        Example(
            "classic",
            "The classic linear unit, gradient derived by hand",
            "w = [0.34, 0.56], b = 0.54, x = [1, 0], loss = 1/2 (0.1056 - out)^2."
            " By hand: dw = [0.7744, 0], db = 0.7744.",
            classic_loss,
            classic_grad,
            CLASSIC_PARAMS,
            (CLASSIC_X, CLASSIC_Y),
        ),
        Example(
            "classic-output",
            "The same unit, differencing the output instead of the loss",
            "A common slip is to check d(out)/dw, which gives 1 for the first weight,"
            " instead of d(loss)/dw = 0.7744. gradaudit differentiates one loss for"
            " all three sources, so the slip shows up as a wrong gradient.",
            classic_loss,
            output_derivative,
            CLASSIC_PARAMS,
            (CLASSIC_X, CLASSIC_Y),
        ),
        Example(
            "mlp",
            "A two-layer ReLU MLP with softmax cross-entropy, correct backprop",
            "8 examples, 4 inputs, 6 hidden units, 3 classes; numpy backprop.",
            mlp_loss,
            mlp_grad,
            mlp_params,
            mlp_args,
        ),
        Example(
            "mlp-bug",
            "The same MLP with a planted bug",
            "The backprop forgets to multiply by the ReLU's derivative, so the"
            " gradients of the first layer are wrong wherever a unit is inactive.",
            mlp_loss,
            mlp_grad_with_bug,
            mlp_params,
            mlp_args,
        ),
    )
