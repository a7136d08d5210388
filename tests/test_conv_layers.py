"""Convolutional layers: gradients against finite differences for every conv and pool
configuration, a residual block, layer normalisation, and errors that name the layer."""

import numpy as np
import pytest

import symbp as sb
from symbp.ir import SymbpError
from tests.test_conv import CONV_CONFIGS, POOL_CONFIGS

L = sb.layers


def check(m, batch, tolerance=1e-6):
    r = sb.gradcheck(m, batch, tolerance=tolerance, max_entries=24)
    assert r.ok, str(r)


def scaled_input(m, shape, name="x"):
    """x * p: the input's gradient (through p) is checked too, not only the weights'."""
    return m.input(name, shape) * m.param(f"{name}_scale", shape, init="uniform", limit=1.0)


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=str)
def test_conv2d_layer_gradients(cfg, rng):
    h, w, cin, cout, kernel, strides, padding = cfg
    m = sb.Model("conv")
    x = scaled_input(m, (h, w, cin))
    z = L.Conv2D(cout, kernel, strides, padding, activation="tanh", name="c1")(m, x)
    c = m.input("c", z.shape[1:])
    m.minimize(sb.sum(z * c))
    check(m, {"x": rng.normal(size=(2, h, w, cin)), "c": rng.normal(size=(2, *z.shape[1:]))})


@pytest.mark.parametrize("kind", [L.MaxPool2D, L.AvgPool2D])
@pytest.mark.parametrize("cfg", POOL_CONFIGS, ids=str)
def test_pool_layer_gradients(cfg, kind, rng):
    h, w, window, strides = cfg
    m = sb.Model("pool")
    x = scaled_input(m, (h, w, 2))
    z = kind(window, strides, name="p1")(m, sb.tanh(x))
    c = m.input("c", z.shape[1:])
    m.minimize(sb.sum(z * c))
    check(m, {"x": rng.normal(size=(3, h, w, 2)), "c": rng.normal(size=(3, *z.shape[1:]))})


def test_residual_block_gradient(rng):
    m = sb.Model("res")
    x = m.input("x", (6, 6, 2))
    y = m.input("y", (), dtype="int64")
    net = L.Sequential([
        L.Conv2D(4, 3, padding="same", activation="tanh", name="stem"),
        L.Residual([L.Conv2D(4, 3, padding="same", activation="tanh", name="r1"),
                    L.Conv2D(4, 3, padding="same", name="r2")], name="res"),
        L.MaxPool2D(2, name="pool"), L.Flatten(name="flat"), L.Dense(3, name="out"),
    ])
    m.minimize(sb.softmax_cross_entropy(net(m, x), y))
    check(m, {"x": rng.normal(size=(4, 6, 6, 2)), "y": np.array([0, 1, 2, 1])})


@pytest.mark.parametrize("axes", [-1, (1, 2, 3)])
def test_layer_norm_gradient(axes, rng):
    m = sb.Model("ln")
    x = scaled_input(m, (3, 3, 4))
    z = L.LayerNorm(axes, name="ln")(m, x)
    c = m.input("c", (3, 3, 4))
    m.minimize(sb.sum(sb.tanh(z) * c))
    check(m, {"x": rng.normal(size=(2, 3, 3, 4)), "c": rng.normal(size=(2, 3, 3, 4))})


def test_layer_norm_is_stable_under_a_large_offset_in_float32(rng):
    m = sb.Model("ln32")
    x = m.input("x", (16,))
    z = L.LayerNorm(name="ln")(m, x)
    m.output("z", z)
    m.minimize(sb.sum(z))
    tr = sb.compile(sb.derive(m), dtype="float32")
    data = rng.normal(size=(8, 16))
    ref = (data - data.mean(-1, keepdims=True)) / np.sqrt(data.var(-1, keepdims=True) + 1e-5)
    # E[x^2] - E[x]^2 in float32 would lose the variance entirely at this offset.
    np.testing.assert_allclose(tr.predict(x=data + 3000.0)["z"], ref, atol=5e-3)


def test_pooling_and_flatten_shapes():
    m = sb.Model("shapes")
    x = m.input("x", (8, 6, 3))
    assert L.GlobalAvgPool2D(name="gap")(m, x).shape == (None, 3)
    assert L.Flatten(name="f")(m, x).shape == (None, 144)
    assert L.MaxPool2D((2, 3), name="mp")(m, x).shape == (None, 4, 2, 3)
    assert L.AvgPool2D(3, strides=1, name="ap")(m, x).shape == (None, 6, 4, 3)


def error(build, *fragments):
    with pytest.raises(SymbpError) as e:
        build()
    for f in fragments:
        assert f in str(e.value), str(e.value)


def test_errors_name_the_layer():
    m = sb.Model("bad")
    x = m.input("x", (5, 5, 2))
    error(lambda: L.Conv2D(4, 7, name="big")(m, x), "layer 'big'", "larger than the input height 5")
    error(lambda: L.Conv2D(4, 3, strides=0, name="zero"), "layer 'zero'", "strides")
    error(lambda: L.Conv2D(4, 3, padding="full", name="pad"), "layer 'pad'", "'valid' or 'same'")
    error(lambda: sb.conv2d(x, m.param("w3", (3, 3, 3, 4)), name="mix"), "layer 'mix'", "2 channels", "expects 3")
    error(lambda: L.MaxPool2D(2, name="odd")(m, x), "layer 'odd'", "do not tile the input height 5")
    error(lambda: L.AvgPool2D(6, strides=1, name="huge")(m, x), "layer 'huge'", "larger")
    error(lambda: L.Conv2D(4, 3, name="flat")(m, m.input("v", (5,))), "layer 'flat'", "(batch, height, width")
    error(lambda: L.Residual(L.Conv2D(3, 3, padding="same", name="wide"), name="skip")(m, x),
          "layer 'skip'", "keep the shape", "(batch, 5, 5, 2)", "(batch, 5, 5, 3)")
    # a failed Conv2D leaves no parameter behind
    assert "big_W" not in m.params


def test_global_average_pooling_gradient(rng):
    m = sb.Model("gap")
    x = scaled_input(m, (5, 4, 3))
    z = L.Sequential([L.Conv2D(4, 2, strides=(2, 1), padding="same", activation="tanh", name="c"),
                      L.AvgPool2D(2, strides=1, name="avg"), L.GlobalAvgPool2D(name="gap")])(m, x)
    c = m.input("c", (4,))
    m.minimize(sb.sum(z * c))
    check(m, {"x": rng.normal(size=(3, 5, 4, 3)), "c": rng.normal(size=(3, 4))})
