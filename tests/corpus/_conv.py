"""Convolutions with stride and padding, and max and average pooling.

The losses use `jax.lax.conv_general_dilated`; the hand-written passes loop over
kernel taps in NumPy, the way one writes a first im2col-free implementation.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from ._case import Case
from ._util import dyadic, normal

_DIMS = ("NCHW", "OIHW", "NCHW")


def _conv_jax(x, w, stride, pad):
    return lax.conv_general_dilated(
        x, w, (stride, stride), [(pad, pad), (pad, pad)], dimension_numbers=_DIMS
    )


def _out_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def _taps(x, k, stride, pad):
    """Yields ``(i, j, window)``: the strided input slice seen by tap (i, j)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = _out_size(x.shape[2], k, stride, pad)
    ow = _out_size(x.shape[3], k, stride, pad)
    for i in range(k):
        for j in range(k):
            yield (
                i,
                j,
                xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride],
            )


def _conv_np(x, w, stride, pad):
    out = 0
    for i, j, window in _taps(x, w.shape[2], stride, pad):
        out = out + np.einsum("nchw,fc->nfhw", window, w[:, :, i, j])
    return out


def _conv_np_backward(x, w, d_out, stride, pad, *, skip_channel=None):
    """Returns ``(d_x, d_w)`` for the convolution, given the output gradient."""
    k = w.shape[2]
    oh, ow = d_out.shape[2:]
    d_w = np.zeros_like(w)
    d_xp = np.zeros(
        (x.shape[0], x.shape[1], x.shape[2] + 2 * pad, x.shape[3] + 2 * pad), x.dtype
    )
    for i, j, window in _taps(x, k, stride, pad):
        for f in range(w.shape[0]):
            if f == skip_channel:
                continue
            d_w[f, :, i, j] = np.einsum("nhw,nchw->c", d_out[:, f], window)
        d_xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += (
            np.einsum("nfhw,fc->nchw", d_out, w[:, :, i, j])
        )
    h, wd = x.shape[2:]
    return d_xp[:, :, pad : pad + h, pad : pad + wd], d_w


# A convolution with a tanh and a squared error on its output map.


def _conv_inputs(rng, dtype, *, stride, pad):
    x = normal(rng, (2, 2, 6, 6), dtype)
    oh = _out_size(6, 3, stride, pad)
    t = normal(rng, (2, 3, oh, oh), dtype, 0.5)
    params = {"W": normal(rng, (3, 2, 3, 3), dtype, 0.3), "b": normal(rng, (3,), dtype)}
    return params, (x, t)


def _conv_loss(params, x, t, *, stride, pad):
    z = _conv_jax(x, params["W"], stride, pad) + params["b"][:, None, None]
    return 0.5 * jnp.sum((jnp.tanh(z) - t) ** 2) / x.shape[0]


def _conv_grad(params, x, t, *, stride, pad, skip_channel=None):
    z = _conv_np(x, params["W"], stride, pad) + params["b"][:, None, None]
    h = np.tanh(z)
    d_z = (h - t) * (1 - h**2) / x.shape[0]
    _, d_w = _conv_np_backward(
        x, params["W"], d_z, stride, pad, skip_channel=skip_channel
    )
    return {"W": d_w, "b": d_z.sum(axis=(0, 2, 3))}


def _conv_family(stride, pad):
    return {
        "loss": functools.partial(_conv_loss, stride=stride, pad=pad),
        "make_inputs": functools.partial(_conv_inputs, stride=stride, pad=pad),
    }


# Gradient with respect to the input image (as in saliency maps), with padding.
# The buggy variant skips output positions whose window overlaps the padding,
# which leaves the outer two rings of the input gradient incomplete.


def _conv_input_inputs(rng, dtype):
    t = normal(rng, (1, 2, 7, 7), dtype, 0.5)
    params = {
        "x": normal(rng, (2, 7, 7), dtype),
        "W": normal(rng, (2, 2, 3, 3), dtype, 0.3),
    }
    return params, (t,)


def _conv_input_loss(params, t):
    z = _conv_jax(params["x"][None], params["W"], 1, 1)
    return 0.5 * jnp.sum((z - t) ** 2)


