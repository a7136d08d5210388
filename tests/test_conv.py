"""Convolution and pooling ops: forward values against naive loops, gradients against finite
differences for every configuration, and the documented tie rule of max pooling."""

import numpy as np
import pytest

import symbp as sb
from symbp.ops.structural import node

# -- naive references: loops over output positions and kernel offsets, straight from the
# -- formulas in symbp/ops/conv.py ---------------------------------------------------------------


def pad(x, pads):
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def naive_conv(x, w, strides, pads):
    xp, (sh, sw), (kh, kw) = pad(x, pads), strides, w.shape[:2]
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(ho):
        for j in range(wo):
            for p in range(kh):
                for q in range(kw):
                    y[:, i, j] += xp[:, i * sh + p, j * sw + q] @ w[p, q]
    return y


def naive_conv_input_grad(g, w, in_hw, strides, pads):
    (sh, sw), (kh, kw) = strides, w.shape[:2]
    dxp = np.zeros((g.shape[0], in_hw[0] + sum(pads[0]), in_hw[1] + sum(pads[1]), w.shape[2]))
    for i in range(g.shape[1]):
        for j in range(g.shape[2]):
            for p in range(kh):
                for q in range(kw):
                    dxp[:, i * sh + p, j * sw + q] += g[:, i, j] @ w[p, q].T
    return dxp[:, pads[0][0]:pads[0][0] + in_hw[0], pads[1][0]:pads[1][0] + in_hw[1]]


def naive_conv_weight_grad(x, g, kernel, strides, pads):
    xp, (sh, sw) = pad(x, pads), strides
    dw = np.zeros((*kernel, x.shape[3], g.shape[3]))
    for i in range(g.shape[1]):
        for j in range(g.shape[2]):
            for p in range(kernel[0]):
                for q in range(kernel[1]):
                    dw[p, q] += xp[:, i * sh + p, j * sw + q].T @ g[:, i, j]
    return dw


def naive_pool(x, window, strides, kind):
    (ph, pw), (sh, sw) = window, strides
    ho, wo = (x.shape[1] - ph) // sh + 1, (x.shape[2] - pw) // sw + 1
    y = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for i in range(ho):
        for j in range(wo):
            win = x[:, i * sh:i * sh + ph, j * sw:j * sw + pw]
            y[:, i, j] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
    return y


def first_argmax(x, window, strides):
    """(b, i, j, c) -> (row, col) in x of the first maximum of each window, scalar loops."""
    (ph, pw), (sh, sw) = window, strides
    ho, wo = (x.shape[1] - ph) // sh + 1, (x.shape[2] - pw) // sw + 1
    out = {}
    for b, i, j, c in np.ndindex(x.shape[0], ho, wo, x.shape[3]):
        best = None
        for p in range(ph):
            for q in range(pw):
                v = x[b, i * sh + p, j * sw + q, c]
                if best is None or v > best[0]:
                    best = (v, i * sh + p, j * sw + q)
        out[b, i, j, c] = best[1:]
    return out


def naive_max_grad(x, g, window, strides):
    dx = np.zeros_like(x)
    for (b, i, j, c), (r, s) in first_argmax(x, window, strides).items():
        dx[b, r, s, c] += g[b, i, j, c]
    return dx


def naive_max_select(x, h, window, strides):
    y = np.zeros_like(naive_pool(x, window, strides, "max"))
    for (b, i, j, c), (r, s) in first_argmax(x, window, strides).items():
        y[b, i, j, c] = h[b, r, s, c]
    return y


def naive_avg_grad(g, in_hw, window, strides):
    (ph, pw), (sh, sw) = window, strides
    dx = np.zeros((g.shape[0], *in_hw, g.shape[3]))
    for i in range(g.shape[1]):
        for j in range(g.shape[2]):
            dx[:, i * sh:i * sh + ph, j * sw:j * sw + pw] += g[:, i:i + 1, j:j + 1] / (ph * pw)
    return dx


def run_op(op, arrays, **attrs):
    """The op's forward value computed by the emitted NumPy code (float64)."""
    m = sb.Model("fwd")
    args, batch, params = [], {}, {}
    for k, a in enumerate(arrays):
        if k == 0 or op in ("conv2d_weight_grad", "max_pool2d_grad", "max_pool2d_select"):
            args.append(m.input(f"a{k}", a.shape[1:]))
            batch[f"a{k}"] = a
        else:
            args.append(m.param(f"a{k}", a.shape))
            params[f"a{k}"] = a
    out = node(op, args, **attrs)
    m.output("out", out)
    # a model needs a parameter: when every argument is data, scale the loss by one
    m.minimize(sb.sum(out) if params else sb.sum(out) * m.param("unit", (), init="ones"))
    tr = sb.compile(sb.derive(m), dtype="float64", params=params)
    return tr.predict(**batch)["out"]


