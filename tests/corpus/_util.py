"""Small helpers shared by the corpus modules."""

from __future__ import annotations

import numpy as np


def normal(rng, shape, dtype, scale=1.0):
    """Draws a standard normal array, scaled, in ``dtype``."""
    return (scale * rng.standard_normal(shape)).astype(dtype)


def dyadic(rng, shape, dtype, low=-4, high=4):
    """Draws multiples of 1/4 in ``[low/4, high/4]``, excluding zero.

    Sums and products of a few such values are exact in float32 and float64,
    whatever order a backend accumulates them in, so a value placed exactly on a
    kink stays exactly on it.
    """
    values = rng.integers(low, high, size=shape, endpoint=True)
    values = np.where(values == 0, 1, values)
    return (values / 4).astype(dtype)


def one_hot(labels, num_classes, dtype):
    """Returns the one-hot encoding of integer ``labels``."""
    return np.eye(num_classes, dtype=dtype)[labels]


def softmax(z, axis=-1):
    """Numerically stable softmax along ``axis``."""
    shifted = z - z.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def relu_safe_dense(rng, x, shape, dtype, margin=1e-2, scale=1.0):
    """Draws a weight matrix and bias whose pre-activations avoid zero.

    Redraws until every entry of ``x @ w + b`` is at least ``margin`` away from
    the ReLU kink, so that finite differences never straddle it.
    """
    while True:
        w = normal(rng, shape, dtype, scale)
        b = normal(rng, shape[1:], dtype, 0.5)
        if np.abs(x @ w + b).min() > margin:
            return w, b
