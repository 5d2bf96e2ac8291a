"""Recurrent cells unrolled over several steps, with backprop through time."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._case import Case
from ._util import normal


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


# Elman RNN, h_t = tanh(x_t Wx + h_{t-1} Wh + b), with a readout at every step:
# loss = 0.5 * sum_t |h_t Wy - y_t|^2 / B. The sequence is time-major (T, B, D).


def _rnn_inputs(rng, dtype, *, saturate=False):
    x = normal(rng, (6, 2, 3), dtype)
    y = normal(rng, (6, 2, 2), dtype)
    params = {
        "Wx": normal(rng, (3, 5), dtype, 0.5),
        "Wh": normal(rng, (5, 5), dtype, 0.4),
        "b": normal(rng, (5,), dtype, 0.2),
        "Wy": normal(rng, (5, 2), dtype, 0.5),
    }
    if saturate:
        # Units 0-2 are driven far into saturation, where tanh' is below 1e-15;
        # units 3-4 stay in the linear range.
        params["b"] = params["b"] + np.array([20, -20, 25, 0, 0], dtype)
    return params, (x, y)


# The losses scan over time rather than unrolling a Python loop: the traced
# program stays small, so compiling it is quick.


def _rnn_loss(params, x, y):
    def step(h, xy):
        x_t, y_t = xy
        h = jnp.tanh(x_t @ params["Wx"] + h @ params["Wh"] + params["b"])
        return h, jnp.sum((h @ params["Wy"] - y_t) ** 2)

    h0 = jnp.zeros((x.shape[1], params["Wh"].shape[0]), x.dtype)
    _, per_step = lax.scan(step, h0, (x, y))
    return 0.5 * jnp.sum(per_step) / x.shape[1]


def _rnn_grad(params, x, y, *, bug=None):
    steps, batch = x.shape[:2]
    hs = [np.zeros((batch, params["Wh"].shape[0]), x.dtype)]
    for t in range(steps):
        hs.append(np.tanh(x[t] @ params["Wx"] + hs[-1] @ params["Wh"] + params["b"]))

    grads = {k: np.zeros_like(v) for k, v in params.items()}
    d_next = np.zeros_like(hs[0])
    for t in reversed(range(steps)):
        d_out = (hs[t + 1] @ params["Wy"] - y[t]) / batch
        if bug == "mean_over_time":
            d_out = d_out / steps
        grads["Wy"] += hs[t + 1].T @ d_out
        d_a = (d_out @ params["Wy"].T + d_next) * (1 - hs[t + 1] ** 2)
        grads["Wx"] += x[t].T @ d_a
        if bug == "transpose":
            grads["Wh"] += d_a.T @ hs[t]
        else:
            grads["Wh"] += hs[t].T @ d_a
        grads["b"] += d_a.sum(axis=0)
        d_next = d_a @ params["Wh"].T
    return grads


# The same cell on one sequence, differentiated with respect to the sequence
# itself (as for saliency), plus the recurrent weights.


def _rnn_seq_inputs(rng, dtype):
    params = {
        "x": normal(rng, (5, 3), dtype),
        "Wx": normal(rng, (3, 4), dtype, 0.6),
        "Wh": normal(rng, (4, 4), dtype, 0.5),
    }
    return params, (normal(rng, (5, 4), dtype, 0.5),)


def _rnn_seq_loss(params, y):
    def step(h, xy):
        x_t, y_t = xy
        h = jnp.tanh(x_t @ params["Wx"] + h @ params["Wh"])
        return h, jnp.sum((h - y_t) ** 2)

    h0 = jnp.zeros((params["Wh"].shape[0],), y.dtype)
    _, per_step = lax.scan(step, h0, (params["x"], y))
    return 0.5 * jnp.sum(per_step)


def _rnn_seq_grad(params, y, *, skip_last_input=False):
    x, wx, wh = params["x"], params["Wx"], params["Wh"]
    steps = x.shape[0]
    hs = [np.zeros((wh.shape[0],), x.dtype)]
    for t in range(steps):
        hs.append(np.tanh(x[t] @ wx + hs[-1] @ wh))

    d_x, d_wx, d_wh = np.zeros_like(x), np.zeros_like(wx), np.zeros_like(wh)
    d_next = np.zeros_like(hs[0])
    # The off-by-one bug: the input gradient is only filled for t < T - 1.
    input_steps = range(steps - 1) if skip_last_input else range(steps)
    for t in reversed(range(steps)):
        d_a = (hs[t + 1] - y[t] + d_next) * (1 - hs[t + 1] ** 2)
        if t in input_steps:
            d_x[t] = wx @ d_a
        d_wx += np.outer(x[t], d_a)
        d_wh += np.outer(hs[t], d_a)
        d_next = wh @ d_a
    return {"x": d_x, "Wx": d_wx, "Wh": d_wh}


# LSTM with gates packed as [input, forget, cell, output] along the last axis,
# and a readout at every step.


def _lstm_inputs(rng, dtype):
    hidden = 4
    x = normal(rng, (4, 2, 3), dtype)
    y = normal(rng, (4, 2, 2), dtype)
    b = normal(rng, (4 * hidden,), dtype, 0.2)
    b[hidden : 2 * hidden] += 1  # the usual forget-gate bias
    params = {
        "Wx": normal(rng, (3, 4 * hidden), dtype, 0.5),
        "Wh": normal(rng, (hidden, 4 * hidden), dtype, 0.5),
        "b": b,
        "Wy": normal(rng, (hidden, 2), dtype, 0.5),
    }
    return params, (x, y)


def _lstm_loss(params, x, y):
    wx, wh, b, wy = params["Wx"], params["Wh"], params["b"], params["Wy"]

    def step(carry, xy):
        h, c = carry
        x_t, y_t = xy
        i, f, g, o = jnp.split(x_t @ wx + h @ wh + b, 4, axis=1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), jnp.sum((h @ wy - y_t) ** 2)

    h0 = jnp.zeros((x.shape[1], wh.shape[0]), x.dtype)
    _, per_step = lax.scan(step, (h0, h0), (x, y))
    return 0.5 * jnp.sum(per_step) / x.shape[1]


def _lstm_grad(params, x, y, *, forgot_cell_carry=False):
    wx, wh, b, wy = params["Wx"], params["Wh"], params["b"], params["Wy"]
    steps, batch = x.shape[:2]
    hidden = wh.shape[0]

    hs = [np.zeros((batch, hidden), x.dtype)]
    cs = [np.zeros((batch, hidden), x.dtype)]
    cache = []
    for t in range(steps):
        a = x[t] @ wx + hs[-1] @ wh + b
        i, f, o = (_sigmoid(a[:, k * hidden : (k + 1) * hidden]) for k in (0, 1, 3))
        g = np.tanh(a[:, 2 * hidden : 3 * hidden])
        cs.append(f * cs[-1] + i * g)
        hs.append(o * np.tanh(cs[-1]))
        cache.append((i, f, g, o))

    grads = {k: np.zeros_like(v) for k, v in params.items()}
    d_h_next = np.zeros_like(hs[0])
    d_c_next = np.zeros_like(cs[0])
    for t in reversed(range(steps)):
        i, f, g, o = cache[t]
        tanh_c = np.tanh(cs[t + 1])
        d_out = (hs[t + 1] @ wy - y[t]) / batch
        grads["Wy"] += hs[t + 1].T @ d_out
        d_h = d_out @ wy.T + d_h_next
        d_c = d_h * o * (1 - tanh_c**2)
        if not forgot_cell_carry:
            d_c = d_c + d_c_next
        d_a = np.concatenate(
            [
                d_c * g * i * (1 - i),
                d_c * cs[t] * f * (1 - f),
                d_c * i * (1 - g**2),
                d_h * tanh_c * o * (1 - o),
            ],
            axis=1,
        )
        grads["Wx"] += x[t].T @ d_a
        grads["Wh"] += hs[t].T @ d_a
        grads["b"] += d_a.sum(axis=0)
        d_h_next = d_a @ wh.T
        d_c_next = d_c * f
    return grads


# The same LSTM with its parameters as a tuple (Wx, Wh, b, Wy) and the backward
# pass written in jax.numpy.

_LSTM_NAMES = ("Wx", "Wh", "b", "Wy")


def _lstm_tuple_inputs(rng, dtype):
    params, args = _lstm_inputs(rng, dtype)
    return tuple(params[k] for k in _LSTM_NAMES), args


def _lstm_tuple_loss(params, x, y):
    return _lstm_loss(dict(zip(_LSTM_NAMES, params, strict=True)), x, y)


def _lstm_tuple_grad(params, x, y):
    wx, wh, b, wy = params
    steps, batch = x.shape[:2]
    hidden = wh.shape[0]
    h = c = jnp.zeros((batch, hidden), x.dtype)
    tape = []
    for t in range(steps):
        a = x[t] @ wx + h @ wh + b
        i, f, g, o = jnp.split(a, 4, axis=1)
        i, f, o, g = (
            jax.nn.sigmoid(i),
            jax.nn.sigmoid(f),
            jax.nn.sigmoid(o),
            jnp.tanh(g),
        )
        tape.append((h, c, i, f, g, o))
        c = f * c + i * g
        h = o * jnp.tanh(c)
        tape[-1] += (h, c)

    d_wx, d_wh, d_b, d_wy = (jnp.zeros_like(p) for p in params)
    d_h_next = d_c_next = jnp.zeros((batch, hidden), x.dtype)
    for t in reversed(range(steps)):
        h_prev, c_prev, i, f, g, o, h, c = tape[t]
        d_out = (h @ wy - y[t]) / batch
        d_wy = d_wy + h.T @ d_out
        d_h = d_out @ wy.T + d_h_next
        tanh_c = jnp.tanh(c)
        d_c = d_h * o * (1 - tanh_c**2) + d_c_next
        d_a = jnp.concatenate(
            [
                d_c * g * i * (1 - i),
                d_c * c_prev * f * (1 - f),
                d_c * i * (1 - g**2),
                d_h * tanh_c * o * (1 - o),
            ],
            axis=1,
        )
        d_wx = d_wx + x[t].T @ d_a
        d_wh = d_wh + h_prev.T @ d_a
        d_b = d_b + d_a.sum(axis=0)
        d_h_next = d_a @ wh.T
        d_c_next = d_c * f
    return (d_wx, d_wh, d_b, d_wy)


# GRU with one nested dict per gate, and a readout at the last step only.
#   z = sig(x Wx_z + h Wh_z + b_z),  r = sig(x Wx_r + h Wh_r + b_r)
#   n = tanh(x Wx_n + (r * h) Wh_n + b_n),  h' = (1 - z) * n + z * h


def _gru_inputs(rng, dtype):
    def gate():
        return {
            "Wx": normal(rng, (3, 4), dtype, 0.6),
            "Wh": normal(rng, (4, 4), dtype, 0.6),
            "b": normal(rng, (4,), dtype, 0.3),
        }

    params = {"z": gate(), "r": gate(), "n": gate(), "Wy": normal(rng, (4, 2), dtype)}
    x = normal(rng, (5, 3, 3), dtype)
    h0 = normal(rng, (3, 4), dtype, 0.5)
    y = normal(rng, (3, 2), dtype)
    return params, (x, h0, y)


def _gru_loss(params, x, h0, y):
    z_p, r_p, n_p = params["z"], params["r"], params["n"]

    def step(h, x_t):
        z = jax.nn.sigmoid(x_t @ z_p["Wx"] + h @ z_p["Wh"] + z_p["b"])
        r = jax.nn.sigmoid(x_t @ r_p["Wx"] + h @ r_p["Wh"] + r_p["b"])
        n = jnp.tanh(x_t @ n_p["Wx"] + (r * h) @ n_p["Wh"] + n_p["b"])
        return (1 - z) * n + z * h, None

    h, _ = lax.scan(step, h0, x)
    return 0.5 * jnp.mean(jnp.sum((h @ params["Wy"] - y) ** 2, axis=1))


def _gru_grad(params, x, h0, y, *, swap_recurrent=False):
    z_p, r_p, n_p = params["z"], params["r"], params["n"]
    hs, tape = [h0], []
    for t in range(x.shape[0]):
        h = hs[-1]
        z = _sigmoid(x[t] @ z_p["Wx"] + h @ z_p["Wh"] + z_p["b"])
        r = _sigmoid(x[t] @ r_p["Wx"] + h @ r_p["Wh"] + r_p["b"])
        n = np.tanh(x[t] @ n_p["Wx"] + (r * h) @ n_p["Wh"] + n_p["b"])
        tape.append((z, r, n))
        hs.append((1 - z) * n + z * h)

    grads = {
        gate: {k: np.zeros_like(v) for k, v in params[gate].items()}
        for gate in ("z", "r", "n")
    }
    d_out = (hs[-1] @ params["Wy"] - y) / y.shape[0]
    grads["Wy"] = hs[-1].T @ d_out
    d_h = d_out @ params["Wy"].T
    for t in reversed(range(x.shape[0])):
        z, r, n = tape[t]
        h = hs[t]
        d_an = d_h * (1 - z) * (1 - n**2)
        d_az = d_h * (h - n) * z * (1 - z)
        d_rh = d_an @ n_p["Wh"].T
        d_ar = d_rh * h * r * (1 - r)
        for gate, d_a, h_in in (("z", d_az, h), ("r", d_ar, h), ("n", d_an, r * h)):
            grads[gate]["Wx"] += x[t].T @ d_a
            grads[gate]["Wh"] += h_in.T @ d_a
            grads[gate]["b"] += d_a.sum(axis=0)
        d_h = d_h * z + d_rh * r + d_az @ z_p["Wh"].T + d_ar @ r_p["Wh"].T

    if swap_recurrent:
        # The update and reset gates' recurrent gradients unpacked in the
        # wrong order.
        grads["z"]["Wh"], grads["r"]["Wh"] = grads["r"]["Wh"], grads["z"]["Wh"]
    return grads


_RNN = {"loss": _rnn_loss, "make_inputs": _rnn_inputs}
_RNN_SEQ = {"loss": _rnn_seq_loss, "make_inputs": _rnn_seq_inputs}
_LSTM = {"loss": _lstm_loss, "make_inputs": _lstm_inputs}
_GRU = {"loss": _gru_loss, "make_inputs": _gru_inputs}

CASES = (
    Case("rnn/correct", grad=_rnn_grad, kind="correct", **_RNN),
    Case(
        "rnn/bug_transposed_recurrent_weight",
        grad=functools.partial(_rnn_grad, bug="transpose"),
        kind="buggy",
        buggy_leaves=frozenset({"['Wh']"}),
        bug_class="transpose",
        **_RNN,
    ),
    Case(
        "rnn/bug_mean_over_time",
        grad=functools.partial(_rnn_grad, bug="mean_over_time"),
        kind="buggy",
        buggy_leaves=frozenset({"['Wx']", "['Wh']", "['b']", "['Wy']"}),
        bug_class="scale",
        bug_detail={"factor": 1 / 6},
        **_RNN,
    ),
    Case(
        "rnn/hard_saturated_units",
        loss=_rnn_loss,
        grad=_rnn_grad,
        make_inputs=functools.partial(_rnn_inputs, saturate=True),
        kind="hard",
        bug_detail={
            "difficulty": "three of five tanh units saturated over the whole sequence",
            "kink_leaves": (),
        },
    ),
    Case("rnn_sequence/correct", grad=_rnn_seq_grad, kind="correct", **_RNN_SEQ),
    Case(
        "rnn_sequence/bug_last_input_step_skipped",
        grad=functools.partial(_rnn_seq_grad, skip_last_input=True),
        kind="buggy",
        buggy_leaves=frozenset({"['x']"}),
        bug_class="region",
        bug_detail={"region": "last_timestep", "axis": 0, "index": 4},
        **_RNN_SEQ,
    ),
    Case("lstm/correct", grad=_lstm_grad, kind="correct", **_LSTM),
    Case(
        "lstm/bug_forgot_cell_carry",
        grad=functools.partial(_lstm_grad, forgot_cell_carry=True),
        kind="buggy",
        buggy_leaves=frozenset({"['Wx']", "['Wh']", "['b']"}),
        bug_class="missing_term",
        bug_detail={"term": "cell_state_carry"},
        **_LSTM,
    ),
    Case(
        "lstm_tuple_jnp/correct",
        loss=_lstm_tuple_loss,
        grad=_lstm_tuple_grad,
        make_inputs=_lstm_tuple_inputs,
        kind="correct",
    ),
    Case("gru/correct", grad=_gru_grad, kind="correct", **_GRU),
    Case(
        "gru/bug_swapped_recurrent_gates",
        grad=functools.partial(_gru_grad, swap_recurrent=True),
        kind="buggy",
        buggy_leaves=frozenset({"['z']['Wh']", "['r']['Wh']"}),
        bug_class="swap",
        **_GRU,
    ),
)