CONV_CONFIGS = [  # (H, W, C_in, C_out, kernel, strides, padding)
    (6, 6, 1, 1, (3, 3), (1, 1), "valid"),
    (6, 5, 2, 3, (3, 3), (1, 1), "same"),
    (7, 6, 3, 2, (3, 3), (2, 2), "valid"),
    (7, 6, 2, 4, (3, 2), (2, 1), "same"),
    (5, 5, 3, 3, (1, 1), (2, 2), "same"),
    (8, 8, 2, 2, (4, 4), (2, 3), "same"),
]


def conv_case(cfg, rng):
    h, w, cin, cout, kernel, strides, padding = cfg
    pads = sb.ops.conv.same_pads((h, w), kernel, strides) if padding == "same" else ((0, 0), (0, 0))
    x = rng.normal(size=(2, h, w, cin))
    k = rng.normal(size=(*kernel, cin, cout))
    return x, k, strides, pads


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=str)
def test_conv_ops_match_naive_loops(cfg, rng):
    x, w, strides, pads = conv_case(cfg, rng)
    y = naive_conv(x, w, strides, pads)
    np.testing.assert_allclose(run_op("conv2d", [x, w], strides=strides, pads=pads), y, rtol=1e-12, atol=1e-12)
    g = rng.normal(size=y.shape)
    np.testing.assert_allclose(run_op("conv2d_input_grad", [g, w], in_hw=x.shape[1:3], strides=strides, pads=pads),
                               naive_conv_input_grad(g, w, x.shape[1:3], strides, pads), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run_op("conv2d_weight_grad", [x, g], kernel=w.shape[:2], strides=strides, pads=pads),
                               naive_conv_weight_grad(x, g, w.shape[:2], strides, pads), rtol=1e-12, atol=1e-12)


def test_same_padding_keeps_the_size_at_stride_one_and_divides_it_at_stride_two():
    m = sb.Model("same")
    x = m.input("x", (7, 6, 2))
    assert sb.conv2d(x, m.param("w", (3, 3, 2, 4)), padding="same").shape == (None, 7, 6, 4)
    assert sb.conv2d(x, m.param("v", (4, 2, 2, 4)), strides=2, padding="same").shape == (None, 4, 3, 4)


POOL_CONFIGS = [  # (H, W, window, strides)
    (4, 4, (2, 2), (2, 2)),
    (6, 5, (3, 3), (1, 1)),
    (7, 5, (3, 2), (2, 1)),
    (5, 5, (1, 1), (2, 2)),
]


@pytest.mark.parametrize("cfg", POOL_CONFIGS, ids=str)
def test_pool_ops_match_naive_loops(cfg, rng):
    h, w, window, strides = cfg
    x = rng.normal(size=(2, h, w, 3))
    x[0, :2, :2, 0] = 1.5  # a tie: the first maximum takes the gradient
    a = {"window": window, "strides": strides}
    for kind in ("max", "avg"):
        np.testing.assert_allclose(run_op(f"{kind}_pool2d", [x], **a), naive_pool(x, window, strides, kind),
                                   rtol=1e-12, atol=1e-12)
    g = rng.normal(size=naive_pool(x, window, strides, "max").shape)
    np.testing.assert_allclose(run_op("max_pool2d_grad", [x, g], **a), naive_max_grad(x, g, window, strides),
                               rtol=1e-12, atol=1e-12)
    hh = rng.normal(size=x.shape)
    np.testing.assert_allclose(run_op("max_pool2d_select", [x, hh], **a), naive_max_select(x, hh, window, strides),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run_op("avg_pool2d_grad", [g], in_hw=(h, w), **a),
                               naive_avg_grad(g, (h, w), window, strides), rtol=1e-12, atol=1e-12)


def test_max_pool_tie_sends_the_whole_gradient_to_the_first_maximum():
    m = sb.Model("ties")
    x = m.input("x", (2, 2, 1))
    m.minimize(sb.sum(sb.max_pool2d(x * m.param("p", (2, 2, 1), init="ones"), 2)))
    tr = sb.compile(sb.derive(m), dtype="float64")
    g = tr.gradients(x=np.ones((1, 2, 2, 1)))["p"]
    np.testing.assert_array_equal(g[..., 0], [[1.0, 0.0], [0.0, 0.0]])
