"""Random MLPs with hand-written numpy backprop, for property tests and benchmarks.

Shared by `tests/test_targets.py` and `bench/targets.py`, so that the benchmark
measures exactly what the tests promise.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax.numpy as jnp
import numpy as np

ACTIVATIONS = ("tanh", "sigmoid", "softplus", "relu")
LOSSES = ("mse", "softmax_ce")


@dataclasses.dataclass(frozen=True)
class MLP:
    """An MLP description; `loss` and `grad` close over it."""

    widths: tuple[int, ...]
    activation: str
    loss_kind: str
    l2: float

    def loss(self, params: Any, x: Any, target: Any) -> Any:
        h = x
        for i in range(len(self.widths) - 1):
            z = h @ params[f"W{i}"] + params[f"b{i}"]
            h = _jnp_activation(self.activation, z) if i < len(self.widths) - 2 else z
        if self.loss_kind == "mse":
            data = 0.5 * jnp.mean((h - target) ** 2)
        else:
            shifted = h - jnp.max(h, axis=1, keepdims=True)
            log_p = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
            data = -jnp.mean(log_p[jnp.arange(target.shape[0]), target])
        penalty = sum(
            jnp.sum(params[f"W{i}"] ** 2) for i in range(len(self.widths) - 1)
        )
        return data + 0.5 * self.l2 * penalty

    def grad(self, params: Any, x: Any, target: Any) -> dict[str, np.ndarray]:
        n_layers = len(self.widths) - 1
        inputs, pre = [], []
        h = x
        for i in range(n_layers):
            inputs.append(h)
            z = h @ params[f"W{i}"] + params[f"b{i}"]
            pre.append(z)
            h = _np_activation(self.activation, z) if i < n_layers - 1 else z
        if self.loss_kind == "mse":
            upstream = (h - target) / h.size
        else:
            shifted = h - h.max(axis=1, keepdims=True)
            probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
            probs[np.arange(target.shape[0]), target] -= 1
            upstream = probs / target.shape[0]
        grads = {}
        for i in reversed(range(n_layers)):
            if i < n_layers - 1:
                upstream = upstream * _np_derivative(self.activation, pre[i])
            grads[f"W{i}"] = inputs[i].T @ upstream + self.l2 * params[f"W{i}"]
            grads[f"b{i}"] = upstream.sum(axis=0)
            upstream = upstream @ params[f"W{i}"].T
        return grads

    def point(self, rng: np.random.Generator, batch: int, dtype: Any) -> tuple:
        params = {}
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(self.widths)):
            params[f"W{i}"] = (
                rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)
            ).astype(dtype)
            params[f"b{i}"] = (0.1 * rng.normal(size=fan_out)).astype(dtype)
        x = rng.normal(size=(batch, self.widths[0])).astype(dtype)
        if self.loss_kind == "mse":
            target = rng.normal(size=(batch, self.widths[-1])).astype(dtype)
        else:
            target = rng.integers(0, self.widths[-1], size=batch)
        return params, x, target


def random_mlp(rng: np.random.Generator) -> MLP:
    depth = int(rng.integers(1, 4))
    widths = tuple(int(w) for w in rng.integers(1, 9, size=depth + 1))
    loss_kind = str(rng.choice(LOSSES))
    if loss_kind == "softmax_ce":
        widths = widths[:-1] + (max(2, widths[-1]),)
    return MLP(
        widths=widths,
        activation=str(rng.choice(ACTIVATIONS)),
        loss_kind=loss_kind,
        l2=float(rng.choice([0.0, 1e-2])),
    )


def with_one_wrong_element(
    mlp: MLP,
    params: Any,
    x: Any,
    target: Any,
    rng: np.random.Generator,
    relative: float,
) -> tuple[Any, str, tuple[int, ...]]:
    """A gradient wrong by `relative` at one element that is not negligible.

    The element is drawn among those whose true gradient is at least 1e-3 of its
    leaf's largest, so the error is a relative one of a real value, not of a
    rounding-level residue.
    """
    true = mlp.grad(params, x, target)
    candidates = [
        (name, index)
        for name, g in true.items()
        for index in np.argwhere(np.abs(g) >= 1e-3 * np.abs(g).max())
        if np.abs(g).max() > 0
    ]
    name, index = candidates[int(rng.integers(len(candidates)))]
    index = tuple(int(i) for i in index)

    def wrong(params: Any, x: Any, target: Any) -> dict[str, np.ndarray]:
        result = mlp.grad(params, x, target)
        result[name] = np.array(result[name], copy=True)
        result[name][index] *= 1 + relative
        return result

    return wrong, f"['{name}']", index


def _jnp_activation(name: str, z: Any) -> Any:
    if name == "tanh":
        return jnp.tanh(z)
    if name == "sigmoid":
        return 1 / (1 + jnp.exp(-z))
    if name == "softplus":
        return jnp.logaddexp(z, 0.0)
    return jnp.maximum(z, 0.0)


def _np_activation(name: str, z: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "softplus":
        return np.logaddexp(z, 0.0)
    return np.maximum(z, 0.0)


def _np_derivative(name: str, z: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        return s * (1 - s)
    if name == "softplus":
        return 1 / (1 + np.exp(-z))
    return (z > 0).astype(z.dtype)