def _conv_input_grad(params, t, *, skip_border=False):
    x = params["x"][None]
    d_z = _conv_np(x, params["W"], 1, 1) - t
    d_x, d_w = _conv_np_backward(x, params["W"], d_z, 1, 1)
    if skip_border:
        interior = np.zeros_like(d_z)
        interior[:, :, 1:-1, 1:-1] = d_z[:, :, 1:-1, 1:-1]
        d_x, _ = _conv_np_backward(x, params["W"], interior, 1, 1)
    return {"x": d_x[0], "W": d_w}


# Conv (pad 1) -> tanh -> 2x2 pooling -> flatten -> linear readout.


def _pool_inputs(rng, dtype):
    x = normal(rng, (3, 1, 6, 6), dtype)
    y = normal(rng, (3,), dtype)
    params = {
        "W": normal(rng, (3, 1, 3, 3), dtype, 0.5),
        "b": normal(rng, (3,), dtype, 0.2),
        "v": normal(rng, (27,), dtype, 0.3),
    }
    return params, (x, y)


def _pool_jax(h, mode):
    n, c, hh, ww = h.shape
    blocks = h.reshape(n, c, hh // 2, 2, ww // 2, 2)
    if mode == "max":
        return jnp.max(blocks, axis=(3, 5))
    return jnp.mean(blocks, axis=(3, 5))


def _pool_np(h, mode):
    n, c, hh, ww = h.shape
    blocks = h.reshape(n, c, hh // 2, 2, ww // 2, 2)
    return blocks.max(axis=(3, 5)) if mode == "max" else blocks.mean(axis=(3, 5))


def _max_pool_backward(h, d_pooled, *, route):
    """Routes each window's gradient to its maximum.

    ``route="first"`` sends it to the first maximum in row-major order, a valid
    choice when maxima tie; ``route="all"`` sends the full gradient to every
    tied maximum, which is not a subgradient.
    """
    n, c, hh, ww = h.shape
    blocks = h.reshape(n, c, hh // 2, 2, ww // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    flat = blocks.reshape(n, c, hh // 2, ww // 2, 4)
    if route == "first":
        mask = np.arange(4) == flat.argmax(axis=-1)[..., None]
    else:
        mask = flat == flat.max(axis=-1, keepdims=True)
    d_flat = mask * d_pooled[..., None]
    d_blocks = d_flat.reshape(n, c, hh // 2, ww // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return d_blocks.reshape(h.shape).astype(h.dtype)


def _pool_loss(params, x, y, *, mode):
    z = _conv_jax(x, params["W"], 1, 1) + params["b"][:, None, None]
    pooled = _pool_jax(jnp.tanh(z), mode)
    s = pooled.reshape(x.shape[0], -1) @ params["v"]
    return 0.5 * jnp.mean((s - y) ** 2)


def _pool_grad(params, x, y, *, mode, forgot_average=False):
    n = x.shape[0]
    z = _conv_np(x, params["W"], 1, 1) + params["b"][:, None, None]
    h = np.tanh(z)
    pooled = _pool_np(h, mode)
    s = pooled.reshape(n, -1) @ params["v"]

    d_s = (s - y) / n
    grad_v = pooled.reshape(n, -1).T @ d_s
    d_pooled = np.outer(d_s, params["v"]).reshape(pooled.shape)
    if mode == "max":
        d_h = _max_pool_backward(h, d_pooled, route="first")
    else:
        # Each input of a window gets a quarter of the window's gradient.
        spread = d_pooled if forgot_average else d_pooled / 4
        d_h = np.repeat(np.repeat(spread, 2, axis=2), 2, axis=3)
    d_z = d_h * (1 - h**2)
    _, d_w = _conv_np_backward(x, params["W"], d_z, 1, 1)
    return {"W": d_w, "b": d_z.sum(axis=(0, 2, 3)), "v": grad_v}


# Max pooling applied directly to a learnable image, so that ties can be placed
# exactly. Dyadic values keep every tie exact.


def _pool_input_inputs(rng, dtype, *, ties=None):
    if ties is None:
        image = normal(rng, (2, 4, 4), dtype)
    else:
        # Distinct multiples of 1/8, so that no tie arises by chance.
        image = (rng.permutation(np.arange(-16, 16)) / 8).astype(dtype)
        image = image.reshape(2, 4, 4)
        # In three of the eight windows, move the maximum to the top-left and put
        # a copy of it, less ``ties``, at the bottom-right.
        for c, r, col in [(0, 0, 0), (0, 2, 2), (1, 0, 2)]:
            window = image[c, r : r + 2, col : col + 2]
            peak = window.max()
            window[np.unravel_index(window.argmax(), (2, 2))] = window[0, 0]
            window[0, 0] = peak
            window[1, 1] = peak - ties
    params = {"x": image, "v": normal(rng, (8,), dtype)}
    return params, (np.asarray(0.5, dtype=dtype),)


def _pool_input_loss(params, y):
    pooled = _pool_jax(params["x"][None], "max")
    return 0.5 * (jnp.sum(pooled.ravel() * params["v"]) - y) ** 2


def _pool_input_grad(params, y, *, route="first"):
    x = params["x"][None]
    pooled = _pool_np(x, "max")
    residual = pooled.ravel() @ params["v"] - y
    d_pooled = (residual * params["v"]).reshape(pooled.shape)
    d_x = _max_pool_backward(x, d_pooled, route=route)
    return {"x": d_x[0], "v": (residual * pooled.ravel()).astype(x.dtype)}


# A text-CNN feature: a 1-D convolution over a sequence, max over time, and a
# linear readout. A period-3 sequence makes every filter's maximum tie between
# two positions whose windows are identical.


def _maxtime_inputs(rng, dtype, *, periodic=False):
    if periodic:
        x = np.tile(dyadic(rng, (3, 2), dtype), (3, 1))[:8]
    else:
        x = normal(rng, (8, 2), dtype)
    params = {"W": normal(rng, (3, 2, 3), dtype, 0.5), "v": normal(rng, (3,), dtype)}
    return params, (x, np.asarray(0.25, dtype=dtype))


def _maxtime_loss(params, x, y):
    k = params["W"].shape[2]
    steps = x.shape[0] - k + 1
    windows = jnp.stack([x[t : t + k] for t in range(steps)])  # (T', k, D)
    z = jnp.einsum("tkd,fdk->ft", windows, params["W"])
    return 0.5 * (jnp.max(z, axis=1) @ params["v"] - y) ** 2


def _maxtime_grad(params, x, y, *, route="first"):
    k = params["W"].shape[2]
    steps = x.shape[0] - k + 1
    windows = np.stack([x[t : t + k] for t in range(steps)])
    z = np.einsum("tkd,fdk->ft", windows, params["W"])
    m = z.max(axis=1)
    residual = m @ params["v"] - y
    d_m = residual * params["v"]
    if route == "first":
        mask = np.arange(steps) == z.argmax(axis=1)[:, None]
    else:
        mask = z == m[:, None]
    d_z = (mask * d_m[:, None]).astype(x.dtype)
    return {
        "W": np.einsum("ft,tkd->fdk", d_z, windows),
        "v": (residual * m).astype(x.dtype),
    }


_S1P1 = _conv_family(1, 1)
_POOL_INPUT = {"loss": _pool_input_loss}
_MAXTIME = {"loss": _maxtime_loss}
_MAX_POOL = {
    "loss": functools.partial(_pool_loss, mode="max"),
    "make_inputs": _pool_inputs,
}
_AVG_POOL = {
    "loss": functools.partial(_pool_loss, mode="avg"),
    "make_inputs": _pool_inputs,
}

CASES = (
    Case(
        "conv2d_s1_p1/correct",
        grad=functools.partial(_conv_grad, stride=1, pad=1),
        kind="correct",
        **_S1P1,
    ),
    Case(
        "conv2d_s2_p1/correct",
        grad=functools.partial(_conv_grad, stride=2, pad=1),
        kind="correct",
        **_conv_family(2, 1),
    ),
    Case(
        "conv2d_s2_p0/correct",
        grad=functools.partial(_conv_grad, stride=2, pad=0),
        kind="correct",
        **_conv_family(2, 0),
    ),
    Case(
        "conv2d_s1_p1/bug_skipped_first_channel",
        grad=functools.partial(_conv_grad, stride=1, pad=1, skip_channel=0),
        kind="buggy",
        buggy_leaves=frozenset({"['W']"}),
        bug_class="region",
        bug_detail={"region": "channel", "axis": 0, "index": 0},
        **_S1P1,
    ),
    Case(
        "conv2d_input/correct",
        loss=_conv_input_loss,
        grad=_conv_input_grad,
        make_inputs=_conv_input_inputs,
        kind="correct",
    ),
    Case(
        "conv2d_input/bug_border_outputs_skipped",
        loss=_conv_input_loss,
        grad=functools.partial(_conv_input_grad, skip_border=True),
        make_inputs=_conv_input_inputs,
        kind="buggy",
        buggy_leaves=frozenset({"['x']"}),
        bug_class="region",
        bug_detail={"region": "border", "width": 2},
    ),
    Case(
        "maxpool/correct",
        grad=functools.partial(_pool_grad, mode="max"),
        kind="correct",
        **_MAX_POOL,
    ),
    Case(
        "avgpool/correct",
        grad=functools.partial(_pool_grad, mode="avg"),
        kind="correct",
        **_AVG_POOL,
    ),
    Case(
        "avgpool/bug_forgot_window_average",
        grad=functools.partial(_pool_grad, mode="avg", forgot_average=True),
        kind="buggy",
        buggy_leaves=frozenset({"['W']", "['b']"}),
        bug_class="scale",
        bug_detail={"factor": 4.0},
        **_AVG_POOL,
    ),
    Case(
        "maxpool_input/correct",
        grad=_pool_input_grad,
        make_inputs=_pool_input_inputs,
        kind="correct",
        **_POOL_INPUT,
    ),
    Case(
        "maxpool_input/hard_exact_ties_first",
        grad=_pool_input_grad,
        make_inputs=functools.partial(_pool_input_inputs, ties=0),
        kind="hard",
        bug_detail={
            "kink": "2x2 max pooling with exact two-way ties in three windows",
            "choice": "the first tied maximum in row-major order",
            "kink_leaves": ("['x']",),
        },
        **_POOL_INPUT,
    ),
    Case(
        "maxpool_input/hard_near_ties",
        grad=_pool_input_grad,
        make_inputs=functools.partial(_pool_input_inputs, ties=1e-10),
        kind="hard",
        bug_detail={
            "kink": "2x2 max pooling with runners-up 1e-10 below the maximum",
            "kink_offset": 1e-10,
            "float32": "the 1e-10 gap rounds away, leaving exact ties",
            "kink_leaves": ("['x']",),
        },
        **_POOL_INPUT,
    ),
    Case(
        "maxpool_input/bug_ties_routed_to_all",
        grad=functools.partial(_pool_input_grad, route="all"),
        make_inputs=functools.partial(_pool_input_inputs, ties=0),
        kind="buggy",
        buggy_leaves=frozenset({"['x']"}),
        bug_class="kink_invalid",
        bug_detail={
            "kink": "2x2 max pooling with exact two-way ties in three windows",
            "choice": "full gradient to every tied maximum",
            "kink_leaves": ("['x']",),
        },
        **_POOL_INPUT,
    ),
    Case(
        "conv1d_maxtime/correct",
        grad=_maxtime_grad,
        make_inputs=_maxtime_inputs,
        kind="correct",
        **_MAXTIME,
    ),
    Case(
        "conv1d_maxtime/hard_exact_ties_first",
        grad=_maxtime_grad,
        make_inputs=functools.partial(_maxtime_inputs, periodic=True),
        kind="hard",
        bug_detail={
            "kink": "max over time ties between identical windows for every filter",
            "choice": "the first maximum; identical windows make this agree with"
            " splitting the gradient",
            "kink_leaves": ("['W']",),
        },
        **_MAXTIME,
    ),
    Case(
        "conv1d_maxtime/bug_ties_routed_to_all",
        grad=functools.partial(_maxtime_grad, route="all"),
        make_inputs=functools.partial(_maxtime_inputs, periodic=True),
        kind="buggy",
        buggy_leaves=frozenset({"['W']"}),
        bug_class="kink_invalid",
        bug_detail={
            "kink": "max over time ties between identical windows for every filter",
            "choice": "full gradient to every tied position (twice the true value)",
            "kink_leaves": ("['W']",),
            # The weights move both tied windows alike, so the tie never breaks:
            # the loss is smooth along every weight and the error a plain factor.
            "factor": 2.0,
        },
        **_MAXTIME,
    ),
)
